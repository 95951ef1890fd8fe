//! The kernel state one network needs on one node, computed purely from the spec, the
//! allocated ids and a few facts about the node. Nothing here touches the kernel.
//!
//! ```text
//! ValidNetwork + Allocation + NodeFacts ──plan()──> NetworkPlan
//!   addresses   gateway/len on every side interface, noprefixroute (no route in main)
//!   routes      each side's connected prefix, in that side's table
//!   rules       fwmark <mark>/<mask> -> table of that side   (priority p, ahead of l3mdev)
//!               from <gateway> iif lo -> a side's table       (after main, rp_filter only)
//!   sysctls     per-interface forwarding; where reverse-path filtering is on, loose mode
//!               with the packet mark taken into account (src_valid_mark)
//!   nft         steer: (iif, dst alias) -> mark of the target side + zone of the ingress side
//!               home:  (policy routing) any other packet from a side interface -> its own
//!                      side's mark, so the side's mark rule is its routing domain
//!               dnat:  mark -> alias to subnet;  snat: mark + zone -> subnet to ingress alias
//!               (first packets an answer-only side sends, or `allow` does not name, dropped
//!               before the dnat)
//! ```
//!
//! On-link aliases (`spec.hostPrefix`) add, on every side S, for the alias prefixes of the
//! other sides:
//!
//! ```text
//!   proxies     a proxy neighbour entry per alias address no host on S uses (ARP / NDP)
//!   routes      (IPv4) alias dev lo in S's table: the kernel answers ARP for an address
//!               only if its route leaves by another device
//!   rules       (IPv4, policy routing) iif S -> S's table, for the ARP's unmarked lookup
//!   sysctls     proxy_delay 0 (answer at once); IPv6: proxy_ndp and forwarding on S
//!   nft         a host whose alias is taken on S may not open connections into S
//! ```
//!
//! Every packet a network routes carries a mark, so the node needs no per-interface rules,
//! and one node-wide rule (`fwmark 0/mask goto`, see [`RuleSelector::Unmarked`]) takes the
//! node's other traffic past all mark rules: its cost does not grow with the networks.
//!
//! A suspended network plans its sides and ids and nothing else: the `ids.<network>` chain
//! keeps the ids on the node, and the diff withdraws every other piece as for any spec change.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use mirrornet_api::{Allocation, BackendKind, SideAllocation, ValidNetwork};
use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::nft::NetworkNft;

mod nft;
pub use nft::AllowList;

/// Route and rule protocol number that marks an object as mirrornet's ("M"). `ip route` and
/// `ip rule` show it as `proto 77`.
pub const PROTOCOL: u8 = 77;

/// Priority of the `from <gateway> iif lo` rules: after the main (32766) and default (32767)
/// tables. Only lookups nothing else answers reach them (an ARP request's reverse-path check
/// on a node without a default route), so the node's own traffic never scans them.
pub const LOCAL_SOURCE_PRIORITY: u32 = 32800;

/// Priority of the `iif <side> lookup <side table>` rules of sides with on-link aliases
/// (policy routing): the kernel routes an ARP request's target, unmarked, with the interface
/// it came in on, and answers for a proxied address only if that route leaves by another
/// device. After the skip rule's target, before main: only unmarked packets get here.
pub const ON_LINK_PRIORITY: u32 = 32700;

/// Priority of the kernel's l3mdev rule (`FIB_RULE_PREF`), where it puts it itself.
pub const L3MDEV_PRIORITY: u32 = 1000;

/// Facts about the node that change the plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// `net.ipv4.conf.{all,<interface>}.rp_filter`, keyed `all` and by interface. The kernel
    /// applies the larger of `all` and the interface's value. With either on, a mirrored packet
    /// fails the check: its source is routable only through a side table that the reverse
    /// lookup (mark 0, iif lo) never consults. So the side interfaces get loose mode (2, the
    /// lowest an interface can force when `all` is 1) and `src_valid_mark`, which makes the
    /// reverse lookup carry the mark and find the side table.
    pub ipv4_rp_filter: BTreeMap<String, u8>,
    /// Whether the kernel has `net.ipv6.conf.<if>.force_forwarding` (Linux 6.17+), which
    /// enables IPv6 forwarding per interface instead of for the whole node.
    pub ipv6_force_forwarding: bool,
    /// Whether this kernel can make VRF devices (`vrf` module loaded, loadable or built in).
    pub vrf_available: bool,
    /// Whether this namespace has IPv6 (the kernel then keeps an IPv6 l3mdev rule as well).
    pub ipv6: bool,
    /// What is known of on-link alias addresses, by side interface: `true` where a host uses
    /// the address (the conflict probe of [`crate::neighbours`] found it) or someone else's
    /// proxy entry holds it, `false` where neither. An address missing here was never asked
    /// about, and is not claimed until it is.
    pub aliases: BTreeMap<String, BTreeMap<IpAddr, bool>>,
}

/// One side of a planned network, with its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidePlan {
    pub name: String,
    pub interface: String,
    pub alias: IpNet,
    pub ids: SideAllocation,
    /// May only answer connections (`direction: OneWay`).
    pub answer_only: bool,
}

/// A side's VRF device (backend VRF): the side's routing domain, its interface enslaved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VrfPlan {
    /// `mnv<table>`: short (interface names hold 15 bytes) and unique per table.
    pub name: String,
    pub table: u32,
    /// The side interface enslaved to it.
    pub interface: String,
    /// `mirrornet:<network>/<side>`, so `ip link` tells a user whose device this is.
    pub alias: String,
}

/// Name of the VRF device of the side whose table is `table`.
pub fn vrf_name(table: u32) -> String {
    format!("mnv{table}")
}

/// An address the middleman holds on a side interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    pub interface: String,
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// A route in a side's table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub table: u32,
    pub destination: IpNet,
    pub interface: String,
    pub source: IpAddr,
}

/// An address the node answers address resolution for on a side interface (a proxy
/// neighbour entry, `ip neigh add proxy <address> dev <interface> proto 77`): an on-link
/// alias of another side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Proxy {
    pub interface: String,
    pub address: IpAddr,
}

/// An on-link alias address that a host on the side already uses: the node does not answer
/// for it, so the host it stands for is out of reach from that side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TakenAlias {
    /// The side where the address is taken, and its interface.
    pub side: String,
    pub interface: String,
    pub address: IpAddr,
    /// The side and host the address stands for.
    pub for_side: String,
    pub for_host: IpAddr,
}

impl fmt::Display for TakenAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on side {} ({}) is used by a host there, so {}'s {} is out of reach from it",
            self.address, self.side, self.interface, self.for_side, self.for_host
        )
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy {} dev {}", self.address, self.interface)
    }
}

/// What an ip rule matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleSelector {
    /// `fwmark value/mask`.
    Mark { value: u32, mask: u32 },
    /// `iif name`.
    Iif(String),
    /// `from address iif lo`: the reverse-path check's own lookup (see
    /// [`NodeFacts::ipv4_rp_filter`]).
    LocalSource(IpAddr),
    /// `fwmark 0/mask goto target`, node-wide: a packet without a mirrornet mark jumps past
    /// every mark rule, so the node's own traffic pays one rule whatever the number of
    /// networks (each rule scanned costs about 6.5 ns per packet, measured). Table 0.
    Unmarked { mask: u32, target: u32 },
    /// The no-op rule an [`RuleSelector::Unmarked`] rule jumps to (a goto needs a rule at
    /// its target priority). Table 0.
    SkipTarget,
    /// A rule of ours in a shape this build does not make (an older or newer agent's): only
    /// ever deleted, by priority and table.
    Other,
}

/// An ip rule: selector -> `lookup table`, at `priority`, protocol [`PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub ipv6: bool,
    pub priority: u32,
    pub selector: RuleSelector,
    pub table: u32,
}

/// A sysctl under /proc/sys and the value the network needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SysctlPlan {
    /// Path below /proc/sys, e.g. `net/ipv4/conf/eth1/forwarding`.
    pub path: String,
    pub value: String,
}

/// Everything one network needs on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub name: String,
    pub backend: BackendKind,
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub mark_mask: u32,
    pub sides: Vec<SidePlan>,
    /// Empty unless the backend is VRF.
    pub vrfs: Vec<VrfPlan>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub sysctls: Vec<SysctlPlan>,
    /// The network has on-link aliases (`spec.hostPrefix`).
    pub on_link: bool,
    /// On-link aliases: the addresses the node answers for on each side.
    pub proxies: Vec<Proxy>,
    /// On-link alias addresses left unclaimed because a host uses them.
    pub taken: Vec<TakenAlias>,
    /// On-link alias addresses not claimed yet because nobody has asked the side about them
    /// (the first probe waits for the node's own address on the side).
    pub unprobed: usize,
    pub nft: NetworkNft,
    /// Interfaces the spec allows even though the node itself uses them.
    pub take_over: std::collections::BTreeSet<String>,
    /// `spec.suspend`: the node holds only the ids, so the side interfaces may be absent,
    /// down or used by the node without that being an error.
    pub suspended: bool,
}

impl NetworkPlan {
    /// The ids the plan was made with.
    pub fn allocation(&self) -> Allocation {
        Allocation {
            mark_mask: self.mark_mask,
            sides: self.sides.iter().map(|s| s.ids.clone()).collect(),
        }
    }
}

impl fmt::Display for RuleSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSelector::Mark { value, mask } => write!(f, "fwmark {value:#x}/{mask:#x}"),
            RuleSelector::Iif(name) => write!(f, "iif {name}"),
            RuleSelector::LocalSource(a) => write!(f, "from {a} iif lo"),
            RuleSelector::Unmarked { mask, target } => {
                write!(f, "fwmark 0x0/{mask:#x} goto {target}")
            }
            RuleSelector::SkipTarget => write!(f, "nop"),
            RuleSelector::Other => write!(f, "(unrecognised selector)"),
        }
    }
}

/// Computes the plan of one network.
pub fn plan(
    name: &str,
    network: &ValidNetwork,
    allocation: &Allocation,
    backend: BackendKind,
    facts: &NodeFacts,
) -> Result<NetworkPlan, PlanError> {
    let vrf = backend == BackendKind::Vrf;
    if vrf && !facts.vrf_available {
        return Err(PlanError::BackendUnavailable {
            network: name.into(),
            backend,
            why:
                "this kernel cannot create VRF devices (CONFIG_NET_VRF); use PolicyRouting or Auto"
                    .into(),
        });
    }
    let ipv6 = network.is_ipv6();
    let mut sides = Vec::new();
    for side in &network.sides {
        let ids = allocation
            .sides
            .iter()
            .find(|s| s.side == side.name.as_str())
            .ok_or_else(|| PlanError::MissingIds {
                network: name.into(),
                side: side.name.to_string(),
            })?;
        sides.push(SidePlan {
            name: side.name.to_string(),
            interface: side.interface.to_string(),
            alias: side.alias,
            ids: ids.clone(),
            answer_only: network.answer_only.contains(side.name.as_str()),
        });
    }

    if network.suspend {
        return Ok(NetworkPlan {
            name: name.into(),
            backend,
            subnet: network.subnet,
            gateway: network.gateway,
            mark_mask: allocation.mark_mask,
            nft: NetworkNft {
                chains: vec![nft::ids_chain(name, allocation.mark_mask, &sides)],
                elements: Vec::new(),
            },
            sides,
            vrfs: Vec::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            rules: Vec::new(),
            sysctls: Vec::new(),
            on_link: network.on_link(),
            proxies: Vec::new(),
            taken: Vec::new(),
            unprobed: 0,
            take_over: Default::default(),
            suspended: true,
        });
    }

    let rp = |key: &str| facts.ipv4_rp_filter.get(key).copied().unwrap_or(0);
    let vrfs: Vec<VrfPlan> = if vrf {
        sides
            .iter()
            .map(|s| VrfPlan {
                name: vrf_name(s.ids.table),
                table: s.ids.table,
                interface: s.interface.clone(),
                alias: format!("mirrornet:{name}/{}", s.name),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    let mut rules = Vec::new();
    let mut sysctls = Vec::new();
    for side in &sides {
        addresses.push(Address {
            interface: side.interface.clone(),
            address: network.gateway,
            prefix_len: network.subnet.prefix_len(),
        });
        routes.push(Route {
            table: side.ids.table,
            destination: network.subnet,
            interface: side.interface.clone(),
            source: network.gateway,
        });
        // Mark rules carry a packet that entered one side into the table of the side it is
        // for: another side (steered to its alias) or its own (every other packet, marked
        // `home` by nft; with VRF the l3mdev rule does that instead).
        rules.push(Rule {
            ipv6,
            priority: side.ids.rule_priority,
            selector: RuleSelector::Mark {
                value: side.ids.mark,
                mask: allocation.mark_mask,
            },
            table: side.ids.table,
        });
        // With VRF, the forwarding decision is taken on the VRF device the packet now
        // belongs to, so it needs forwarding too.
        let forwarding_devices: Vec<String> = if vrf {
            vec![side.interface.clone(), vrf_name(side.ids.table)]
        } else {
            vec![side.interface.clone()]
        };
        if ipv6 {
            if facts.ipv6_force_forwarding {
                for device in &forwarding_devices {
                    sysctls.push(SysctlPlan {
                        path: format!("net/ipv6/conf/{device}/force_forwarding"),
                        value: "1".into(),
                    });
                }
            }
        } else {
            for device in &forwarding_devices {
                sysctls.push(SysctlPlan {
                    path: format!("net/ipv4/conf/{device}/forwarding"),
                    value: "1".into(),
                });
            }
            // Stable across runs: once set to 2 the interface keeps the condition true.
            if !vrf && rp("all").max(rp(&side.interface)) != 0 {
                sysctls.push(SysctlPlan {
                    path: format!("net/ipv4/conf/{}/rp_filter", side.interface),
                    value: "2".into(),
                });
                sysctls.push(SysctlPlan {
                    path: format!("net/ipv4/conf/{}/src_valid_mark", side.interface),
                    value: "1".into(),
                });
            }
        }
    }
    let rp_on = sides.iter().any(|s| rp("all").max(rp(&s.interface)) != 0);
    if !ipv6
        && rp_on
        && let Some(first) = sides.first()
    {
        // With reverse-path filtering on, the check of an ARP request for the gateway address
        // looks up the sender from the gateway address with iif lo and no mark (ARP never
        // crosses nft's inet hooks, so it has no home mark), which no mark rule matches; loose
        // mode only needs some route. Any side table has one: the check passes. After main:
        // a node with a default route passes it there already.
        rules.push(Rule {
            ipv6,
            priority: LOCAL_SOURCE_PRIORITY,
            selector: RuleSelector::LocalSource(network.gateway),
            table: first.ids.table,
        });
    }
    if ipv6 && !facts.ipv6_force_forwarding {
        // Kernels before 6.17 forward IPv6 only when it is enabled for the whole node.
        sysctls.push(SysctlPlan {
            path: "net/ipv6/conf/all/forwarding".into(),
            value: "1".into(),
        });
    }

    let mut proxies = Vec::new();
    let mut taken = Vec::new();
    let mut unprobed = 0;
    if network.on_link() {
        for claim in on_link_claims(network) {
            let Some(side) = sides.iter().find(|s| s.interface == claim.proxy.interface) else {
                continue;
            };
            let known = facts
                .aliases
                .get(&claim.proxy.interface)
                .and_then(|a| a.get(&claim.proxy.address));
            let Some(&used) = known else {
                unprobed += 1;
                continue;
            };
            if used {
                taken.extend(
                    claim
                        .stands_for
                        .iter()
                        .map(|(for_side, for_host)| TakenAlias {
                            side: side.name.clone(),
                            interface: side.interface.clone(),
                            address: claim.proxy.address,
                            for_side: for_side.clone(),
                            for_host: *for_host,
                        }),
                );
            } else {
                proxies.push(claim.proxy);
            }
        }
        for side in &sides {
            if ipv6 {
                for (path, value) in [
                    (format!("net/ipv6/conf/{}/proxy_ndp", side.interface), "1"),
                    // Neighbour solicitations are answered for proxied addresses only on an
                    // interface that forwards (force_forwarding does not count).
                    (format!("net/ipv6/conf/{}/forwarding", side.interface), "1"),
                    (
                        format!("net/ipv6/neigh/{}/proxy_delay", side.interface),
                        "0",
                    ),
                ] {
                    sysctls.push(SysctlPlan {
                        path,
                        value: value.into(),
                    });
                }
                continue;
            }
            // Without it, a broadcast request is answered after up to 0.8 s.
            sysctls.push(SysctlPlan {
                path: format!("net/ipv4/neigh/{}/proxy_delay", side.interface),
                value: "0".into(),
            });
            let mut aliases: Vec<IpNet> = sides
                .iter()
                .filter(|t| t.name != side.name)
                .map(|t| t.alias)
                .collect();
            aliases.sort();
            aliases.dedup();
            for alias in aliases {
                routes.push(Route {
                    table: side.ids.table,
                    destination: alias,
                    interface: "lo".into(),
                    source: network.gateway,
                });
            }
            if !vrf {
                rules.push(Rule {
                    ipv6,
                    priority: ON_LINK_PRIORITY,
                    selector: RuleSelector::Iif(side.interface.clone()),
                    table: side.ids.table,
                });
            }
        }
    }

    let nft = nft::network(
        name,
        network.hosts,
        allocation.mark_mask,
        &sides,
        &network.allow,
        !vrf,
        &taken,
    );
    Ok(NetworkPlan {
        name: name.into(),
        backend,
        subnet: network.subnet,
        gateway: network.gateway,
        mark_mask: allocation.mark_mask,
        sides,
        vrfs,
        addresses,
        routes,
        rules,
        sysctls,
        on_link: network.on_link(),
        proxies,
        taken,
        unprobed,
        nft,
        take_over: network
            .sides
            .iter()
            .filter(|s| s.take_over_node_interface)
            .map(|s| s.interface.to_string())
            .collect(),
        suspended: false,
    })
}

/// One address the node answers for on one side, and the hosts of other sides it stands for
/// (two sides may share an alias prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub proxy: Proxy,
    pub stands_for: Vec<(String, IpAddr)>,
}

/// Every address an on-link network answers for, on every side: each address of each other
/// side's alias prefix, except those standing for no host (the subnet's network address, and
/// its broadcast address in IPv4) and the gateway address. What the conflict probe checks
/// before any of them is claimed. Pure.
pub fn on_link_claims(network: &ValidNetwork) -> Vec<Claim> {
    let mut claims = Vec::new();
    if !network.on_link() {
        return claims;
    }
    // No host has these: IPv4's network and broadcast addresses, IPv6's subnet-router
    // anycast address.
    let reserved: Vec<IpAddr> = match network.subnet {
        IpNet::V4(net) => vec![net.network().into(), net.broadcast().into()],
        IpNet::V6(net) => vec![net.network().into()],
    };
    for side in &network.sides {
        let mut by_address: BTreeMap<IpAddr, Vec<(String, IpAddr)>> = BTreeMap::new();
        for other in network.sides.iter().filter(|o| o.name != side.name) {
            for (offset, address) in addresses(other.alias).enumerate() {
                let host = nth(network.hosts, offset);
                if reserved.contains(&host)
                    || reserved.contains(&address)
                    || address == network.gateway
                {
                    continue;
                }
                by_address
                    .entry(address)
                    .or_default()
                    .push((other.name.to_string(), host));
            }
        }
        claims.extend(by_address.into_iter().map(|(address, stands_for)| Claim {
            proxy: Proxy {
                interface: side.interface.to_string(),
                address,
            },
            stands_for,
        }));
    }
    claims
}

/// Every address of `net`, first to last.
fn addresses(net: IpNet) -> impl Iterator<Item = IpAddr> {
    let count = 1u128 << (net.max_prefix_len() - net.prefix_len());
    (0..count).map(move |i| nth(net, i as usize))
}

/// The `n`th address of `net`.
fn nth(net: IpNet, n: usize) -> IpAddr {
    match net {
        IpNet::V4(v4) => std::net::Ipv4Addr::from(u32::from(v4.network()) + n as u32).into(),
        IpNet::V6(v6) => std::net::Ipv6Addr::from(u128::from(v6.network()) + n as u128).into(),
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} dev {}",
            self.address, self.prefix_len, self.interface
        )
    }
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
    use mirrornet_api::allocation::{Allocator, IdRanges};

    fn seed() -> (ValidNetwork, Allocation) {
        let objs =
            mirrornet_api::file::load_str("seed", include_str!("../../../examples/seed.yaml"))
                .unwrap();
        let valid = objs[0].valid.clone();
        let allocation = Allocator::new(IdRanges::default())
            .allocate("plant-twin", &valid)
            .unwrap();
        (valid, allocation)
    }

    #[test]
    fn seed_plan_has_the_recipes_pieces() {
        let (valid, allocation) = seed();
        let p = plan(
            "plant-twin",
            &valid,
            &allocation,
            BackendKind::PolicyRouting,
            &NodeFacts::default(),
        )
        .unwrap();
        assert_eq!(p.addresses.len(), 2);
        assert_eq!(p.routes.len(), 2);
        // One mark rule per side and nothing per interface: each side's own traffic is marked
        // by nft (`home`), so its mark rule is its routing domain.
        assert_eq!(p.rules.len(), 2);
        assert!(
            p.rules
                .iter()
                .all(|r| matches!(r.selector, RuleSelector::Mark { .. }))
        );
        assert!(p.nft.elements.iter().any(|e| e.map == "home"));
        assert_eq!(
            p.sysctls,
            vec![
                SysctlPlan {
                    path: "net/ipv4/conf/eth1/forwarding".into(),
                    value: "1".into()
                },
                SysctlPlan {
                    path: "net/ipv4/conf/eth2/forwarding".into(),
                    value: "1".into()
                },
            ]
        );
    }

    #[test]
    fn a_suspended_network_plans_its_ids_and_nothing_else() {
        let (mut valid, allocation) = seed();
        let running = plan(
            "plant-twin",
            &valid,
            &allocation,
            BackendKind::Vrf,
            &NodeFacts {
                vrf_available: true,
                ..Default::default()
            },
        )
        .unwrap();
        valid.suspend = true;
        let p = plan(
            "plant-twin",
            &valid,
            &allocation,
            BackendKind::Vrf,
            &NodeFacts {
                vrf_available: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(p.suspended);
        assert_eq!(p.sides, running.sides, "the same sides with the same ids");
        assert!(p.vrfs.is_empty() && p.addresses.is_empty() && p.routes.is_empty());
        assert!(p.rules.is_empty() && p.sysctls.is_empty() && p.nft.elements.is_empty());
        let chains: Vec<&str> = p.nft.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(chains, ["ids.plant-twin"]);
        assert_eq!(p.nft.chains[0], running.nft.chains[0]);
    }

    fn on_link() -> (ValidNetwork, Allocation) {
        let objs = mirrornet_api::file::load_str(
            "on-link",
            include_str!("../../../examples/on-link.yaml"),
        )
        .unwrap();
        let valid = objs[0].valid.clone();
        let allocation = Allocator::new(IdRanges::default())
            .allocate("plant-twin-on-link", &valid)
            .unwrap();
        (valid, allocation)
    }

    /// Facts where the probe found every alias address of `valid` free, but `taken`.
    fn probed(valid: &ValidNetwork, taken: &[(&str, &str)]) -> NodeFacts {
        let mut aliases: BTreeMap<String, BTreeMap<IpAddr, bool>> = BTreeMap::new();
        for c in on_link_claims(valid) {
            let used = taken.iter().any(|(i, a)| {
                *i == c.proxy.interface && a.parse::<IpAddr>().unwrap() == c.proxy.address
            });
            aliases
                .entry(c.proxy.interface)
                .or_default()
                .insert(c.proxy.address, used);
        }
        NodeFacts {
            vrf_available: true,
            aliases,
            ..Default::default()
        }
    }

    #[test]
    fn on_link_aliases_are_answered_for_on_every_side_and_routed_away_from_it() {
        let (valid, allocation) = on_link();
        // Nothing is claimed before the sides were asked.
        let unasked = NodeFacts {
            vrf_available: true,
            ..Default::default()
        };
        let p = plan("n", &valid, &allocation, BackendKind::Vrf, &unasked).unwrap();
        assert!(p.proxies.is_empty());
        assert_eq!(p.unprobed, 2 * 63);
        for backend in [BackendKind::PolicyRouting, BackendKind::Vrf] {
            let facts = probed(&valid, &[]);
            let p = plan("n", &valid, &allocation, backend, &facts).unwrap();
            // Both sides share 192.168.2.128/26: each side answers for its addresses but
            // .128, which stands for the subnet's own network address.
            assert_eq!(p.proxies.len(), 2 * 63);
            assert_eq!(p.unprobed, 0);
            for interface in ["eth1", "eth2"] {
                let on: Vec<_> = p
                    .proxies
                    .iter()
                    .filter(|x| x.interface == interface)
                    .collect();
                assert_eq!(on.len(), 63);
                assert_eq!(on[0].address.to_string(), "192.168.2.129");
                assert_eq!(on[62].address.to_string(), "192.168.2.191");
            }
            assert!(p.taken.is_empty());
            // The ARP answer needs the alias routed by another device in the side's table.
            for side in &p.sides {
                assert!(p.routes.contains(&Route {
                    table: side.ids.table,
                    destination: "192.168.2.128/26".parse().unwrap(),
                    interface: "lo".into(),
                    source: valid.gateway,
                }));
            }
            let iif_rules = p
                .rules
                .iter()
                .filter(|r| matches!(r.selector, RuleSelector::Iif(_)))
                .count();
            let expected = if backend == BackendKind::Vrf { 0 } else { 2 };
            assert_eq!(iif_rules, expected, "{backend}: {:#?}", p.rules);
            assert!(p.sysctls.contains(&SysctlPlan {
                path: "net/ipv4/neigh/eth1/proxy_delay".into(),
                value: "0".into()
            }));
        }
    }

    #[test]
    fn a_taken_alias_address_is_not_answered_for_and_its_host_may_not_open_connections() {
        let (valid, allocation) = on_link();
        let taken: IpAddr = "192.168.2.139".parse().unwrap();
        let facts = probed(&valid, &[("eth1", "192.168.2.139")]);
        let p = plan("n", &valid, &allocation, BackendKind::PolicyRouting, &facts).unwrap();
        assert_eq!(p.proxies.len(), 2 * 63 - 1);
        assert!(!p.proxies.contains(&Proxy {
            interface: "eth1".into(),
            address: taken
        }));
        assert_eq!(
            p.taken,
            [TakenAlias {
                side: "inner".into(),
                interface: "eth1".into(),
                address: taken,
                for_side: "outer".into(),
                for_host: "192.168.2.11".parse().unwrap(),
            }]
        );
        // outer's .11 would appear on inner's side as the squatter: its connections into inner
        // are dropped before the translation.
        let snat = p
            .nft
            .chains
            .iter()
            .find(|c| c.name == "xlate-src.n.inner")
            .unwrap();
        assert_eq!(snat.rules.len(), 2);
        assert!(snat.rules[0].expr.to_string().contains("192.168.2.11"));
        assert!(snat.rules[0].expr.to_string().contains("drop"));
    }

    #[test]
    fn strict_rp_filter_is_relaxed_to_loose_on_side_interfaces_only() {
        let (valid, allocation) = seed();
        let facts = NodeFacts {
            ipv4_rp_filter: [("all".to_owned(), 1)].into(),
            ..Default::default()
        };
        let p = plan(
            "plant-twin",
            &valid,
            &allocation,
            BackendKind::PolicyRouting,
            &facts,
        )
        .unwrap();
        let rp: Vec<_> = p
            .sysctls
            .iter()
            .filter(|s| s.path.ends_with("rp_filter"))
            .map(|s| s.path.as_str())
            .collect();
        assert_eq!(
            rp,
            [
                "net/ipv4/conf/eth1/rp_filter",
                "net/ipv4/conf/eth2/rp_filter"
            ]
        );
        assert!(p.sysctls.contains(&SysctlPlan {
            path: "net/ipv4/conf/eth1/src_valid_mark".into(),
            value: "1".into()
        }));
    }

    #[test]
    fn an_interface_level_rp_filter_counts_too() {
        let (valid, allocation) = seed();
        let facts = NodeFacts {
            ipv4_rp_filter: [("all".to_owned(), 0), ("eth2".to_owned(), 1)].into(),
            ..Default::default()
        };
        let p = plan(
            "plant-twin",
            &valid,
            &allocation,
            BackendKind::PolicyRouting,
            &facts,
        )
        .unwrap();
        let rp: Vec<_> = p
            .sysctls
            .iter()
            .filter(|s| !s.path.ends_with("/forwarding"))
            .map(|s| s.path.as_str())
            .collect();
        assert_eq!(
            rp,
            [
                "net/ipv4/conf/eth2/rp_filter",
                "net/ipv4/conf/eth2/src_valid_mark"
            ]
        );
    }
}
