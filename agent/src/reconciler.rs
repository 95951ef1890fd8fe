//! The long-running side of the agent: keep every desired network converged on this node,
//! whatever changes it — a new spec, a tampered rule, an interface that comes and goes.
//!
//! ```text
//!  desired (file or cluster) ──┐
//!  rtnetlink events ───────────┤  kick ──debounce──> observe ─> plan ─> converge ─> NodeReport
//!  `nft monitor` (our table) ──┤                                                     metrics
//!  periodic resync ────────────┘
//! ```
//!
//! The reconciler adopts what it finds: starting on a converged node performs zero writes and
//! never tears the datapath down; stopping leaves it in place. A network whose interface is
//! missing is reported and left as it is until the interface appears.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, BackendKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, info_span, warn};

use crate::engine::{BackendChoice, Engine, AgentError, KernelView};
use crate::netlink::Netlink;
use crate::plan::NetworkPlan;
use crate::memory::Memory;
use mirrornet_api::allocation::Allocator;

/// A network the node should hold, with the ids the operator allocated (none in file mode:
/// the agent allocates locally).
#[derive(Debug, Clone)]
pub struct DesiredNetwork {
    pub loaded: LoadedNetwork,
    pub allocation: Option<Allocation>,
}

/// How one network stands on this node; what the agent reports in status and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkReport {
    pub name: String,
    pub generation: Option<i64>,
    pub backend: Option<BackendKind>,
    pub programmed: bool,
    pub interfaces_present: bool,
    /// CamelCase reason, as in a Kubernetes condition.
    pub reason: String,
    pub message: String,
    /// Whether the last checks of this network (after its last change, or the periodic
    /// probes) passed; `None` before any.
    pub verified: Option<bool>,
    /// The last checks: what passed, or the check that failed and why.
    pub verification: String,
}

impl NetworkReport {
    /// A network not (yet) programmed, with nothing to say about it.
    fn new(name: &str, generation: Option<i64>) -> Self {
        Self {
            name: name.to_owned(),
            generation,
            backend: None,
            programmed: false,
            interfaces_present: true,
            reason: String::new(),
            message: String::new(),
            verified: None,
            verification: String::new(),
        }
    }

    /// The node holds `plan`: the datapath, or, suspended, only the ids.
    fn programmed_with(&mut self, plan: &NetworkPlan) {
        self.programmed = true;
        if plan.suspended {
            self.reason = mirrornet_api::conditions::reason::SUSPENDED.into();
            self.message = "suspended: datapath withdrawn, ids kept".into();
        } else {
            self.reason = "Programmed".into();
            self.message = format!("programmed with backend {}", plan.backend);
        }
    }
}

/// What the loop remembers about checks from one pass to the next.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Specs whose change failed a check and was rolled back, with why: the network stays on
    /// its previous spec (or off the node) until its spec changes again, instead of being
    /// re-applied and rolled back on every pass.
    rejected: BTreeMap<String, (mirrornet_api::MirrorNetworkSpec, String)>,
    /// The last checks per network: passed, and what they said.
    last: BTreeMap<String, (bool, String)>,
    /// When the periodic probes last ran.
    last_probes: Option<Instant>,
}

/// The node's state after the last pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    /// Whether at least one full pass has completed since start.
    pub synced: bool,
    pub networks: BTreeMap<String, NetworkReport>,
    /// Networks removed from this node in the last pass.
    pub removed: Vec<String>,
    /// Networks mirrornet holds on the node after the last pass, wanted or not: a removal
    /// that failed leaves its network here, so only a network absent from it is torn down.
    pub held: std::collections::BTreeSet<String>,
}

/// Labels of a traffic direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TrafficLabels {
    pub network: String,
    pub from: String,
    pub to: String,
}

impl Metrics {
    /// Refreshes the traffic gauges from the kernel's counters.
    pub fn read_traffic(&self) {
        let Ok((_, nft)) = crate::nfnetlink::Nfnetlink::open().and_then(|mut r| r.observe()) else {
            return;
        };
        self.side_packets.clear();
        self.side_bytes.clear();
        for network in nft.networks() {
            for t in nft.traffic(&network) {
                let labels = TrafficLabels {
                    network: network.clone(),
                    from: t.from,
                    to: t.to,
                };
                self.side_packets
                    .get_or_create(&labels)
                    .set(i64::try_from(t.packets).unwrap_or(i64::MAX));
                self.side_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct Trigger {
    pub cause: Cause,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prometheus_client::encoding::EncodeLabelValue,
)]
pub enum Cause {
    /// The desired networks changed.
    Spec,
    /// The kernel changed under us.
    Drift,
    /// The periodic full resync.
    Resync,
}

/// The agent's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub passes: Family<Trigger, Counter>,
    pub repairs: Counter,
    pub kernel_writes: Counter,
    pub errors: Counter,
    pub pass_seconds: Histogram,
    pub networks_programmed: Gauge,
    pub networks_failing: Gauge,
    /// Packets and bytes per network and direction, read from the steering chains' counters
    /// when /metrics is scraped.
    pub side_packets: Family<TrafficLabels, Gauge>,
    pub side_bytes: Family<TrafficLabels, Gauge>,
    /// Unix time (ms) of the last completed pass, for liveness.
    pub last_pass_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrornet_agent");
        let passes = Family::<Trigger, Counter>::default();
        let repairs = Counter::default();
        let kernel_writes = Counter::default();
        let errors = Counter::default();
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let networks_programmed = Gauge::default();
        let networks_failing = Gauge::default();
        let side_packets = Family::<TrafficLabels, Gauge>::default();
        let side_bytes = Family::<TrafficLabels, Gauge>::default();
        registry.register(
            "side_packets",
            "Packets that entered side `from` for side `to` (nft counter)",
            side_packets.clone(),
        );
        registry.register(
            "side_bytes",
            "Bytes that entered side `from` for side `to` (nft counter)",
            side_bytes.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes, by what caused them",
            passes.clone(),
        );
        registry.register(
            "repairs",
            "Passes that had to rewrite kernel state changed by someone else",
            repairs.clone(),
        );
        registry.register("kernel_writes", "Kernel writes made", kernel_writes.clone());
        registry.register("errors", "Passes that failed", errors.clone());
        registry.register(
            "reconcile_pass_seconds",
            "Duration of a reconcile pass",
            pass_seconds.clone(),
        );
        registry.register(
            "networks_programmed",
            "Networks fully programmed on this node",
            networks_programmed.clone(),
        );
        registry.register(
            "networks_failing",
            "Desired networks that could not be programmed",
            networks_failing.clone(),
        );
        Self {
            registry,
            passes,
            repairs,
            kernel_writes,
            errors,
            pass_seconds,
            networks_programmed,
            networks_failing,
            side_packets,
            side_bytes,
            last_pass_ms: AtomicU64::new(0),
        }
    }
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: BackendChoice,
    pub resync: Duration,
    /// How long to wait for a burst of events to settle before a pass.
    pub debounce: Duration,
    /// Endpoints the node must still reach after a change (the API server in a cluster).
    pub endpoints: Vec<std::net::SocketAddr>,
    /// The id ranges the engine was made with, for the rollback guard.
    pub ranges: mirrornet_api::allocation::IdRanges,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(10),
            endpoints: Vec::new(),
            ranges: Default::default(),
        }
    }
}

/// Runs until `shutdown` turns true. Never removes the datapath on the way out.
pub async fn run(
    engine: Engine,
    settings: Settings,
    mut desired: watch::Receiver<Vec<DesiredNetwork>>,
    report: watch::Sender<NodeReport>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (kick, mut kicks) = mpsc::channel::<Cause>(64);
    spawn_netlink_watch(kick.clone());
    spawn_nft_watch(kick.clone());
    let watched_sysctls = Arc::new(std::sync::Mutex::new(Vec::new()));
    spawn_sysctl_watch(kick.clone(), watched_sysctls.clone());
    let mut resync = tokio::time::interval(settings.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: the initial pass, which programs rather than repairs.
    resync.tick().await;
    let mut first = true;
    let mut verdicts = Verdicts::default();
    loop {
        let cause = if std::mem::take(&mut first) {
            Cause::Spec
        } else {
            tokio::select! {
            _ = shutdown.changed() => break,
            changed = desired.changed() => {
                if changed.is_err() { break; }
                Cause::Spec
            }
            _ = resync.tick() => Cause::Resync,
            Some(cause) = kicks.recv() => cause,
            }
        };
        // Let a burst (our own writes echo back as events too) settle into one pass.
        tokio::time::sleep(settings.debounce).await;
        let mut cause = cause;
        while let Ok(more) = kicks.try_recv() {
            cause = cause.min(more);
        }
        let networks = desired.borrow_and_update().clone();
        let started = Instant::now();
        metrics.passes.get_or_create(&Trigger { cause }).inc();
        let (next, sysctls) = pass(
            &engine,
            &settings,
            &networks,
            cause,
            &metrics,
            &mut verdicts,
        )
        .await;
        if let Ok(mut w) = watched_sysctls.lock() {
            *w = sysctls;
        }
        metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.last_pass_ms.store(now_ms(), Ordering::Relaxed);
        report.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
    info!("stopping; the datapath stays in place");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One observe-plan-converge pass over every desired network.
pub async fn pass(
    engine: &Engine,
    settings: &Settings,
    networks: &[DesiredNetwork],
    cause: Cause,
    metrics: &Metrics,
    verdicts: &mut Verdicts,
) -> (NodeReport, Vec<(String, String)>) {
    let mut report = NodeReport {
        synced: true,
        ..Default::default()
    };
    // Held for the whole pass: a guard reverting a dead agent's change, or a file-mode
    // `apply`, never interleaves its writes with ours.
    let lock = match crate::rollback::NodeLock::acquire().await {
        Ok(lock) => lock,
        Err(e) => {
            error!(error = %e, "taking the node lock failed");
            metrics.errors.inc();
            report.synced = false;
            return (report, Vec::new());
        }
    };
    let state = match engine.observe().await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "observing the kernel failed");
            metrics.errors.inc();
            report.synced = false;
            return (report, Vec::new());
        }
    };
    // The state file is read once per pass: planning, ownership and converging all see the
    // same memory (nothing writes it in between).
    let memory = Memory::load(&state);
    // One allocator for the pass, as `apply` uses for a file: networks without ids of their
    // own that appear together get distinct ids.
    let mut allocator = memory
        .as_ref()
        .ok()
        .map(|memory| engine.allocator(&state, memory));
    // A spec rejected by its checks stays rejected until it changes; meanwhile the network
    // keeps the spec it had before (or stays off the node if it had none).
    verdicts.rejected.retain(|name, (spec, _)| {
        networks
            .iter()
            .any(|n| n.loaded.name() == name && n.loaded.object.spec == *spec)
    });
    let substitutes: Vec<DesiredNetwork> = networks
        .iter()
        .filter(|n| verdicts.rejected.contains_key(n.loaded.name()))
        .filter_map(|n| {
            let record = memory.as_ref().ok()?.network(n.loaded.name())?;
            let spec = record.spec.clone()?;
            let valid = mirrornet_api::validate(&spec).ok()?;
            let mut object = n.loaded.object.clone();
            object.spec = spec;
            Some(DesiredNetwork {
                loaded: LoadedNetwork { object, valid },
                allocation: record.allocation.clone(),
            })
        })
        .collect();
    let effective: Vec<&DesiredNetwork> = networks
        .iter()
        .filter_map(|n| match verdicts.rejected.get(n.loaded.name()) {
            None => Some(n),
            Some(_) => substitutes
                .iter()
                .find(|s| s.loaded.name() == n.loaded.name()),
        })
        .collect();
    let mut ready: Vec<(NetworkPlan, &DesiredNetwork)> = Vec::new();
    for network in effective {
        let name = network.loaded.name().to_owned();
        let _span = info_span!("network", network = %name).entered();
        let mut entry = NetworkReport::new(&name, network.loaded.object.metadata.generation);
        // A suspended network holds nothing on its interfaces: their absence is not a reason
        // to leave it as it is, nor something to wait for.
        let missing: Vec<String> = network
            .loaded
            .valid
            .sides
            .iter()
            .filter(|_| !network.loaded.valid.suspend)
            .filter(|s| !state.links.get(s.interface.as_str()).is_some_and(|l| l.up))
            .map(|s| {
                let why = if state.links.contains_key(s.interface.as_str()) {
                    "down"
                } else {
                    "absent"
                };
                format!("{} (side {}, {why})", s.interface.as_str(), s.name.as_str())
            })
            .collect();
        if !missing.is_empty() {
            entry.interfaces_present = false;
            entry.reason = "InterfaceMissing".into();
            entry.message = format!(
                "interface(s) {} on this node; programming resumes when they are present and up",
                missing.join(", ")
            );
            warn!(message = %entry.message);
            report.networks.insert(name, entry);
            continue;
        }
        match plan_one(
            engine,
            &state,
            network,
            settings.backend,
            allocator.as_mut(),
        ) {
            Ok(plan) => {
                entry.backend = Some(plan.backend);
                report.networks.insert(name, entry);
                ready.push((plan, network));
            }
            Err(e) => {
                entry.reason = reason_of(&e).into();
                entry.message = e.to_string();
                warn!(error = %e, "cannot plan");
                report.networks.insert(name, entry);
            }
        }
    }
    // Networks held on the node that nobody wants any more go; those waiting for an interface
    // stay as they are.
    let wanted: std::collections::BTreeSet<&str> =
        networks.iter().map(|n| n.loaded.name()).collect();
    report.held = crate::engine::owned_networks(&state, memory.as_ref().ok());
    let remove: Vec<String> = report
        .held
        .iter()
        .filter(|n| !wanted.contains(n.as_str()))
        .cloned()
        .collect();

    // Refuse per network what would fail, so one bad network does not block the others.
    let mut accepted = Vec::new();
    let claims = crate::engine::NodeClaims::new(&state, &remove);
    for (plan, network) in ready {
        match claims.check(&state, std::slice::from_ref(&plan)) {
            Ok(()) => accepted.push((plan, network)),
            Err(e) => {
                if let Some(entry) = report.networks.get_mut(&plan.name) {
                    entry.reason = reason_of(&e).into();
                    entry.message = e.to_string();
                }
            }
        }
    }
    let plans: Vec<NetworkPlan> = accepted.iter().map(|(p, _)| p.clone()).collect();
    let specs: Vec<&mirrornet_api::MirrorNetworkSpec> = accepted
        .iter()
        .map(|(_, n)| &n.loaded.object.spec)
        .collect();
    let valid: Vec<&mirrornet_api::ValidNetwork> =
        accepted.iter().map(|(_, n)| &n.loaded.valid).collect();
    let change = crate::rollback::Change {
        plans: &plans,
        specs: &specs,
        networks: &valid,
        remove: &remove,
        endpoints: &settings.endpoints,
        ranges: &settings.ranges,
    };
    let remembered: std::collections::BTreeSet<String> = memory
        .as_ref()
        .map(|m| {
            m.networks
                .iter()
                .filter(|(_, r)| r.spec.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    let converged = match memory {
        Ok(memory) => crate::rollback::converge_verified(engine, &state, memory, change).await,
        Err(e) => Err(e.into()),
    };
    let mut checked = std::collections::BTreeSet::new();
    match converged {
        Ok(verified) => {
            let outcome = verified.outcome;
            if let Some(v) = &verified.verification {
                for name in &verified.changed {
                    verdicts.last.insert(name.clone(), (true, v.summary()));
                    checked.insert(name.clone());
                }
            }
            metrics.kernel_writes.inc_by(outcome.writes as u64);
            if outcome.writes > 0 {
                if cause == Cause::Spec {
                    // The same diff `plan` prints, so a log tells exactly what changed.
                    info!(writes = outcome.writes, steps = ?outcome.steps, "programmed");
                } else {
                    metrics.repairs.inc();
                    info!(writes = outcome.writes, ?cause, steps = ?outcome.steps, "repaired drift");
                }
            } else {
                debug!("converged, nothing to do");
            }
            for plan in &plans {
                if let Some(entry) = report.networks.get_mut(&plan.name) {
                    entry.programmed_with(plan);
                }
            }
            report.held.extend(plans.iter().map(|p| p.name.clone()));
            report.held.retain(|n| !remove.contains(n));
            report.removed = remove;
        }
        Err(
            ref e @ AgentError::VerificationFailed {
                networks: ref rejected,
                ..
            },
        ) => {
            metrics.errors.inc();
            error!(error = %e, "a change failed its checks");
            let message = e.to_string();
            for (plan, network) in &accepted {
                let spec = &network.loaded.object.spec;
                if !rejected.contains(&plan.name) {
                    if let Some(entry) = report.networks.get_mut(&plan.name) {
                        entry.programmed_with(plan);
                    }
                    continue;
                }
                verdicts
                    .rejected
                    .insert(plan.name.clone(), (spec.clone(), message.clone()));
                verdicts
                    .last
                    .insert(plan.name.clone(), (false, message.clone()));
                checked.insert(plan.name.clone());
            }
        }
        Err(e) => {
            metrics.errors.inc();
            error!(error = %e, "converging failed");
            for plan in &plans {
                if let Some(entry) = report.networks.get_mut(&plan.name) {
                    entry.reason = "ApplyFailed".into();
                    entry.message = e.to_string();
                }
            }
        }
    }
    // Rejected changes: the network runs its previous spec, or nothing, and says why.
    for network in networks {
        let name = network.loaded.name();
        let Some((_, why)) = verdicts.rejected.get(name) else {
            continue;
        };
        let kept = substitutes.iter().any(|s| s.loaded.name() == name) || remembered.contains(name);
        let entry = report
            .networks
            .entry(name.to_owned())
            .or_insert_with(|| NetworkReport::new(name, None));
        entry.generation = network.loaded.object.metadata.generation;
        entry.programmed = false;
        entry.reason = mirrornet_api::conditions::reason::VERIFICATION_FAILED.into();
        entry.message = format!(
            "{why}; {}",
            if kept {
                "the node keeps the previous spec until this one changes"
            } else {
                "the network stays off this node until its spec changes"
            }
        );
    }
    // The kernel is no longer touched in this pass: probes that wait for silent hosts must not
    // hold up a CLI `apply` or a guard.
    drop(lock);
    // The periodic probes: a path that stops answering later is reported, not rolled back
    // (there is no earlier state to go back to).
    // Timed by the clock, not by the pass's cause: a node whose nftables change often (kube-
    // proxy) merges every resync into a drift pass.
    let probes_due = verdicts
        .last_probes
        .is_none_or(|at| at.elapsed() >= settings.resync);
    if probes_due && cause != Cause::Spec {
        verdicts.last_probes = Some(Instant::now());
        for (plan, network) in &accepted {
            let valid = &network.loaded.valid;
            if valid.probes.is_empty()
                || plan.suspended
                || checked.contains(&plan.name)
                || verdicts.rejected.contains_key(&plan.name)
                || !report
                    .networks
                    .get(&plan.name)
                    .is_some_and(|n| n.programmed)
            {
                continue;
            }
            let deadline = Instant::now() + valid.verify_timeout;
            let v = crate::verify::Verification {
                checks: crate::verify::probe_network(plan, valid, deadline).await,
            };
            if let Some(failed) = v.failure() {
                warn!(network = %plan.name, check = %failed.name, detail = %failed.detail, "a probe failed");
            }
            verdicts
                .last
                .insert(plan.name.clone(), (v.failure().is_none(), v.summary()));
        }
    }
    verdicts
        .last
        .retain(|name, _| wanted.contains(name.as_str()));
    for (name, entry) in report.networks.iter_mut() {
        if let Some((passed, message)) = verdicts.last.get(name) {
            entry.verified = Some(*passed);
            entry.verification = message.clone();
        }
    }
    let sysctls = plans
        .iter()
        .filter(|p| report.networks.get(&p.name).is_some_and(|n| n.programmed))
        .flat_map(|p| p.sysctls.iter().map(|s| (s.path.clone(), s.value.clone())))
        .collect();
    let programmed = report.networks.values().filter(|n| n.programmed).count();
    metrics.networks_programmed.set(programmed as i64);
    metrics
        .networks_failing
        .set((report.networks.len() - programmed) as i64);
    (report, sysctls)
}

fn plan_one(
    engine: &Engine,
    state: &KernelView,
    network: &DesiredNetwork,
    backend: BackendChoice,
    allocator: Option<&mut Allocator>,
) -> Result<NetworkPlan, AgentError> {
    let loaded = std::slice::from_ref(&network.loaded);
    match (&network.allocation, allocator) {
        (Some(allocation), _) => engine.plan_with(state, &network.loaded, allocation, backend),
        (None, Some(allocator)) => {
            let allocation = allocator
                .allocate(network.loaded.name(), &network.loaded.valid)
                .map_err(|e| AgentError::Allocation {
                    network: network.loaded.name().into(),
                    reason: e.to_string(),
                })?;
            engine.plan_with(state, &network.loaded, &allocation, backend)
        }
        // The state file could not be read: the engine reports why.
        (None, None) => Ok(engine.plans(state, loaded, backend)?.remove(0)),
    }
}

/// The condition reason for an error.
pub fn reason_of(e: &AgentError) -> &'static str {
    use mirrornet_api::conditions::NodeFailure;
    let failure = match e {
        AgentError::InterfaceMissing { .. } => NodeFailure::InterfaceMissing,
        AgentError::InterfaceDown { .. } => NodeFailure::InterfaceDown,
        AgentError::AddressTaken { .. }
        | AgentError::InterfaceShared { .. }
        | AgentError::InterfaceEnslaved { .. } => NodeFailure::Conflict,
        AgentError::NodeInterface { .. } | AgentError::VrfTakesNodeRoute { .. } => {
            NodeFailure::NodeInterface
        }
        AgentError::Allocation { .. } => NodeFailure::AllocationFailed,
        AgentError::Plan(_) => NodeFailure::BackendUnavailable,
        _ => NodeFailure::ApplyFailed,
    };
    failure.as_str()
}

/// Kicks a pass on every link, address, route and rule change.
fn spawn_netlink_watch(kick: mpsc::Sender<Cause>) {
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
    ];
    match rtnetlink::new_multicast_connection(&groups) {
        Ok((connection, _handle, mut messages)) => {
            tokio::spawn(connection);
            tokio::spawn(async move {
                while messages.next().await.is_some() {
                    if kick.try_send(Cause::Drift).is_err() {
                        // A pass is already queued; it will see this change too.
                    }
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot subscribe to rtnetlink events; relying on resync"),
    }
}

/// Kicks a pass whenever the nftables ruleset changes: the kernel multicasts every
/// transaction (elements included, which `nft monitor` 1.0.6 does not print) to the
/// NFNLGRP_NFTABLES group of a netfilter netlink socket. Any change kicks; a pass over an
/// untouched table costs one listing and writes nothing.
fn spawn_nft_watch(kick: mpsc::Sender<Cause>) {
    use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};
    /// NFNLGRP_NFTABLES from linux/netfilter/nfnetlink.h.
    const NFNLGRP_NFTABLES: u32 = 7;
    let socket = TokioSocket::new(protocols::NETLINK_NETFILTER).and_then(|mut s| {
        s.socket_mut()
            .bind(&SocketAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)))?;
        Ok(s)
    });
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot subscribe to nftables events; relying on resync");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            match socket.recv_from_full().await {
                Ok(_) => {
                    let _ = kick.try_send(Cause::Drift);
                }
                Err(e) => {
                    warn!(error = %e, "reading nftables events");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Kicks a pass when a sysctl a network needs no longer holds its value. Sysctl writes raise
/// no event this build can decode (netconf messages), and reading a few /proc files is cheap.
fn spawn_sysctl_watch(
    kick: mpsc::Sender<Cause>,
    watched: Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let drifted = watched
                .lock()
                .map(|w| {
                    w.iter()
                        .any(|(path, value)| crate::sysctl::read(path).is_some_and(|v| v != *value))
                })
                .unwrap_or(false);
            if drifted {
                let _ = kick.try_send(Cause::Drift);
            }
        }
    });
}

/// Connects to netlink for an engine used by the loop.
pub fn engine(ranges: mirrornet_api::allocation::IdRanges) -> std::io::Result<Engine> {
    Ok(Engine::new(Netlink::connect()?, ranges))
}
