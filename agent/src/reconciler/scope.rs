//! Scope: which networks a kernel event concerns. A node with a thousand networks must not
//! re-plan and re-diff all of them because one rule of one network was deleted, so every event
//! is traced to the network that owns the object (by table id, rule priority, interface or VRF
//! name, chain name or jump target) and the pass converges that network alone.
//!
//! When in doubt the answer is the whole node, as before: an event this module cannot trace
//! (a base chain, the node-wide skip rule, a message it cannot decode) runs a full pass.
//! Events about objects no network owns (a pod's veth, a route in a foreign table) run none;
//! the periodic resync is still the backstop for anything missed. Pure: the tests below are
//! the whole mapping.

use std::collections::{BTreeMap, BTreeSet};

use super::{DesiredNetwork, NodeReport};
use crate::nft::nfnetlink::Notification;
use crate::observe::KernelView;
use crate::plan::NetworkPlan;

/// What a kernel notification was about, decoded only as far as ownership needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link appeared, changed or went (its index, and its name where the message has one).
    Link { index: u32, name: Option<String> },
    /// An address on link `index`.
    Address { index: u32 },
    /// A route in `table`, leaving by link `interface` where it has one.
    Route { table: u32, interface: Option<u32> },
    /// An ip rule (table 0 for the node-wide skip rules, `goto` and `nop`, and the l3mdev
    /// rule).
    Rule { table: u32, priority: Option<u32> },
    /// Our nftables table, or another one.
    Nft(Notification),
    /// A netconf message: forwarding or reverse-path filtering of link `index` (negative for
    /// `all` and `default`).
    Netconf { index: i32 },
    /// A polled sysctl no longer holds the value a network needs.
    Sysctl { path: String },
    /// A proxy neighbour entry a network needs on side interface `interface` is gone (polled:
    /// the kernel announces no change of these).
    Proxy { interface: String },
    /// A message this build cannot decode.
    Unknown,
}

/// What a pass must converge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// No network owns what changed.
    #[default]
    Nothing,
    /// These networks, and no other.
    Networks(BTreeSet<String>),
    /// Every network (a spec change, the resync, or an event that could concern any).
    Node,
}

impl Scope {
    /// The scope covering both.
    pub fn merge(self, other: Scope) -> Scope {
        match (self, other) {
            (Scope::Node, _) | (_, Scope::Node) => Scope::Node,
            (Scope::Nothing, s) | (s, Scope::Nothing) => s,
            (Scope::Networks(mut a), Scope::Networks(b)) => {
                a.extend(b);
                Scope::Networks(a)
            }
        }
    }

    /// Only the networks in `live` (desired or held): an event can outlive its network, as
    /// the echo of the writes that removed it does.
    pub fn within(self, live: &BTreeSet<&str>) -> Scope {
        match self {
            Scope::Networks(mut names) => {
                names.retain(|n| live.contains(n.as_str()));
                if names.is_empty() {
                    Scope::Nothing
                } else {
                    Scope::Networks(names)
                }
            }
            other => other,
        }
    }

    fn of(owners: Option<&BTreeSet<String>>) -> Scope {
        owners.map_or(Scope::Nothing, |o| Scope::Networks(o.clone()))
    }

    /// The networks, or `Node` where an owner is unknown.
    fn known_or_node(owners: Option<&BTreeSet<String>>) -> Scope {
        owners.map_or(Scope::Node, |o| Scope::Networks(o.clone()))
    }
}

/// The networks a change of the desired list concerns: those added, removed or changed (spec,
/// generation or ids), and every network the last pass could not program, since what held it
/// back (an interface another network used, a conflict) may be what just went away.
pub fn spec_change(
    before: &[DesiredNetwork],
    after: &[DesiredNetwork],
    last: &NodeReport,
) -> Scope {
    let same = |a: &DesiredNetwork, b: &DesiredNetwork| {
        a.loaded.object.spec == b.loaded.object.spec
            && a.loaded.object.metadata.generation == b.loaded.object.metadata.generation
            && a.allocation == b.allocation
    };
    let before: BTreeMap<&str, &DesiredNetwork> =
        before.iter().map(|n| (n.loaded.name(), n)).collect();
    let after: BTreeMap<&str, &DesiredNetwork> =
        after.iter().map(|n| (n.loaded.name(), n)).collect();
    let mut changed: BTreeSet<String> = before
        .iter()
        .filter(|(name, b)| !after.get(*name).is_some_and(|a| same(a, b)))
        .chain(after.iter().filter(|(name, _)| !before.contains_key(*name)))
        .map(|(name, _)| name.to_string())
        .collect();
    if changed.is_empty() {
        return Scope::Nothing;
    }
    changed.extend(
        last.networks
            .iter()
            .filter(|(name, n)| !n.programmed && after.contains_key(name.as_str()))
            .map(|(name, _)| name.clone()),
    );
    Scope::Networks(changed)
}

/// Which network owns which kernel object, from the plans of the last pass and the view it
/// observed. Interfaces of networks still waiting for them are included, so the link that
/// appears later is traced to the network that waits for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    tables: BTreeMap<u32, BTreeSet<String>>,
    priorities: BTreeMap<u32, BTreeSet<String>>,
    /// Side interfaces and VRF devices, by name.
    links: BTreeMap<String, BTreeSet<String>>,
    /// The same links by index, as the kernel last showed them.
    indexes: BTreeMap<u32, BTreeSet<String>>,
    /// Chains of our table.
    chains: BTreeMap<String, BTreeSet<String>>,
}

impl Owners {
    /// Records that `network` owns what `plan` holds, and the side interfaces it waits for.
    pub fn add(
        &mut self,
        network: &str,
        plan: Option<&NetworkPlan>,
        interfaces: impl IntoIterator<Item = String>,
        view: &KernelView,
    ) {
        let mut links: BTreeSet<String> = interfaces.into_iter().collect();
        if let Some(plan) = plan {
            for side in &plan.sides {
                own(&mut self.tables, side.ids.table, network);
                own(&mut self.priorities, side.ids.rule_priority, network);
                links.insert(side.interface.clone());
            }
            for rule in &plan.rules {
                own(&mut self.priorities, rule.priority, network);
            }
            links.extend(plan.vrfs.iter().map(|v| v.name.clone()));
            for chain in &plan.nft.chains {
                own(&mut self.chains, chain.name.clone(), network);
            }
        }
        for link in links {
            if let Some(index) = view.links.get(&link).map(|l| l.index) {
                own(&mut self.indexes, index, network);
            }
            own(&mut self.links, link, network);
        }
    }

    /// Takes in what `other` records (the owners a pass over some networks found).
    pub fn absorb(&mut self, other: Owners) {
        fn join<K: Ord>(
            into: &mut BTreeMap<K, BTreeSet<String>>,
            from: BTreeMap<K, BTreeSet<String>>,
        ) {
            for (key, networks) in from {
                into.entry(key).or_default().extend(networks);
            }
        }
        join(&mut self.tables, other.tables);
        join(&mut self.priorities, other.priorities);
        join(&mut self.links, other.links);
        join(&mut self.indexes, other.indexes);
        join(&mut self.chains, other.chains);
    }

    /// The networks `event` concerns.
    pub fn scope(&self, event: &KernelEvent) -> Scope {
        match event {
            KernelEvent::Link { index, name } => {
                let by_name = name.as_ref().and_then(|n| self.links.get(n));
                Scope::of(self.indexes.get(index)).merge(Scope::of(by_name))
            }
            KernelEvent::Address { index } => Scope::of(self.indexes.get(index)),
            // A foreign route in a table of ours is ours to look at; so is the node's default
            // route leaving by a side interface (a side the node itself uses is refused).
            KernelEvent::Route { table, interface } => Scope::of(self.tables.get(table))
                .merge(Scope::of(interface.and_then(|i| self.indexes.get(&i)))),
            KernelEvent::Rule { table: 0, .. } => Scope::Node,
            KernelEvent::Rule { table, priority } => Scope::of(self.tables.get(table))
                .merge(Scope::of(priority.and_then(|p| self.priorities.get(&p)))),
            KernelEvent::Nft(notification) => self.nft_scope(notification),
            KernelEvent::Netconf { index } => match u32::try_from(*index) {
                Ok(index) => Scope::of(self.indexes.get(&index)),
                Err(_) => Scope::Node,
            },
            KernelEvent::Sysctl { path } => {
                let link = path
                    .split_once("/conf/")
                    .or_else(|| path.split_once("/neigh/"))
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map(|(link, _)| link);
                Scope::known_or_node(link.and_then(|l| self.links.get(l)))
            }
            KernelEvent::Proxy { interface } => Scope::known_or_node(self.links.get(interface)),
            KernelEvent::Unknown => Scope::Node,
        }
    }

    fn nft_scope(&self, notification: &Notification) -> Scope {
        let ours = |table: &str| table == crate::nft::TABLE;
        match notification {
            Notification::Generation => Scope::Nothing,
            Notification::Table { table }
            | Notification::Set { table, .. }
            | Notification::Chain { table, .. }
            | Notification::Elements { table, .. }
                if !ours(table) =>
            {
                Scope::Nothing
            }
            // Base chains and the maps' own shape are everybody's.
            Notification::Chain { chain, .. } => Scope::known_or_node(self.chains.get(chain)),
            Notification::Elements { targets, .. } if !targets.is_empty() => targets
                .iter()
                .map(|t| Scope::known_or_node(self.chains.get(t)))
                .fold(Scope::Nothing, Scope::merge),
            Notification::Table { .. }
            | Notification::Set { .. }
            | Notification::Elements { .. }
            | Notification::Other => Scope::Node,
        }
    }
}

fn own<K: Ord>(owners: &mut BTreeMap<K, BTreeSet<String>>, key: K, network: &str) {
    owners.entry(key).or_default().insert(network.to_owned());
}

#[cfg(test)]
mod tests {
    use mirrornet_api::allocation::IdRanges;
    use mirrornet_api::file::LoadedNetwork;

    use super::{KernelEvent, Owners, Scope, spec_change};
    use crate::allocate::{self, BackendChoice};
    use crate::memory::Memory;
    use crate::netlink::Link;
    use crate::nft::nfnetlink::Notification;
    use crate::observe::KernelView;
    use crate::reconciler::{DesiredNetwork, NetworkReport, NodeReport};

    /// The seed as network `name` on `inner` and `outer`.
    fn network(name: &str, inner: &str, outer: &str) -> LoadedNetwork {
        let mut object =
            mirrornet_api::file::load_str("seed.yaml", include_str!("../../../examples/seed.yaml"))
                .expect("the seed example loads")
                .remove(0)
                .object;
        object.metadata.name = Some(name.into());
        object.spec.sides[0].interface = inner.into();
        object.spec.sides[1].interface = outer.into();
        let valid = mirrornet_api::validate(&object.spec).expect("valid");
        LoadedNetwork { object, valid }
    }

    /// Networks `a` (eth1, eth2) and `b` (eth3, eth4) programmed under VRF, and `c` waiting
    /// for eth5 and eth6, which the node does not have yet.
    fn owners() -> (Owners, KernelView) {
        let mut view = KernelView::default();
        for (index, name) in ["lo", "eth0", "eth1", "eth2", "eth3", "eth4"]
            .into_iter()
            .enumerate()
        {
            view.links
                .insert(name.into(), Link::up(index as u32 + 1, name));
        }
        view.facts.vrf_available = true;
        let networks = [network("a", "eth1", "eth2"), network("b", "eth3", "eth4")];
        let plans = allocate::plans(
            &view,
            &Memory::default(),
            &IdRanges::default(),
            &networks,
            BackendChoice::Vrf,
        )
        .expect("the two networks plan");
        let mut owners = Owners::default();
        for plan in &plans {
            owners.add(&plan.name, Some(plan), [], &view);
        }
        owners.add("c", None, ["eth5".into(), "eth6".into()], &view);
        (owners, view)
    }

    fn networks(names: &[&str]) -> Scope {
        Scope::Networks(names.iter().map(|n| n.to_string()).collect())
    }

    fn index(view: &KernelView, link: &str) -> u32 {
        view.links[link].index
    }

    #[test]
    fn each_object_is_traced_to_the_network_that_owns_it() {
        let (owners, view) = owners();
        let ours = |chain: &str| Notification::Chain {
            table: "mirrornet".into(),
            chain: chain.into(),
        };
        let cases = [
            // Links: by index, by name (a side interface, a VRF device, one still awaited).
            (
                KernelEvent::Link {
                    index: index(&view, "eth3"),
                    name: Some("eth3".into()),
                },
                networks(&["b"]),
            ),
            (
                KernelEvent::Link {
                    index: 99,
                    name: Some("mnv20000".into()),
                },
                networks(&["a"]),
            ),
            (
                KernelEvent::Link {
                    index: 99,
                    name: Some("eth5".into()),
                },
                networks(&["c"]),
            ),
            // eth2 renamed: the new name is nobody's, the index still a's.
            (
                KernelEvent::Link {
                    index: index(&view, "eth2"),
                    name: Some("renamed".into()),
                },
                networks(&["a"]),
            ),
            (
                KernelEvent::Link {
                    index: 42,
                    name: Some("veth7f3a".into()),
                },
                Scope::Nothing,
            ),
            (
                KernelEvent::Address {
                    index: index(&view, "eth4"),
                },
                networks(&["b"]),
            ),
            (
                KernelEvent::Address {
                    index: index(&view, "eth0"),
                },
                Scope::Nothing,
            ),
            // Routes: by table; the node's default route by the side it leaves by.
            (
                KernelEvent::Route {
                    table: 20002,
                    interface: Some(index(&view, "eth3")),
                },
                networks(&["b"]),
            ),
            (
                KernelEvent::Route {
                    table: 254,
                    interface: Some(index(&view, "eth1")),
                },
                networks(&["a"]),
            ),
            (
                KernelEvent::Route {
                    table: 254,
                    interface: Some(index(&view, "eth0")),
                },
                Scope::Nothing,
            ),
            // Rules: by table, by priority (a foreign rule at one of ours); table 0 is the
            // node-wide skip rules and the l3mdev rule.
            (
                KernelEvent::Rule {
                    table: 20001,
                    priority: Some(501),
                },
                networks(&["a"]),
            ),
            (
                KernelEvent::Rule {
                    table: 7,
                    priority: Some(502),
                },
                networks(&["b"]),
            ),
            (
                KernelEvent::Rule {
                    table: 0,
                    priority: Some(499),
                },
                Scope::Node,
            ),
            (
                KernelEvent::Rule {
                    table: 100,
                    priority: Some(100),
                },
                Scope::Nothing,
            ),
            // nftables: chains by name, elements by the chain they jump to; base chains, the
            // table and the maps themselves are everybody's; other tables are nobody's.
            (KernelEvent::Nft(ours("xlate-dst.b")), networks(&["b"])),
            (KernelEvent::Nft(ours("ids.a")), networks(&["a"])),
            (KernelEvent::Nft(ours("prerouting")), Scope::Node),
            (
                KernelEvent::Nft(Notification::Elements {
                    table: "mirrornet".into(),
                    set: "ingress-v4".into(),
                    targets: vec!["steer.a.inner.outer".into()],
                }),
                networks(&["a"]),
            ),
            (
                KernelEvent::Nft(Notification::Elements {
                    table: "mirrornet".into(),
                    set: "dnat".into(),
                    targets: vec!["xlate-dst.a".into(), "xlate-dst.b".into()],
                }),
                networks(&["a", "b"]),
            ),
            (
                KernelEvent::Nft(Notification::Elements {
                    table: "mirrornet".into(),
                    set: "dnat".into(),
                    targets: vec!["xlate-dst.gone".into()],
                }),
                Scope::Node,
            ),
            (
                KernelEvent::Nft(Notification::Table {
                    table: "mirrornet".into(),
                }),
                Scope::Node,
            ),
            (
                KernelEvent::Nft(Notification::Chain {
                    table: "kube-proxy".into(),
                    chain: "services".into(),
                }),
                Scope::Nothing,
            ),
            (KernelEvent::Nft(Notification::Generation), Scope::Nothing),
            // Sysctls: by the link in their path; `all` is everybody's.
            (
                KernelEvent::Netconf {
                    index: index(&view, "eth2") as i32,
                },
                networks(&["a"]),
            ),
            (KernelEvent::Netconf { index: -1 }, Scope::Node),
            (
                KernelEvent::Sysctl {
                    path: "net/ipv4/conf/eth4/rp_filter".into(),
                },
                networks(&["b"]),
            ),
            (
                KernelEvent::Sysctl {
                    path: "net/ipv6/conf/all/forwarding".into(),
                },
                Scope::Node,
            ),
            (KernelEvent::Unknown, Scope::Node),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(event, expected)| owners.scope(event) != *expected)
            .map(|(event, expected)| {
                format!(
                    "{event:?}: expected {expected:?}, got {:?}",
                    owners.scope(event)
                )
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    fn desired(network: LoadedNetwork) -> DesiredNetwork {
        DesiredNetwork {
            loaded: network,
            allocation: None,
        }
    }

    #[test]
    fn a_spec_change_concerns_what_changed_and_what_could_not_be_programmed() {
        let a = desired(network("a", "eth1", "eth2"));
        let b = desired(network("b", "eth3", "eth4"));
        let c = desired(network("c", "eth5", "eth6"));
        let mut b_suspended = b.clone();
        b_suspended.loaded.object.spec.suspend = true;
        let mut last = NodeReport::default();
        for (name, programmed) in [("a", true), ("b", true), ("c", false)] {
            let mut entry = NetworkReport::new(name, None);
            entry.programmed = programmed;
            last.networks.insert(name.into(), entry);
        }
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(spec_change(&all, &all, &last), Scope::Nothing);
        // b changed: b, and c, which is waiting.
        assert_eq!(
            spec_change(&all, &[a.clone(), b_suspended, c.clone()], &last),
            networks(&["b", "c"])
        );
        // a removed, d added.
        let d = desired(network("d", "eth7", "eth8"));
        assert_eq!(
            spec_change(&all, &[b.clone(), c.clone(), d], &last),
            networks(&["a", "c", "d"])
        );
        // New ids for a.
        let mut a_moved = a.clone();
        a_moved.allocation = Some(mirrornet_api::fixtures::first_allocation());
        assert_eq!(
            spec_change(&all, &[a_moved, b, c], &last),
            networks(&["a", "c"])
        );
    }

    #[test]
    fn what_a_pass_over_some_networks_finds_is_taken_in_and_scopes_merge() {
        let (_, view) = owners();
        let links = |names: [&str; 2]| names.map(String::from);
        // Owners that knew `a`, taking in what a pass over `b` alone found.
        let mut owners = Owners::default();
        owners.add("a", None, links(["eth1", "eth2"]), &view);
        let mut b = Owners::default();
        b.add("b", None, links(["eth3", "eth4"]), &view);
        owners.absorb(b);
        assert_eq!(
            owners.scope(&KernelEvent::Address {
                index: index(&view, "eth1")
            }),
            networks(&["a"])
        );
        assert_eq!(
            owners.scope(&KernelEvent::Address {
                index: index(&view, "eth3")
            }),
            networks(&["b"])
        );
        assert_eq!(
            networks(&["a"])
                .merge(Scope::Nothing)
                .merge(networks(&["b"])),
            networks(&["a", "b"])
        );
        assert_eq!(networks(&["a"]).merge(Scope::Node), Scope::Node);
    }
}
