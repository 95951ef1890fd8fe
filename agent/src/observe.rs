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
use std::sync::{Arc, Mutex};

use mirrornet_api::{Allocation, SideAllocation};

use crate::error::{AgentError, Result};
use crate::netlink::{DefaultRoute, L3mdevRules, Link, Netlink, ObservedAddress, ObservedProxy};
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
    /// Proxy neighbour entries, ours and others'.
    pub proxies: Vec<ObservedProxy>,
    /// Every routing table some route or foreign rule uses.
    pub tables_in_use: BTreeSet<u32>,
    /// Shared with the `run` loop's cache: a copy per pass was a tenth of a repair.
    pub nft: Arc<ObservedNft>,
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

    /// Brings the view up to date with one rtnetlink notification, as far as the notification
    /// says it all: mirrornet's own routes and rules, addresses, and routes and rules that only
    /// add a table in use. Returns false where it cannot (a link changed, whose routes the
    /// kernel may have flushed without a word; the node's default route; the l3mdev rule; a
    /// foreign object gone, which may have been the last user of its table): the view must then
    /// be read again.
    ///
    /// Why: reading two thousand links, addresses and routes was two thirds of a repair at a
    /// thousand networks, and a repair needs only what the event itself says changed.
    pub fn patch(&mut self, message: &netlink_packet_route::RouteNetlinkMessage) -> bool {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::RouteNetlinkMessage as M;
        // One link looked up per notification, not a map of all of them built for each.
        let links = &self.links;
        let name_of = |index: u32| {
            links
                .values()
                .find(|l| l.index == index)
                .map(|l| l.name.clone())
        };
        match message {
            M::NewRoute(m) | M::DelRoute(m) => {
                let added = matches!(message, M::NewRoute(_));
                let table = crate::netlink::route_table(m);
                if let Some(route) = crate::netlink::our_route(m, &name_of) {
                    if added {
                        if !self.routes.contains(&route) {
                            self.routes.push(route);
                        }
                        self.tables_in_use.insert(table);
                    } else {
                        self.routes.retain(|r| *r != route);
                    }
                    return true;
                }
                if m.header.protocol
                    == netlink_packet_route::route::RouteProtocol::Other(plan::PROTOCOL)
                {
                    return false;
                }
                match table {
                    // The local table: the kernel's own routes of every address.
                    255 => true,
                    254 => m.header.destination_prefix_length != 0,
                    _ if added => {
                        self.tables_in_use.insert(table);
                        true
                    }
                    _ => false,
                }
            }
            M::NewRule(m) | M::DelRule(m) => {
                let added = matches!(message, M::NewRule(_));
                let ipv6 = m.header.family == AddressFamily::Inet6;
                match crate::netlink::rule_of(m, ipv6) {
                    crate::netlink::RuleSeen::Ours(rule) => {
                        if added {
                            if !self.rules.contains(&rule) {
                                self.rules.push(rule);
                            }
                        } else {
                            self.rules.retain(|r| *r != rule);
                        }
                        true
                    }
                    crate::netlink::RuleSeen::Foreign(table) if added => {
                        self.tables_in_use.insert(table);
                        true
                    }
                    _ => false,
                }
            }
            M::NewAddress(m) | M::DelAddress(m) => {
                let Some(address) = crate::netlink::address_of(m, &name_of) else {
                    return false;
                };
                let same = |a: &ObservedAddress| {
                    a.interface == address.interface
                        && a.address == address.address
                        && a.prefix_len == address.prefix_len
                };
                self.addresses.retain(|a| !same(a));
                if matches!(message, M::NewAddress(_)) {
                    self.addresses.push(address);
                }
                true
            }
            _ => false,
        }
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
    observed: Arc<ObservedNft>,
}

/// Our table as the diff compares it, from `cache` while the generation holds.
pub fn observe_nft(cache: Option<&NftCache>) -> Result<Arc<ObservedNft>> {
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
    let observed = Arc::new(if cache.is_some() {
        observed.indexed()
    } else {
        observed
    });
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
    let (links, links_ms) = timed(netlink.links()).await?;
    let (addresses, addresses_ms) = timed(netlink.addresses(&links)).await?;
    let ((routes, route_tables, default_routes), routes_ms) = timed(netlink.routes(&links)).await?;
    let ((rules, rule_tables, l3mdev), rules_ms) = timed(netlink.rules()).await?;
    let (proxies, proxies_ms) = timed(netlink.proxies(&links)).await?;
    let (nft, nft_ms) = timed(async { observe_nft(cache) }).await?;
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
        proxies_ms,
        nft_ms,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "observed the node"
    );
    let mut tables_in_use: BTreeSet<u32> = route_tables.into_iter().collect();
    tables_in_use.extend(rule_tables);
    Ok(KernelView {
        links,
        addresses,
        routes,
        rules,
        proxies,
        tables_in_use,
        nft,
        facts,
        l3mdev,
        default_routes,
    })
}

/// `read`'s result and how long it took, in milliseconds.
async fn timed<T, E>(
    read: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<(T, f64), E> {
    let started = std::time::Instant::now();
    let value = read.await?;
    Ok((value, started.elapsed().as_secs_f64() * 1e3))
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
        aliases: BTreeMap::new(),
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

#[cfg(test)]
mod tests {
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::RouteNetlinkMessage as M;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};

    use super::KernelView;
    use crate::netlink::Link;
    use crate::plan::PROTOCOL;

    fn view() -> KernelView {
        let mut view = KernelView::default();
        view.links.insert("eth1".into(), Link::up(3, "eth1"));
        view
    }

    /// A route to 192.168.2.0/24 via link 3 in `table`, by `protocol`.
    fn route(table: u32, protocol: RouteProtocol, prefix: u8) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.protocol = protocol;
        m.header.destination_prefix_length = prefix;
        m.attributes = vec![
            RouteAttribute::Table(table),
            RouteAttribute::Oif(3),
            RouteAttribute::Destination(RouteAddress::Inet([192, 168, 2, 0].into())),
        ];
        m
    }

    #[test]
    fn notifications_keep_the_view_or_say_it_must_be_read_again() {
        let mut v = view();
        let ours = route(20000, RouteProtocol::Other(PROTOCOL), 24);
        assert!(v.patch(&M::NewRoute(ours.clone())));
        assert_eq!(v.routes.len(), 1);
        assert_eq!(v.routes[0].interface, "eth1");
        assert!(v.tables_in_use.contains(&20000));
        // The same notification twice (a read raced it) changes nothing.
        assert!(v.patch(&M::NewRoute(ours.clone())));
        assert_eq!(v.routes.len(), 1);
        assert!(v.patch(&M::DelRoute(ours)));
        assert!(v.routes.is_empty());
        // A foreign route adds a table in use; its deletion may free it: read again.
        let foreign = route(300, RouteProtocol::Static, 24);
        assert!(v.patch(&M::NewRoute(foreign.clone())));
        assert!(v.tables_in_use.contains(&300));
        assert!(!v.patch(&M::DelRoute(foreign)));
        // The kernel's local routes of an address say nothing we keep.
        assert!(v.patch(&M::DelRoute(route(255, RouteProtocol::Kernel, 32))));
        // The node's default route, and any link: read again.
        assert!(!v.patch(&M::NewRoute(route(254, RouteProtocol::Static, 0))));
        assert!(v.patch(&M::NewRoute(route(254, RouteProtocol::Kernel, 24))));
        assert!(!v.patch(&M::NewLink(LinkMessage::default())));
    }
}
