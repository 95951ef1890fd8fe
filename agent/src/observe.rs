//! Observe: what the kernel holds that concerns mirrornet, read once per pass, and every
//! other read the diff needs, so that the diff itself reads nothing.
//!
//! ```text
//! observe()        links, addresses, mirrornet's routes and rules (protocol 77), every table
//!                  in use, the `inet mirrornet` table, the node facts        -> KernelView
//! Sysctls::read()  the sysctls the plans set and those mirrornet remembers   -> Sysctls
//! ```
//!
//! Ownership is what keeps other software safe: an object is ours only by the marks we put on
//! it (address and route protocol 77, rule protocol 77 with one of the network's tables,
//! chains of our own table, VRF devices named `mnv<their table>`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use mirrornet_api::{Allocation, SideAllocation};

use crate::error::{AgentError, Result};
use crate::netlink::{DefaultRoute, L3mdevRules, Link, Netlink, ObservedAddress};
use crate::nft::nfnetlink::Nfnetlink;
use crate::nft::{self, ObservedNft};
use crate::plan::{self, NodeFacts, Route, Rule};
use crate::sysctl;

/// What the kernel holds that concerns mirrornet.
#[derive(Debug, Clone, Default)]
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
    pub facts: NodeFacts,
    pub l3mdev: L3mdevRules,
    /// The main table's default routes.
    pub default_routes: BTreeSet<DefaultRoute>,
}

impl KernelView {
    /// A per-interface sysctl from the link dump taken with this view.
    pub fn link_sysctl(&self, path: &str) -> Option<String> {
        let rest = path.strip_prefix("net/")?;
        let (family, rest) = rest.split_once("/conf/")?;
        let (link, key) = rest.split_once('/')?;
        self.links
            .get(link)?
            .conf
            .sysctl(family, key)
            .map(|value| value.to_string())
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

    /// Side interfaces the kernel attributes to `network` (from its ingress map keys).
    pub fn interfaces_of(&self, network: &str) -> BTreeSet<String> {
        self.nft.interfaces_of(network)
    }

    /// Our VRF devices whose table is one of `tables`.
    pub fn our_vrfs(&self, tables: &BTreeSet<u32>) -> Vec<&Link> {
        self.links
            .values()
            .filter(|l| is_our_vrf(l) && l.vrf_table.is_some_and(|t| tables.contains(&t)))
            .collect()
    }

    /// The VRF of ours `interface` is enslaved to, if any.
    pub fn our_vrf_of(&self, interface: &str) -> Option<&Link> {
        let controller = self.links.get(interface)?.controller?;
        self.links
            .values()
            .find(|l| l.index == controller && is_our_vrf(l))
    }
}

/// Whether `link` is a VRF device mirrornet made: named `mnv<its own table>`.
fn is_our_vrf(link: &Link) -> bool {
    link.vrf_table
        .is_some_and(|table| link.name == plan::vrf_name(table))
}

/// The sysctl values a diff compares: those the plans set, and those mirrornet remembers
/// changing (to put them back; [`crate::session::Session::diff`] names them). A path absent
/// here does not exist on the node (its interface is gone, or the kernel lacks the setting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls {
    values: BTreeMap<String, String>,
}

impl Sysctls {
    /// Per-interface settings come from the link dump of `view`; anything else (`all`,
    /// `default`, links that appeared since) from /proc/sys.
    pub fn read<'a>(view: &KernelView, paths: impl IntoIterator<Item = &'a str>) -> Self {
        let paths: BTreeSet<&str> = paths.into_iter().collect();
        Self {
            values: paths
                .into_iter()
                .filter_map(|path| {
                    let value = view.link_sysctl(path).or_else(|| sysctl::read(path))?;
                    Some((path.to_owned(), value))
                })
                .collect(),
        }
    }

    /// Values given outright: what a test states the node holds.
    pub fn from_values<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            values: values
                .into_iter()
                .map(|(path, value)| (path.to_owned(), value.to_owned()))
                .collect(),
        }
    }

    /// The value of `path`, `None` where it does not exist.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.values.get(path).map(String::as_str)
    }
}

/// The last listing of our nft table with the ruleset generation it was taken at, for one
/// long-lived process in one namespace (`run`): listing it is most of a pass's cost on a busy
/// node, and the kernel counts every committed transaction in the ruleset's generation.
/// Counters in a cached listing are stale, so `show` never uses it.
#[derive(Debug, Default)]
pub struct NftCache(Mutex<Option<NftSnapshot>>);

/// Our nft table as read at one ruleset generation.
#[derive(Debug, Clone)]
struct NftSnapshot {
    generation: u32,
    observed: ObservedNft,
}

/// Our table as the diff compares it, from `cache` while the generation holds.
fn observe_nft(cache: Option<&NftCache>) -> Result<ObservedNft> {
    let read_error = |e: std::io::Error| AgentError::Nft {
        what: format!("reading table inet {} over nfnetlink", nft::TABLE),
        detail: e.to_string(),
    };
    let mut reader = Nfnetlink::open().map_err(read_error)?;
    if let Some(cache) = cache {
        let generation = reader.generation().map_err(read_error)?;
        if let Ok(cached) = cache.0.lock()
            && let Some(snapshot) = cached.as_ref().filter(|s| s.generation == generation)
        {
            return Ok(snapshot.observed.clone());
        }
    }
    let (generation, observed) = reader.observe().map_err(read_error)?;
    let observed = if cache.is_some() {
        observed.indexed()
    } else {
        observed
    };
    if let Some(cache) = cache
        && let Ok(mut cached) = cache.0.lock()
    {
        *cached = Some(NftSnapshot {
            generation,
            observed: observed.clone(),
        });
    }
    Ok(observed)
}

/// Reads everything mirrornet cares about from the kernel.
pub async fn observe(netlink: &Netlink, cache: Option<&NftCache>) -> Result<KernelView> {
    let started = std::time::Instant::now();
    let ms = |since: std::time::Instant| since.elapsed().as_secs_f64() * 1e3;
    let links = netlink.links().await?;
    let links_ms = ms(started);
    let at = std::time::Instant::now();
    let addresses = netlink.addresses(&links).await?;
    let addresses_ms = ms(at);
    let at = std::time::Instant::now();
    let (routes, route_tables, default_routes) = netlink.routes(&links).await?;
    let routes_ms = ms(at);
    let at = std::time::Instant::now();
    let (rules, rule_tables, l3mdev) = netlink.rules().await?;
    let rules_ms = ms(at);
    let at = std::time::Instant::now();
    let nft = observe_nft(cache)?;
    let nft_ms = ms(at);
    let facts = node_facts(&links);
    // What a read of the node costs, by part: the first thing to look at when a pass is slow.
    tracing::debug!(
        links = links.len(),
        routes = routes.len(),
        rules = rules.len(),
        links_ms,
        addresses_ms,
        routes_ms,
        rules_ms,
        nft_ms,
        total_ms = ms(started),
        "observed the node"
    );
    let mut tables_in_use: BTreeSet<u32> = route_tables.into_iter().collect();
    tables_in_use.extend(rule_tables);
    Ok(KernelView {
        links,
        addresses,
        routes,
        rules,
        tables_in_use,
        nft,
        facts,
        l3mdev,
        default_routes,
    })
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
pub fn has_ipv6() -> bool {
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
