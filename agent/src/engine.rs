//! Observe, diff, apply: the one engine behind `apply`, `delete`, `plan` and `show`.
//!
//! ```text
//! observe()  links, addresses, mirrornet's routes and rules (protocol 77), every table in use,
//!            the `inet mirrornet` table, sysctls                              -> KernelView
//! changes()  KernelView + NetworkPlans (+ networks to remove)                  -> Changes
//! execute()  netlink adds, sysctls, ONE nft transaction, netlink deletes, sysctl restores;
//!            on the first failure every executed step is undone in reverse   -> writes made
//! ```
//!
//! The order is what keeps packets off half-built paths: NAT and marks go in after the routing
//! domains exist and come out before they go; the nft part is atomic. Ownership is what keeps
//! other software safe: an object is ours only by the marks we put on it (address and route
//! protocol 77, rule protocol 77 with one of the network's tables, chains of our own table).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use mirrornet_api::allocation::{Allocator, IdRanges};
use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, BackendKind, SideAllocation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, info_span, warn};

use crate::netlink::{DefaultRoute, L3mdevRules, Link, Netlink, NetlinkError, ObservedAddress};
use crate::nfnetlink::Nfnetlink;
use crate::nft::{self, ObservedNft};
use crate::plan::{
    self, Address, NetworkPlan, NodeFacts, PlanError, Route, Rule, RuleSelector,
    SysctlPlan, VrfPlan,
};
use crate::memory::{MemoryError, Memory};
use crate::sysctl;

/// Why the engine could not do what was asked. Every variant names the network, field or kernel
/// object concerned.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("nft: {what}: {detail}")]
    Nft { what: String, detail: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("network {network}: allocating kernel ids: {reason}")]
    Allocation { network: String, reason: String },
    #[error("network {network}: {field}: interface {interface:?} does not exist on this node")]
    InterfaceMissing {
        network: String,
        field: String,
        interface: String,
    },
    #[error(
        "network {network}: interface {interface} already holds {address}, added by someone else; \
         mirrornet will not take over an address it did not create"
    )]
    AddressTaken {
        network: String,
        interface: String,
        address: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} is down; mirrornet does not change \
         link state, bring it up and the network is programmed"
    )]
    InterfaceDown {
        network: String,
        field: String,
        interface: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} is enslaved to {controller:?}, \
         which mirrornet did not create; it will not take the interface from it"
    )]
    InterfaceEnslaved {
        network: String,
        field: String,
        interface: String,
        controller: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} {why}; the node itself uses it, and \
         taking it over could cut the node off. Set takeOverNodeInterface: true on the side to \
         allow it"
    )]
    NodeInterface {
        network: String,
        field: String,
        interface: String,
        why: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} carries the node's default route; \
         enslaving it to a VRF device would take that route out of the main table and cut the \
         node off, and releasing it does not bring the route back. takeOverNodeInterface cannot \
         allow this: use backend PolicyRouting for this network, or move the node's default \
         route to another interface"
    )]
    VrfTakesNodeRoute {
        network: String,
        field: String,
        interface: String,
    },
    #[error("network {network}: interface {interface} is already used by network {other}")]
    InterfaceShared {
        network: String,
        interface: String,
        other: String,
    },
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    State(#[from] MemoryError),
    #[error("{failed}; rolled back the {undone} change(s) made before it")]
    RolledBack {
        failed: Box<AgentError>,
        undone: usize,
    },
    #[error("{failed}; rolling back also failed: {rollback}")]
    RollbackFailed {
        failed: Box<AgentError>,
        rollback: Box<AgentError>,
    },
    #[error("verification failed: {failed}; {outcome}")]
    VerificationFailed {
        /// The failing check and why.
        failed: String,
        /// What happened to the change: rolled back, or why it could not be.
        outcome: String,
        rolled_back: bool,
        /// The networks whose change was rejected (rolled back, or not, per `rolled_back`).
        networks: Vec<String>,
    },
    #[error("arming the rollback: {0}; nothing was changed")]
    Arming(String),
    #[error("injected fault at step {step} (MIRRORNET_FAULT_AT_STEP)")]
    InjectedFault { step: usize },
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Which backend the user asked for on the command line or in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// VRF where the kernel can make VRF devices, policy routing otherwise.
    #[default]
    Auto,
    Vrf,
    PolicyRouting,
}

/// What the kernel holds that concerns mirrornet.
#[derive(Debug, Clone)]
pub struct KernelView {
    pub links: BTreeMap<String, Link>,
    pub addresses: Vec<ObservedAddress>,
    /// mirrornet's routes (protocol 77).
    pub routes: Vec<Route>,
    /// mirrornet's rules (protocol 77).
    pub rules: Vec<Rule>,
    /// Every routing table some route or foreign rule uses.
    pub tables_in_use: BTreeSet<u32>,
    pub nft: ObservedNft,
    /// The table exactly as `nft -j` lists it (`None` inside: no table), to restore it if a
    /// later step fails. Taken only when a change is about to write the table
    /// ([`Engine::execute`]): only a rollback needs it, and listing costs tens of ms. Kept as
    /// text: the parsed form of a few hundred networks' table weighs megabytes.
    pub nft_listing: std::sync::OnceLock<Option<std::sync::Arc<[u8]>>>,
    pub facts: NodeFacts,
    pub l3mdev: L3mdevRules,
    /// Links the node's own default routes leave by.
    /// The main table's default routes.
    pub default_routes: BTreeSet<DefaultRoute>,
}

impl KernelView {
    /// A sysctl's current value: per-interface settings from the link dump taken with this
    /// state, anything else (`all`, `default`, links that appeared since) from /proc/sys.
    pub fn sysctl(&self, path: &str) -> Option<String> {
        path.strip_prefix("net/")
            .and_then(|rest| {
                let (family, rest) = rest.split_once("/conf/")?;
                let (link, key) = rest.split_once('/')?;
                self.links.get(link)?.conf.sysctl(family, key)
            })
            .map(|value| value.to_string())
            .or_else(|| sysctl::read(path))
    }

    /// Whether one of the node's default routes leaves by `interface`.
    pub fn carries_default_route(&self, interface: &str) -> bool {
        self.default_routes.iter().any(|r| r.interface == interface)
    }

    /// The ids recorded in the kernel for `network`, if its table holds them.
    pub fn recorded_allocation(&self, network: &str) -> Option<Allocation> {
        let recorded = self.nft.recorded_ids(network);
        let mask = recorded.first()?.mask;
        Some(Allocation {
            mark_mask: mask,
            sides: recorded
                .into_iter()
                .map(|r| SideAllocation {
                    side: r.side,
                    table: r.table,
                    mark: r.mark,
                    zone: r.zone,
                    rule_priority: r.rule_priority,
                })
                .collect(),
        })
    }

    /// Side interfaces the kernel state attributes to `network` (from its ingress map keys).
    fn interfaces_of(&self, network: &str) -> BTreeSet<String> {
        self.nft.interfaces_of(network)
    }
}

/// One step of a change to the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    AddAddress {
        network: String,
        address: Address,
    },
    DeleteAddress {
        network: String,
        address: Address,
    },
    AddRoute {
        network: String,
        route: Route,
    },
    DeleteRoute {
        network: String,
        route: Route,
    },
    AddRule {
        network: String,
        rule: Rule,
    },
    DeleteRule {
        network: String,
        rule: Rule,
    },
    /// Sets a sysctl; `previous` is what it held, for rollback and for the state file.
    SetSysctl {
        network: String,
        path: String,
        value: String,
        previous: String,
    },
    /// Puts back the value a sysctl had before mirrornet changed it.
    RestoreSysctl {
        network: String,
        path: String,
        value: String,
        previous: String,
    },
    /// A side's VRF device, created up.
    AddVrf {
        network: String,
        vrf: VrfPlan,
    },
    DeleteVrf {
        network: String,
        vrf: VrfPlan,
    },
    /// Puts a side interface into its VRF.
    Enslave {
        network: String,
        interface: String,
        vrf: String,
    },
    /// Takes an interface out of a VRF (`vrf`, to put it back on rollback).
    Release {
        network: String,
        interface: String,
        vrf: String,
    },
    /// Puts back the kernel's l3mdev rule where VRF devices need it and it is missing. The
    /// kernel adds it only with the first VRF device a namespace ever has: once it is gone
    /// (mirrornet removed it with its last VRF, or someone deleted it), a new VRF device comes
    /// without it, and no packet received on a VRF's interface finds the VRF's table.
    EnsureL3mdevRule {
        /// The families whose rule was missing when the change was planned: what undoing
        /// this step removes again.
        ipv4: bool,
        ipv6: bool,
    },
    /// Removes the kernel's l3mdev rule that came with mirrornet's first VRF device.
    DeleteL3mdevRule {
        ipv6: bool,
        priority: u32,
    },
    /// One atomic nft transaction.
    Nft {
        summary: Vec<String>,
        commands: Vec<Value>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddAddress { address: a, .. } => {
                write!(
                    f,
                    "+ address {}/{} dev {}",
                    a.address, a.prefix_len, a.interface
                )
            }
            Step::DeleteAddress { address: a, .. } => {
                write!(
                    f,
                    "- address {}/{} dev {}",
                    a.address, a.prefix_len, a.interface
                )
            }
            Step::AddRoute { route: r, .. } => write!(f, "+ route {r}"),
            Step::DeleteRoute { route: r, .. } => write!(f, "- route {r}"),
            Step::AddRule { rule: r, .. } => write!(f, "+ rule {r}"),
            Step::DeleteRule { rule: r, .. } => write!(f, "- rule {r}"),
            Step::SetSysctl {
                path,
                value,
                previous,
                ..
            } => write!(f, "~ sysctl {} = {value} (was {previous})", dotted(path)),
            Step::RestoreSysctl {
                path,
                value,
                previous,
                ..
            } => write!(
                f,
                "~ sysctl {} = {value} (restored; was {previous})",
                dotted(path)
            ),
            Step::Nft { summary, .. } => {
                write!(f, "~ nft table inet {}: {}", nft::TABLE, summary.join(", "))
            }
            Step::AddVrf { vrf, .. } => {
                write!(f, "+ vrf {} table {} ({})", vrf.name, vrf.table, vrf.alias)
            }
            Step::DeleteVrf { vrf, .. } => write!(f, "- vrf {} table {}", vrf.name, vrf.table),
            Step::Enslave { interface, vrf, .. } => write!(f, "~ link {interface} master {vrf}"),
            Step::Release { interface, vrf, .. } => {
                write!(f, "~ link {interface} nomaster (was {vrf})")
            }
            Step::EnsureL3mdevRule { ipv4, ipv6 } => write!(
                f,
                "+ rule {L3MDEV_PRIORITY} l3mdev ({}; the kernel adds it only with a namespace's first VRF)",
                match (ipv4, ipv6) {
                    (true, true) => "IPv4 and IPv6",
                    (true, false) => "IPv4",
                    _ => "IPv6",
                }
            ),
            Step::DeleteL3mdevRule { ipv6, priority } => write!(
                f,
                "- rule {}{priority} l3mdev (the kernel's, added with the first VRF)",
                if *ipv6 { "-6 " } else { "" }
            ),
        }
    }
}

fn dotted(path: &str) -> String {
    path.replace('/', ".")
}

/// The ordered steps that take the node from what it holds to what the plans need.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changes {
    pub steps: Vec<Step>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Reads the node facts that change plans; the links' own settings come from their dump.
pub fn node_facts(links: &BTreeMap<String, Link>) -> NodeFacts {
    let mut ipv4_rp_filter: BTreeMap<String, u8> = ["all", "default"]
        .into_iter()
        .filter_map(|name| {
            let value = sysctl::read(&format!("net/ipv4/conf/{name}/rp_filter"))?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    for (name, link) in links {
        let value = link
            .conf
            .sysctl("ipv4", "rp_filter")
            .and_then(|v| u8::try_from(v).ok())
            .or_else(|| {
                sysctl::read(&format!("net/ipv4/conf/{name}/rp_filter"))?
                    .parse()
                    .ok()
            });
        if let Some(value) = value {
            ipv4_rp_filter.insert(name.clone(), value);
        }
    }
    NodeFacts {
        ipv4_rp_filter,
        ipv6_force_forwarding: sysctl::read("net/ipv6/conf/all/force_forwarding").is_some(),
        vrf_available: vrf_available(),
        ipv6: has_ipv6(),
    }
}

/// Whether this namespace has IPv6.
fn has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Whether the kernel can make VRF devices: the module is loaded (or built in with an entry
/// under /sys/module), or the running kernel's module tree has it for autoloading.
fn vrf_available() -> bool {
    if std::path::Path::new("/sys/module/vrf").exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = std::path::Path::new("/lib/modules").join(release.trim());
    ["modules.dep", "modules.builtin"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f))
            .map(|t| t.lines().any(|l| l.contains("/vrf.ko")))
            .unwrap_or(false)
    })
}

/// The engine: a netlink connection plus the id ranges file mode allocates from.
#[derive(Debug)]
pub struct Engine {
    netlink: Netlink,
    ranges: IdRanges,
    failpoints: Failpoints,
    /// Settings of VRF devices deleted during the current apply, by device name, for undoing
    /// the deletion.
    deleted_vrf_settings: std::sync::Mutex<BTreeMap<String, Vec<(String, String)>>>,
    /// The last listing of our nft table with the ruleset generation it was taken at, when
    /// the engine lives long enough (`run`) for a cache to pay.
    nft_cache: Option<std::sync::Mutex<Option<NftSnapshot>>>,
}

/// Our nft table as read at one ruleset generation.
#[derive(Debug, Clone)]
struct NftSnapshot {
    generation: u32,
    observed: nft::ObservedNft,
}

/// The per-device settings mirrornet changes on its VRF devices (forwarding).
fn vrf_device_settings(device: &str) -> Vec<String> {
    vec![
        format!("net/ipv4/conf/{device}/forwarding"),
        format!("net/ipv6/conf/{device}/forwarding"),
    ]
}

/// Test-only failure injection, compiled in with the `failpoints` feature only (the test
/// suites build the agent with it; release builds ignore the variables entirely):
/// `MIRRORNET_FAULT_AT_STEP=N` fails step N (the rollback path), `MIRRORNET_CRASH_AT_STEP=N`
/// aborts the process before step N (no rollback: what a kill or power loss leaves).
#[derive(Debug, Default, Clone, Copy)]
struct Failpoints {
    fail_at: Option<usize>,
    crash_at: Option<usize>,
}

impl Failpoints {
    #[cfg(feature = "failpoints")]
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Self {
            fail_at: var("MIRRORNET_FAULT_AT_STEP"),
            crash_at: var("MIRRORNET_CRASH_AT_STEP"),
        }
    }

    #[cfg(not(feature = "failpoints"))]
    fn from_env() -> Self {
        Self::default()
    }
}

/// Priority of the kernel's l3mdev rule (`FIB_RULE_PREF`), where it puts it itself.
pub const L3MDEV_PRIORITY: u32 = 1000;

/// The result of an apply or delete.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Kernel writes made (netlink requests, sysctl writes, nft transactions).
    pub writes: usize,
    pub steps: Vec<String>,
    pub networks: Vec<NetworkSummary>,
}

/// What a network got on this node.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSummary {
    pub name: String,
    pub backend: BackendKind,
    pub allocation: Allocation,
}

impl Engine {
    pub fn new(netlink: Netlink, ranges: IdRanges) -> Self {
        Self {
            netlink,
            ranges,
            failpoints: Failpoints::from_env(),
            deleted_vrf_settings: Default::default(),
            nft_cache: None,
        }
    }

    /// The same engine, re-reading our nft table only when the ruleset has changed since the
    /// last listing. Listing it is most of a pass's cost on a busy node (tens of ms for a few
    /// hundred networks), and the kernel counts every committed transaction in the ruleset's
    /// generation. Only for one long-lived process in one namespace: counters in a cached
    /// listing are stale, so `show` never uses it.
    pub fn with_nft_cache(mut self) -> Self {
        self.nft_cache = Some(Default::default());
        self
    }

    /// Our table as the engine compares it, from the cache while the generation holds.
    fn nft_observed(&self) -> Result<nft::ObservedNft> {
        let read_error = |e: std::io::Error| AgentError::Nft {
            what: format!("reading table inet {} over nfnetlink", nft::TABLE),
            detail: e.to_string(),
        };
        let mut reader = Nfnetlink::open().map_err(read_error)?;
        if let Some(cache) = &self.nft_cache {
            let generation = reader.generation().map_err(read_error)?;
            if let Ok(cached) = cache.lock()
                && let Some(snapshot) = cached.as_ref().filter(|s| s.generation == generation)
            {
                return Ok(snapshot.observed.clone());
            }
        }
        let (generation, observed) = reader.observe().map_err(read_error)?;
        if let Some(cache) = &self.nft_cache
            && let Ok(mut cached) = cache.lock()
        {
            *cached = Some(NftSnapshot {
                generation,
                observed: observed.clone(),
            });
        }
        Ok(observed)
    }

    /// The engine's netlink connection, for the checks made after a change.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// Reads everything mirrornet cares about from the kernel.
    pub async fn observe(&self) -> Result<KernelView> {
        let links = self.netlink.links().await?;
        let addresses = self.netlink.addresses(&links).await?;
        let (routes, route_tables, default_routes) = self.netlink.routes(&links).await?;
        let (rules, rule_tables, l3mdev) = self.netlink.rules().await?;
        let nft = self.nft_observed()?;
        let facts = node_facts(&links);
        let mut tables_in_use: BTreeSet<u32> = route_tables.into_iter().collect();
        tables_in_use.extend(rule_tables);
        Ok(KernelView {
            links,
            addresses,
            routes,
            rules,
            tables_in_use,
            nft,
            nft_listing: Default::default(),
            facts,
            l3mdev,
            default_routes,
        })
    }

    /// The allocations for `networks`: recovered from the kernel where recorded (ids are stable
    /// across runs), otherwise fresh from the default ranges, avoiding every id in use.
    pub fn allocate(
        &self,
        state: &KernelView,
        networks: &[LoadedNetwork],
    ) -> Result<Vec<Allocation>> {
        let mut allocator = self.allocator(state, &Memory::load(state)?);
        networks
            .iter()
            .map(|n| {
                allocator
                    .allocate(n.name(), &n.valid)
                    .map_err(|e| AgentError::Allocation {
                        network: n.name().into(),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// An allocator holding every id recorded (kernel first, then `memory`) and every foreign
    /// table; what [`Engine::allocate`] starts from.
    pub fn allocator(&self, state: &KernelView, memory: &Memory) -> Allocator {
        let mut recorded: BTreeMap<String, Allocation> = memory
            .networks
            .iter()
            .filter_map(|(n, r)| r.allocation.clone().map(|a| (n.clone(), a)))
            .collect();
        // The kernel's record wins over the file's.
        recorded.extend(
            state
                .nft
                .networks()
                .into_iter()
                .filter_map(|n| state.recorded_allocation(&n).map(|a| (n, a))),
        );
        let mut allocator = Allocator::from_existing(
            self.ranges.clone(),
            recorded.iter().map(|(n, a)| (n.as_str(), a)),
        );
        // Tables used by anyone except the networks we know are foreign.
        let ours: BTreeSet<u32> = recorded
            .values()
            .flat_map(|a| a.sides.iter().map(|s| s.table))
            .collect();
        allocator.reserve_foreign(state.tables_in_use.difference(&ours).copied());
        allocator
    }

    /// Plans every network in `networks` for this node.
    pub fn plans(
        &self,
        state: &KernelView,
        networks: &[LoadedNetwork],
        choice: BackendChoice,
    ) -> Result<Vec<NetworkPlan>> {
        let allocations = self.allocate(state, networks)?;
        let mut plans = Vec::new();
        for (network, allocation) in networks.iter().zip(allocations) {
            let backend = resolve_backend(choice, network.valid.backend, &state.facts);
            plans.push(plan::plan(
                network.name(),
                &network.valid,
                &allocation,
                backend,
                &state.facts,
            )?);
        }
        Ok(plans)
    }

    /// Plans one network with ids allocated elsewhere (by the operator).
    pub fn plan_with(
        &self,
        state: &KernelView,
        network: &LoadedNetwork,
        allocation: &Allocation,
        choice: BackendChoice,
    ) -> Result<NetworkPlan> {
        let backend = resolve_backend(choice, network.valid.backend, &state.facts);
        Ok(plan::plan(
            network.name(),
            &network.valid,
            allocation,
            backend,
            &state.facts,
        )?)
    }

    /// Networks mirrornet holds on this node: in the kernel, or remembered in the state file
    /// with traces left in the kernel.
    pub fn owned_networks(&self, state: &KernelView) -> BTreeSet<String> {
        let memory = Memory::load(state).ok();
        owned_networks(state, memory.as_ref())
    }

    /// Makes the node hold exactly `plans` (and nothing of `remove`), rolling back on failure.
    /// `specs` are the specs of `plans`, in the same order, remembered for `show`.
    pub async fn converge(
        &self,
        state: &KernelView,
        plans: &[NetworkPlan],
        specs: &[&mirrornet_api::MirrorNetworkSpec],
        remove: &[String],
    ) -> Result<Outcome> {
        let memory = Memory::load(state)?;
        self.converge_with(state, memory, plans, specs, remove)
            .await
    }

    /// [`Engine::converge`] with the state file already loaded (for `state`, and unchanged
    /// since).
    pub async fn converge_with(
        &self,
        state: &KernelView,
        memory: Memory,
        plans: &[NetworkPlan],
        specs: &[&mirrornet_api::MirrorNetworkSpec],
        remove: &[String],
    ) -> Result<Outcome> {
        check_preconditions(state, plans, remove)?;
        let changes = changes(state, plans, remove, &memory)?;
        if changes.is_empty() {
            // The kernel already matches; the memory must too (a rollback to the state the
            // kernel still holds changes only what the networks are recorded as).
            let mut current = memory.clone();
            for (plan, spec) in plans.iter().zip(specs) {
                current.record_network(plan, spec);
            }
            for name in remove {
                current.forget_network(name);
            }
            if current != memory {
                current.save()?;
            }
            return Ok(self.outcome(0, &changes, plans));
        }
        // Intent first: what the change is about to create (ids, original sysctl values) is
        // on disk before the first write, so a crash part-way leaves a state the next run can
        // both finish and undo completely.
        let mut intent = memory.clone();
        for step in &changes.steps {
            if let Step::SetSysctl {
                network,
                path,
                previous,
                ..
            } = step
            {
                intent.remember_sysctl(network, path, previous);
            }
        }
        // Rules that were missing and that this change brings (itself, or the kernel with a
        // first VRF device) are ours to remove with our last VRF.
        if changes
            .steps
            .iter()
            .any(|s| matches!(s, Step::EnsureL3mdevRule { ipv4: true, .. }))
        {
            intent.l3mdev_rule_ours = true;
        }
        for (plan, spec) in plans.iter().zip(specs) {
            intent.record_network(plan, spec);
        }
        // A sysctl the plan no longer needs (a suspended network needs none) keeps its
        // original on disk until it is put back: a crash before the restore must not lose it.
        for step in &changes.steps {
            if let Step::RestoreSysctl {
                network,
                path,
                value,
                ..
            } = step
            {
                intent.remember_sysctl(network, path, value);
            }
        }
        intent.save()?;
        let writes = match self.execute(state, &changes).await {
            Ok(writes) => writes,
            Err(e) => {
                // Rolled back (or not): the memory of before is the truth again.
                memory.save()?;
                return Err(e);
            }
        };
        let mut done = intent;
        for step in &changes.steps {
            match step {
                Step::RestoreSysctl { network, path, .. } => done.forget_sysctl(network, path),
                Step::DeleteL3mdevRule { .. } => done.l3mdev_rule_ours = false,
                _ => {}
            }
        }
        for name in remove {
            done.forget_network(name);
        }
        for plan in plans.iter().filter(|p| p.suspended) {
            done.release_interfaces(&plan.name);
        }
        done.save()?;
        Ok(self.outcome(writes, &changes, plans))
    }

    fn outcome(&self, writes: usize, changes: &Changes, plans: &[NetworkPlan]) -> Outcome {
        Outcome {
            writes,
            steps: changes.steps.iter().map(ToString::to_string).collect(),
            networks: plans
                .iter()
                .map(|p| NetworkSummary {
                    name: p.name.clone(),
                    backend: p.backend,
                    allocation: Allocation {
                        mark_mask: p.mark_mask,
                        sides: p.sides.iter().map(|s| s.ids.clone()).collect(),
                    },
                })
                .collect(),
        }
    }

    /// Runs the steps in order; on the first failure undoes the executed ones in reverse.
    async fn execute(&self, state: &KernelView, changes: &Changes) -> Result<usize> {
        if let Ok(mut lost) = self.deleted_vrf_settings.lock() {
            lost.clear();
        }
        // The table's listing is needed only to undo an nft transaction that succeeded before a
        // later step failed; the transaction itself is atomic, so when it is the last step
        // (a network added, nothing to remove) no listing is taken.
        let nft_then_more = changes
            .steps
            .iter()
            .position(|s| matches!(s, Step::Nft { .. }))
            .is_some_and(|at| at + 1 < changes.steps.len());
        if state.nft_listing.get().is_none() && nft_then_more {
            let listing = nft_list_text()?.map(std::sync::Arc::from);
            let _ = state.nft_listing.set(listing);
        }
        let mut done: Vec<&Step> = Vec::new();
        for (index, step) in changes.steps.iter().enumerate() {
            let _span = info_span!("step", %step).entered();
            if self.failpoints.crash_at == Some(index) {
                eprintln!("failpoint: crashing before step {index}: {step}");
                std::process::abort();
            }
            let result = if self.failpoints.fail_at == Some(index) {
                Err(AgentError::InjectedFault { step: index })
            } else {
                self.run(step).await
            };
            match result {
                Ok(()) => {
                    debug!("done");
                    done.push(step);
                }
                Err(failed) => {
                    warn!(error = %failed, "step failed, rolling back");
                    let undone = done.len();
                    for step in done.into_iter().rev() {
                        if let Err(rollback) = self.undo(state, step).await {
                            return Err(AgentError::RollbackFailed {
                                failed: Box::new(failed),
                                rollback: Box::new(rollback),
                            });
                        }
                    }
                    return Err(AgentError::RolledBack {
                        failed: Box::new(failed),
                        undone,
                    });
                }
            }
        }
        if !changes.steps.is_empty() {
            info!(writes = changes.steps.len(), "converged");
        }
        Ok(changes.steps.len())
    }

    async fn index(&self, interface: &str) -> Result<u32> {
        self.netlink
            .link_index(interface)
            .await?
            .ok_or_else(|| AgentError::InterfaceMissing {
                network: "?".into(),
                field: "interface".into(),
                interface: interface.into(),
            })
    }

    async fn run(&self, step: &Step) -> Result<()> {
        match step {
            Step::AddAddress { address, .. } => {
                let index = self.index(&address.interface).await?;
                self.netlink.add_address(index, address).await?;
            }
            Step::DeleteAddress { address, .. } => {
                let index = self.index(&address.interface).await?;
                self.netlink.del_address(index, address).await?;
            }
            Step::AddRoute { route, .. } => {
                let index = self.index(&route.interface).await?;
                self.netlink.add_route(index, route).await?;
            }
            Step::DeleteRoute { route, .. } => {
                let index = self.index(&route.interface).await?;
                self.netlink.del_route(index, route).await?;
            }
            Step::AddRule { rule, .. } => self.netlink.add_rule(rule).await?,
            Step::DeleteRule { rule, .. } => self.netlink.del_rule(rule).await?,
            Step::SetSysctl { path, value, .. } => self.write_sysctl(path, value).await?,
            // A device deleted earlier in the same change (a VRF) took its sysctls with it.
            Step::RestoreSysctl { path, value, .. } => {
                if sysctl::read(path).is_some() {
                    self.write_sysctl(path, value).await?
                }
            }
            Step::Nft { commands, .. } => nft_apply(&nft::batch(commands))?,
            Step::AddVrf { vrf, .. } => self.netlink.add_vrf(vrf).await?,
            Step::DeleteVrf { vrf, .. } => {
                let index = self.index(&vrf.name).await?;
                // The device's own settings go with it; a rollback that makes it again must
                // put them back.
                let settings: Vec<(String, String)> = vrf_device_settings(&vrf.name)
                    .into_iter()
                    .filter_map(|path| sysctl::read(&path).map(|value| (path, value)))
                    .collect();
                self.netlink.del_link(index, &vrf.name).await?;
                if let Ok(mut lost) = self.deleted_vrf_settings.lock() {
                    lost.insert(vrf.name.clone(), settings);
                }
            }
            Step::Enslave { interface, vrf, .. } => {
                let (index, controller) = (self.index(interface).await?, self.index(vrf).await?);
                self.netlink
                    .set_controller(index, interface, Some(controller))
                    .await?;
            }
            Step::Release { interface, .. } => {
                let index = self.index(interface).await?;
                self.netlink.set_controller(index, interface, None).await?;
            }
            Step::DeleteL3mdevRule { ipv6, priority } => {
                self.netlink.del_l3mdev_rule(*ipv6, *priority).await?
            }
            Step::EnsureL3mdevRule { .. } => {
                let (_, _, present) = self.netlink.rules().await?;
                if present.ipv4.is_none() {
                    self.netlink.add_l3mdev_rule(false, L3MDEV_PRIORITY).await?;
                }
                if present.ipv6.is_none() && has_ipv6() {
                    self.netlink.add_l3mdev_rule(true, L3MDEV_PRIORITY).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes a sysctl through /proc/sys, or over rtnetlink where /proc/sys is read-only (a
    /// container that is not privileged) and the setting has a netlink form.
    async fn write_sysctl(&self, path: &str, value: &str) -> Result<()> {
        match sysctl::write(path, value) {
            Ok(()) => Ok(()),
            Err(e) if sysctl::is_read_only(&e) => {
                let (Some((interface, key)), Ok(number)) =
                    (sysctl::ipv4_devconf(path), value.parse::<u32>())
                else {
                    return Err(e.into());
                };
                let index = self.index(interface).await?;
                self.netlink
                    .set_ipv4_devconf(index, interface, key, number)
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn undo(&self, state: &KernelView, step: &Step) -> Result<()> {
        let inverse = match step.clone() {
            Step::AddAddress { network, address } => Step::DeleteAddress { network, address },
            Step::DeleteAddress { network, address } => Step::AddAddress { network, address },
            Step::AddRoute { network, route } => Step::DeleteRoute { network, route },
            Step::DeleteRoute { network, route } => Step::AddRoute { network, route },
            Step::AddRule { network, rule } => Step::DeleteRule { network, rule },
            Step::DeleteRule { network, rule } => Step::AddRule { network, rule },
            Step::SetSysctl {
                network,
                path,
                value,
                previous,
            }
            | Step::RestoreSysctl {
                network,
                path,
                value,
                previous,
            } => Step::RestoreSysctl {
                // Restore, not set: a VRF device deleted by this change is gone until its own
                // undo makes it again with the settings it had.
                network,
                path,
                value: previous,
                previous: value,
            },
            Step::Nft { .. } => {
                let Some(listing) = state.nft_listing.get() else {
                    return Err(AgentError::Nft {
                        what: "restoring the table".into(),
                        detail: "no listing was taken before the change".into(),
                    });
                };
                let listing = listing.as_deref().map(parse_nft_json).transpose()?;
                return nft_restore(listing.as_ref());
            }
            Step::AddVrf { network, vrf } => Step::DeleteVrf { network, vrf },
            Step::DeleteVrf { network, vrf } => {
                let name = vrf.name.clone();
                self.run(&Step::AddVrf { network, vrf }).await?;
                let settings = self
                    .deleted_vrf_settings
                    .lock()
                    .ok()
                    .and_then(|mut lost| lost.remove(&name))
                    .unwrap_or_default();
                for (path, value) in settings {
                    self.write_sysctl(&path, &value).await?;
                }
                return Ok(());
            }
            Step::Enslave {
                network,
                interface,
                vrf,
            } => Step::Release {
                network,
                interface,
                vrf,
            },
            Step::Release {
                network,
                interface,
                vrf,
            } => Step::Enslave {
                network,
                interface,
                vrf,
            },
            Step::DeleteL3mdevRule { ipv6, .. } => Step::EnsureL3mdevRule { ipv4: !ipv6, ipv6 },
            // Whatever brought the rules (this step or the kernel with a first VRF device),
            // the node had none of these before the change.
            Step::EnsureL3mdevRule { ipv4, ipv6 } => {
                let (_, _, present) = self.netlink.rules().await?;
                for (family_ipv6, missing, priority) in
                    [(false, ipv4, present.ipv4), (true, ipv6, present.ipv6)]
                {
                    if let (true, Some(priority)) = (missing, priority) {
                        self.netlink.del_l3mdev_rule(family_ipv6, priority).await?;
                    }
                }
                return Ok(());
            }
        };
        self.run(&inverse).await
    }
}

/// Networks mirrornet holds on this node: in the kernel, or remembered in `memory`.
pub fn owned_networks(state: &KernelView, memory: Option<&Memory>) -> BTreeSet<String> {
    let mut names = state.nft.networks();
    if let Some(memory) = memory {
        names.extend(memory.networks.keys().cloned());
    }
    names
}

/// The command line overrides the spec; `Auto` means VRF where the kernel can make VRF devices.
/// An explicit VRF request on a kernel without VRF is refused in [`plan::plan`].
pub fn resolve_backend(
    choice: BackendChoice,
    spec: mirrornet_api::Backend,
    facts: &NodeFacts,
) -> BackendKind {
    use mirrornet_api::Backend;
    match (choice, spec) {
        (BackendChoice::Vrf, _) | (BackendChoice::Auto, Backend::Vrf) => BackendKind::Vrf,
        (BackendChoice::PolicyRouting, _) | (BackendChoice::Auto, Backend::PolicyRouting) => {
            BackendKind::PolicyRouting
        }
        (BackendChoice::Auto, _) if facts.vrf_available => BackendKind::Vrf,
        (BackendChoice::Auto, _) => BackendKind::PolicyRouting,
    }
}

/// Refuses, before any write, what would fail half-way or take over someone else's objects.
pub fn check_preconditions(
    state: &KernelView,
    plans: &[NetworkPlan],
    remove: &[String],
) -> Result<()> {
    NodeClaims::new(state, remove).check(state, plans)
}

/// What the node holds that a plan may not take: interfaces other networks hold (and keep),
/// addresses nobody gave to mirrornet. Read once, then checked against many plans: the run
/// loop checks every network on its own (one bad network must not block the others), and
/// rebuilding this for each made a pass quadratic in the networks.
#[derive(Debug)]
pub struct NodeClaims<'a> {
    /// Interface -> the network holding it, for every network not being removed.
    held: BTreeMap<String, String>,
    foreign_addresses: BTreeSet<(&'a str, std::net::IpAddr)>,
}

impl<'a> NodeClaims<'a> {
    pub fn new(state: &'a KernelView, remove: &[String]) -> Self {
        let held = state
            .nft
            .networks()
            .into_iter()
            .filter(|n| !remove.contains(n))
            .flat_map(|n| {
                state
                    .interfaces_of(&n)
                    .into_iter()
                    .map(move |i| (i, n.clone()))
            })
            .collect();
        let foreign_addresses = state
            .addresses
            .iter()
            .filter(|o| !o.ours)
            .map(|o| (o.interface.as_str(), o.address))
            .collect();
        Self {
            held,
            foreign_addresses,
        }
    }

    /// Checks `plans` together against the node: first come, first served among them.
    pub fn check(&self, state: &KernelView, plans: &[NetworkPlan]) -> Result<()> {
        check_plans(state, plans, self)
    }
}

fn check_plans(state: &KernelView, plans: &[NetworkPlan], claims: &NodeClaims) -> Result<()> {
    let changing: BTreeSet<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    // Interfaces taken by the plans checked so far.
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    let foreign_addresses = &claims.foreign_addresses;
    // A suspended network takes nothing on the node: its interfaces may be gone, down or the
    // node's own, and it claims none of them.
    for p in plans.iter().filter(|p| !p.suspended) {
        for (index, side) in p.sides.iter().enumerate() {
            if !state.links.contains_key(&side.interface) {
                return Err(AgentError::InterfaceMissing {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                });
            }
            if !state.links[&side.interface].up {
                return Err(AgentError::InterfaceDown {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                });
            }
            if let Some(why) = node_use(state, p, &side.interface) {
                return Err(AgentError::NodeInterface {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                    why,
                });
            }
            if p.backend == BackendKind::Vrf
                && state.carries_default_route(&side.interface)
                && our_vrf_of(state, &side.interface).is_none()
            {
                return Err(AgentError::VrfTakesNodeRoute {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                });
            }
            if let Some(controller) = state.links[&side.interface].controller
                && our_vrf_of(state, &side.interface).is_none()
            {
                let controller = state
                    .links
                    .values()
                    .find(|l| l.index == controller)
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|| format!("ifindex {controller}"));
                return Err(AgentError::InterfaceEnslaved {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                    controller,
                });
            }
            let held_by_another = claims
                .held
                .get(&side.interface)
                .map(String::as_str)
                .filter(|holder| !changing.contains(holder));
            if let Some(other) = held_by_another.or(claimed.insert(&side.interface, &p.name)) {
                return Err(AgentError::InterfaceShared {
                    network: p.name.clone(),
                    interface: side.interface.clone(),
                    other: other.into(),
                });
            }
        }
        for a in &p.addresses {
            if foreign_addresses.contains(&(a.interface.as_str(), a.address)) {
                return Err(AgentError::AddressTaken {
                    network: p.name.clone(),
                    interface: a.interface.clone(),
                    address: a.address.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The steps from `state` to `plans`, removing everything of `remove`. Pure.
pub fn changes(
    state: &KernelView,
    plans: &[NetworkPlan],
    remove: &[String],
    memory: &Memory,
) -> Result<Changes> {
    let mut vrf_steps = Vec::new();
    let mut adds = Vec::new();
    let mut sysctls = Vec::new();
    let mut deletes = Vec::new();
    let mut restores = Vec::new();

    // Our addresses by interface, our routes and rules by table: each network then looks at its
    // own objects only, in the order the kernel listed them.
    let mut addresses_by_interface: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, a) in state.addresses.iter().enumerate().filter(|(_, a)| a.ours) {
        addresses_by_interface
            .entry(a.interface.as_str())
            .or_default()
            .push(i);
    }
    let mut routes_by_table: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, r) in state.routes.iter().enumerate() {
        routes_by_table.entry(r.table).or_default().push(i);
    }
    let mut rules_by_table: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, r) in state.rules.iter().enumerate() {
        rules_by_table.entry(r.table).or_default().push(i);
    }
    let our_addresses = |interfaces: &BTreeSet<String>| {
        select(
            &state.addresses,
            interfaces
                .iter()
                .filter_map(|i| addresses_by_interface.get(i.as_str())),
        )
    };
    let our_routes = |tables: &BTreeSet<u32>| {
        select(
            &state.routes,
            tables.iter().filter_map(|t| routes_by_table.get(t)),
        )
    };
    let our_rules = |tables: &BTreeSet<u32>| {
        select(
            &state.rules,
            tables.iter().filter_map(|t| rules_by_table.get(t)),
        )
    };

    let owned = |network: &str, plan: Option<&NetworkPlan>| {
        // What the kernel attributes to this network: its recorded tables and interfaces,
        // plus those of its plan.
        let mut tables: BTreeSet<u32> = state
            .recorded_allocation(network)
            .map(|a| a.sides.iter().map(|s| s.table).collect())
            .unwrap_or_default();
        let mut interfaces = state.interfaces_of(network);
        if let Some(recorded) = memory.network(network) {
            tables.extend(recorded.tables.iter().copied());
            interfaces.extend(recorded.interfaces.iter().cloned());
        }
        if let Some(p) = plan {
            tables.extend(p.sides.iter().map(|s| s.ids.table));
            // A suspended network's interfaces are its own only while it still holds something
            // there (recorded above); afterwards another network may use them.
            if !p.suspended {
                interfaces.extend(p.sides.iter().map(|s| s.interface.clone()));
            }
        }
        (tables, interfaces)
    };

    for p in plans {
        let _span = info_span!("network", network = %p.name).entered();
        let (tables, interfaces) = owned(&p.name, Some(p));
        let network = p.name.clone();

        // Interfaces in one of our VRFs that the plan does not want there. Releasing one makes
        // the kernel cycle it, which flushes every route through it: where the plan still
        // routes through the interface (a backend switch) it comes out first and its routes
        // count as gone, so they are added back; where nothing is routed through it any more
        // (suspend, a side moved away) it comes out after its routes and addresses are
        // deleted, as in a delete, so every step can be undone in reverse.
        let mut released_first = BTreeSet::new();
        for interface in &interfaces {
            if let Some(current) = our_vrf_of(state, interface)
                && !p
                    .vrfs
                    .iter()
                    .any(|v| v.name == current.name && v.interface == *interface)
            {
                let release = Step::Release {
                    network: network.clone(),
                    interface: interface.clone(),
                    vrf: current.name.clone(),
                };
                if p.routes.iter().any(|r| r.interface == *interface) {
                    released_first.insert(interface.clone());
                    vrf_steps.push(release);
                } else if p.vrfs.iter().any(|v| v.name == current.name) {
                    // The VRF stays (another interface of the plan takes it): only this
                    // interface leaves it.
                    deletes.push(release);
                }
                // Otherwise the VRF goes as a whole below, its interfaces released with it.
            }
        }
        for v in &p.vrfs {
            let existing = state
                .links
                .get(&v.name)
                .filter(|l| l.vrf_table == Some(v.table));
            if existing.is_none() {
                vrf_steps.push(Step::AddVrf {
                    network: network.clone(),
                    vrf: v.clone(),
                });
            }
            let enslaved = existing.is_some_and(|vrf| {
                state
                    .links
                    .get(&v.interface)
                    .is_some_and(|l| l.controller == Some(vrf.index))
            });
            if !enslaved {
                vrf_steps.push(Step::Enslave {
                    network: network.clone(),
                    interface: v.interface.clone(),
                    vrf: v.name.clone(),
                });
            }
        }
        for link in our_vrfs(state, &tables) {
            if !p.vrfs.iter().any(|v| v.name == link.name) {
                // An interface released first (above) is out already; releasing it again
                // would, when undone, enslave it a second time.
                deletes.extend(delete_vrf(state, &network, link).into_iter().filter(|s| {
                    !matches!(s, Step::Release { interface, .. }
                                if released_first.contains(interface))
                }));
            }
        }

        let have_addresses: Vec<Address> = our_addresses(&interfaces)
            .into_iter()
            .map(|a| Address {
                interface: a.interface.clone(),
                address: a.address,
                prefix_len: a.prefix_len,
            })
            .collect();
        for a in &p.addresses {
            if !have_addresses.contains(a) {
                adds.push(Step::AddAddress {
                    network: network.clone(),
                    address: a.clone(),
                });
            }
        }
        for a in have_addresses {
            if !p.addresses.contains(&a) {
                deletes.push(Step::DeleteAddress {
                    network: network.clone(),
                    address: a,
                });
            }
        }

        let have_routes: Vec<&Route> = our_routes(&tables)
            .into_iter()
            .filter(|r| !released_first.contains(&r.interface))
            .collect();
        for r in &p.routes {
            if !have_routes.contains(&r) {
                adds.push(Step::AddRoute {
                    network: network.clone(),
                    route: r.clone(),
                });
            }
        }
        for r in have_routes {
            if !p.routes.contains(r) {
                // A stale route goes first: it may hold the key the new one needs.
                adds.insert(
                    0,
                    Step::DeleteRoute {
                        network: network.clone(),
                        route: r.clone(),
                    },
                );
            }
        }

        let have_rules: Vec<&Rule> = our_rules(&tables);
        // Iif rules before mark rules: a mark rule is what makes the new path live.
        let mut wanted_rules = p.rules.clone();
        wanted_rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        for r in &wanted_rules {
            if !have_rules.contains(&r) {
                adds.push(Step::AddRule {
                    network: network.clone(),
                    rule: r.clone(),
                });
            }
        }
        for r in have_rules {
            if !p.rules.contains(r) {
                deletes.push(Step::DeleteRule {
                    network: network.clone(),
                    rule: r.clone(),
                });
            }
        }

        for SysctlPlan { path, value } in &p.sysctls {
            let current = state.sysctl(path).unwrap_or_default();
            if current != *value {
                sysctls.push(Step::SetSysctl {
                    network: network.clone(),
                    path: path.clone(),
                    value: value.clone(),
                    previous: current,
                });
            }
        }
        for (path, original) in memory.sysctls(&p.name) {
            if !p.sysctls.iter().any(|s| s.path == path) && !memory.shared(&p.name, &path) {
                restores.extend(restore(&network, &path, &original));
            }
        }
    }

    for name in remove {
        let _span = info_span!("network", network = %name).entered();
        let (tables, interfaces) = owned(name, None);
        for link in our_vrfs(state, &tables) {
            deletes.extend(delete_vrf(state, name, link));
        }
        for a in our_addresses(&interfaces) {
            deletes.push(Step::DeleteAddress {
                network: name.clone(),
                address: Address {
                    interface: a.interface.clone(),
                    address: a.address,
                    prefix_len: a.prefix_len,
                },
            });
        }
        for r in our_routes(&tables) {
            deletes.push(Step::DeleteRoute {
                network: name.clone(),
                route: r.clone(),
            });
        }
        for r in our_rules(&tables) {
            deletes.push(Step::DeleteRule {
                network: name.clone(),
                rule: r.clone(),
            });
        }
        for (path, original) in memory.sysctls(name) {
            if !memory.shared(name, &path) {
                restores.extend(restore(name, &path, &original));
            }
        }
    }

    // The kernel adds an l3mdev rule with the first VRF device and never removes it; when
    // mirrornet brought it and no VRF device will remain, it goes too.
    let vrfs_now = state
        .links
        .values()
        .filter(|l| l.vrf_table.is_some())
        .count();
    let added = vrf_steps
        .iter()
        .filter(|s| matches!(s, Step::AddVrf { .. }))
        .count();
    let deleted = deletes
        .iter()
        .filter(|s| matches!(s, Step::DeleteVrf { .. }))
        .count();
    let mut l3mdev = Vec::new();
    if vrfs_now + added == deleted && memory.l3mdev_rule_ours {
        for (ipv6, priority) in [(false, state.l3mdev.ipv4), (true, state.l3mdev.ipv6)] {
            if let Some(priority) = priority {
                l3mdev.push(Step::DeleteL3mdevRule { ipv6, priority });
            }
        }
    }

    let mask = plans.first().map(|p| p.mark_mask).unwrap_or(0xff00_0000);

    // The node-wide skip rules follow the span of every mark rule the node will hold: the
    // planned networks' and those of networks this change leaves alone.
    let changing: BTreeSet<u32> = plans
        .iter()
        .flat_map(|p| owned(&p.name, Some(p)).0)
        .chain(remove.iter().flat_map(|n| owned(n, None).0))
        .collect();
    let mark_rules = plans.iter().flat_map(|p| p.rules.iter()).chain(
        state
            .rules
            .iter()
            .filter(|r| r.table != 0 && !changing.contains(&r.table)),
    );
    let wanted_skips = skip_rules(mark_rules);
    let have_skips = state.rules.iter().filter(|r| {
        matches!(
            r.selector,
            RuleSelector::Unmarked { .. } | RuleSelector::SkipTarget
        )
    });
    // A skip rule that moves goes before its successor is added: the kernel holds one rule
    // per priority and selector, whatever its goto target. Taking it away costs only speed.
    let mut skip_adds = Vec::new();
    for rule in have_skips.filter(|r| !wanted_skips.contains(r)) {
        let step = Step::DeleteRule {
            network: NODE.into(),
            rule: rule.clone(),
        };
        match rule.selector {
            RuleSelector::Unmarked { .. } => skip_adds.push(step),
            _ => deletes.push(step),
        }
    }
    // The target first: a goto to a priority nobody holds is left unresolved by the kernel.
    let mut missing: Vec<&Rule> = wanted_skips
        .iter()
        .filter(|r| !state.rules.contains(r))
        .collect();
    missing.sort_by_key(|r| matches!(r.selector, RuleSelector::Unmarked { .. }));
    for rule in missing {
        skip_adds.push(Step::AddRule {
            network: NODE.into(),
            rule: rule.clone(),
        });
    }
    // Delete order: rules (lowest priority first: the skip rule before the mark rules it
    // skips), routes, addresses, then the VRFs (interfaces released first, so a rollback can
    // put them back).
    deletes.sort_by_key(|s| match s {
        Step::DeleteRule { rule, .. } => (0, rule.priority),
        Step::DeleteRoute { .. } => (1, 0),
        Step::DeleteAddress { .. } => (2, 0),
        Step::Release { .. } => (3, 0),
        _ => (4, 0),
    });

    let desired: Vec<(&str, &nft::NetworkNft)> =
        plans.iter().map(|p| (p.name.as_str(), &p.nft)).collect();
    let removing: Vec<&str> = remove.iter().map(String::as_str).collect();
    let commands = nft::transaction(&state.nft, &desired, &removing, mask);

    // The l3mdev rules go in before the first VRF device: a kernel that would add them with
    // it finds them there (measured on Debian's kernel: no duplicate), and undoing this step
    // after the VRF steps are undone takes back whichever of the two put them there.
    let mut steps = Vec::new();
    let vrfs_wanted = plans.iter().any(|p| !p.vrfs.is_empty());
    let missing_ipv4 = state.l3mdev.ipv4.is_none();
    let missing_ipv6 = state.l3mdev.ipv6.is_none() && state.facts.ipv6;
    if vrfs_wanted && (missing_ipv4 || missing_ipv6) {
        steps.push(Step::EnsureL3mdevRule {
            ipv4: missing_ipv4,
            ipv6: missing_ipv6,
        });
    }
    steps.extend(vrf_steps);
    steps.extend(adds);
    steps.extend(sysctls);
    // The skip rule may send unmarked traffic past the mark rules only where no side relies
    // on an `iif` rule (an older agent's layout): then it goes after the nft transaction that
    // marks every side's own traffic (`home`); otherwise before it, so that adding a network
    // ends with its nft transaction, which is atomic and needs no listing to undo.
    let legacy = state
        .rules
        .iter()
        .any(|r| matches!(r.selector, RuleSelector::Iif(_)));
    if !legacy {
        steps.append(&mut skip_adds);
    }
    if !commands.is_empty() {
        steps.push(Step::Nft {
            summary: nft_summary(&commands),
            commands,
        });
    }
    steps.extend(skip_adds);
    steps.extend(deletes);
    steps.extend(restores);
    steps.extend(l3mdev);
    Ok(Changes { steps })
}

/// What the [`Step`]s of node-wide objects (the skip rules) name as their network.
pub const NODE: &str = "(node)";

/// The node-wide rules that take traffic without a mirrornet mark past every mark rule, per
/// family: `fwmark 0/mask goto <after the last mark rule>` just before the first, and the
/// no-op rule it jumps to. None where no mark rule is left, or the first sits at priority 1
/// (nothing fits before it but the local table's rule). The target is the l3mdev rule's
/// priority (1000) while every mark rule precedes it, as allocated ones do: it stays put as
/// networks come and go, so adding one does not move the skip rule. The mask is every mark
/// rule's mask together: a packet with any of those bits set is someone's, whatever mask each
/// network was allocated under.
fn skip_rules<'a>(rules: impl Iterator<Item = &'a Rule>) -> Vec<Rule> {
    let mut span: BTreeMap<bool, (u32, u32, u32)> = BTreeMap::new();
    for rule in rules {
        let RuleSelector::Mark { mask, .. } = rule.selector else {
            continue;
        };
        let (low, high, bits) = span
            .entry(rule.ipv6)
            .or_insert((rule.priority, rule.priority, 0));
        *low = (*low).min(rule.priority);
        *high = (*high).max(rule.priority);
        *bits |= mask;
    }
    span.into_iter()
        .filter(|(_, (low, high, _))| *low >= 2 && *high < u32::MAX)
        .flat_map(|(ipv6, (low, high, mask))| {
            let high = high.max(L3MDEV_PRIORITY - 1);
            [
                Rule {
                    ipv6,
                    priority: low - 1,
                    selector: RuleSelector::Unmarked {
                        mask,
                        target: high + 1,
                    },
                    table: 0,
                },
                Rule {
                    ipv6,
                    priority: high + 1,
                    selector: RuleSelector::SkipTarget,
                    table: 0,
                },
            ]
        })
        .collect()
}

/// The items at the positions in `groups`, in their original order.
fn select<'a, T>(items: &'a [T], groups: impl Iterator<Item = &'a Vec<usize>>) -> Vec<&'a T> {
    let mut positions: Vec<usize> = groups.flatten().copied().collect();
    positions.sort_unstable();
    positions.dedup();
    positions.into_iter().map(|i| &items[i]).collect()
}

/// Name prefixes of the interfaces common CNIs create (Calico, Cilium, Flannel, Weave, kube-
/// proxy's IPVS dummy, the bridge plugin's default, Kube-OVN, Antrea).
const CNI_PREFIXES: &[&str] = &[
    "cali",
    "cilium_",
    "lxc",
    "flannel",
    "cni",
    "weave",
    "vxlan.calico",
    "kube-ipvs",
    "tunl",
    "ovn",
    "antrea",
    "genev_sys",
];

/// Why the node itself needs `interface`, unless the side allows taking it over.
fn node_use(state: &KernelView, plan: &NetworkPlan, interface: &str) -> Option<String> {
    if plan.take_over.contains(interface) {
        return None;
    }
    if state.carries_default_route(interface) {
        return Some("carries the node's default route".into());
    }
    if let Some(prefix) = CNI_PREFIXES.iter().find(|p| interface.starts_with(*p)) {
        return Some(format!("is named like a CNI's interface ({prefix}*)"));
    }
    let gateway = plan.gateway;
    let foreign: Vec<String> = state
        .addresses
        .iter()
        .filter(|a| a.interface == interface && !a.ours && a.address != gateway)
        .filter(|a| !matches!(a.address, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    (!foreign.is_empty()).then(|| {
        format!(
            "holds addresses mirrornet did not add ({}): node or cluster traffic",
            foreign.join(", ")
        )
    })
}

/// Whether `link` is a VRF device mirrornet made: named `mnv<its own table>`.
fn is_our_vrf(link: &Link) -> bool {
    link.vrf_table
        .is_some_and(|table| link.name == plan::vrf_name(table))
}

/// Our VRF devices whose table is one of `tables`.
fn our_vrfs<'a>(state: &'a KernelView, tables: &BTreeSet<u32>) -> Vec<&'a Link> {
    state
        .links
        .values()
        .filter(|l| is_our_vrf(l) && l.vrf_table.is_some_and(|t| tables.contains(&t)))
        .collect()
}

/// The VRF of ours `interface` is enslaved to, if any.
fn our_vrf_of<'a>(state: &'a KernelView, interface: &str) -> Option<&'a Link> {
    let controller = state.links.get(interface)?.controller?;
    state
        .links
        .values()
        .find(|l| l.index == controller && is_our_vrf(l))
}

/// Releasing every interface enslaved to `vrf`, then deleting it.
fn delete_vrf(state: &KernelView, network: &str, vrf: &Link) -> Vec<Step> {
    let mut steps: Vec<Step> = state
        .links
        .values()
        .filter(|l| l.controller == Some(vrf.index))
        .map(|l| Step::Release {
            network: network.into(),
            interface: l.name.clone(),
            vrf: vrf.name.clone(),
        })
        .collect();
    steps.push(Step::DeleteVrf {
        network: network.into(),
        vrf: VrfPlan {
            name: vrf.name.clone(),
            table: vrf.vrf_table.unwrap_or_default(),
            interface: String::new(),
            alias: vrf.alias.clone().unwrap_or_default(),
        },
    });
    steps
}

fn restore(network: &str, path: &str, original: &str) -> Option<Step> {
    // An interface that is gone took its sysctls with it: nothing to restore.
    let current = sysctl::read(path)?;
    (current != original).then(|| Step::RestoreSysctl {
        network: network.into(),
        path: path.into(),
        value: original.into(),
        previous: current,
    })
}

fn nft_summary(commands: &[Value]) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for c in commands {
        if let Some((verb, body)) = c.as_object().and_then(|o| o.iter().next())
            && let Some(kind) = body.as_object().and_then(|o| o.keys().next())
        {
            *counts.entry(format!("{verb} {kind}")).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(what, n)| format!("{what} x{n}"))
        .collect()
}

/// Lists mirrornet's table; `None` when it does not exist.
pub fn nft_list() -> Result<Option<Value>> {
    nft_list_text()?
        .map(|text| parse_nft_json(&text))
        .transpose()
}

fn parse_nft_json(text: &[u8]) -> Result<Value> {
    serde_json::from_slice(text).map_err(|e| AgentError::Nft {
        what: "parsing nft -j output".into(),
        detail: e.to_string(),
    })
}

/// `nft -j list table inet mirrornet` as printed; `None` when the table does not exist.
fn nft_list_text() -> Result<Option<Vec<u8>>> {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "inet", nft::TABLE])
        .output()
        .map_err(|e| AgentError::Nft {
            what: "running nft (install the nftables package)".into(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(AgentError::Nft {
            what: format!("listing table inet {}", nft::TABLE),
            detail: stderr.trim().to_owned(),
        });
    }
    Ok(Some(output.stdout))
}

/// Runs one nft JSON batch as a single transaction.
pub fn nft_apply(batch: &Value) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::Nft {
            what: "running nft (install the nftables package)".into(),
            detail: e.to_string(),
        })?;
    let text = batch.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| AgentError::Nft {
                what: "writing the transaction to nft".into(),
                detail: e.to_string(),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| AgentError::Nft {
        what: "waiting for nft".into(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(AgentError::Nft {
            what: "applying the transaction".into(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Puts the table back exactly as listed before (or removes it if it did not exist).
fn nft_restore(listing: Option<&Value>) -> Result<()> {
    let mut commands = Vec::new();
    if nft_list()?.is_some() {
        commands
            .push(serde_json::json!({"delete": {"table": {"family": "inet", "name": nft::TABLE}}}));
    }
    if let Some(listing) = listing {
        // Listed order puts maps (whose elements jump to chains) before the chains: re-add
        // containers first, then what refers to them.
        let rank = |kind: &str| match kind {
            "table" => 0,
            "chain" => 1,
            "map" | "set" | "counter" => 2,
            _ => 3,
        };
        let mut items: Vec<(&String, &Value)> = listing
            .get("nftables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_object().and_then(|o| o.iter().next()))
            .filter(|(kind, _)| kind.as_str() != "metainfo")
            .collect();
        items.sort_by_key(|(kind, _)| rank(kind));
        for (kind, body) in items {
            let mut body = body.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("handle");
            }
            commands.push(serde_json::json!({"add": {kind.as_str(): body}}));
        }
    }
    if commands.is_empty() {
        return Ok(());
    }
    nft_apply(&nft::batch(&commands))
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} src {} table {}",
            self.destination, self.interface, self.source, self.table
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if self.ipv6 { "-6 " } else { "" };
        match self.selector {
            // Node-wide rules that jump or do nothing: they look up no table.
            RuleSelector::Unmarked { .. } | RuleSelector::SkipTarget => {
                write!(f, "{family}{} {}", self.priority, self.selector)
            }
            _ => write!(
                f,
                "{family}{} {} lookup {}",
                self.priority, self.selector, self.table
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark_rule(ipv6: bool, priority: u32) -> Rule {
        Rule {
            ipv6,
            priority,
            selector: RuleSelector::Mark {
                value: priority << 24,
                mask: 0xff00_0000,
            },
            table: 20000 + priority,
        }
    }

    #[test]
    fn the_skip_rule_spans_every_mark_rule_of_its_family() {
        let rules = [
            mark_rule(false, 503),
            mark_rule(false, 500),
            mark_rule(false, 507),
            mark_rule(true, 510),
        ];
        let skips = skip_rules(rules.iter());
        let shown: Vec<String> = skips.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "499 fwmark 0x0/0xff000000 goto 1000",
                "1000 nop",
                "-6 509 fwmark 0x0/0xff000000 goto 1000",
                "-6 1000 nop",
            ]
        );
        assert!(skip_rules(std::iter::empty()).is_empty());
        // Nothing fits between the local table's rule at 0 and a mark rule at 1.
        assert!(skip_rules([mark_rule(false, 1)].iter()).is_empty());
        // An explicit priority past the l3mdev rule takes the target with it, and with
        // networks allocated under different masks only a packet unmarked under all skips.
        let mut wide = mark_rule(false, 4000);
        wide.selector = RuleSelector::Mark {
            value: 0x0010_0000,
            mask: 0xfff0_0000,
        };
        let far = skip_rules([mark_rule(false, 500), wide].iter());
        assert_eq!(far[0].to_string(), "499 fwmark 0x0/0xfff00000 goto 4001");
    }
}
