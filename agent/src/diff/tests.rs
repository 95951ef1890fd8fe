//! Table tests of the diff: a node built in memory, the seed planned on it with
//! [`crate::plan::plan`], and the change asserted as `plan` prints it. A change is carried
//! out on the in-memory node step by step (as the kernel would, flushing routes when a link
//! leaves a VRF), so a second diff shows what the first one left undone. The e2e suites prove
//! the same steps on a real kernel.

use std::collections::{BTreeMap, BTreeSet};

use mirrornet_api::allocation::IdRanges;
use mirrornet_api::file::LoadedNetwork;
use serde_json::Value;

use crate::allocate::{self, BackendChoice};
use crate::memory::Memory;
use crate::netlink::{DefaultRoute, L3mdevRules, Link, ObservedAddress, ObservedProxy};
use crate::nft::ObservedNft;
use crate::observe::{KernelView, Sysctls};
use crate::plan::{L3MDEV_PRIORITY, NetworkPlan, NodeFacts, Rule, RuleSelector};
use crate::step::{Changes, Step};

/// A node in memory: what the kernel holds, the sysctls, the agent's memory.
struct Node {
    view: KernelView,
    sysctls: BTreeMap<String, String>,
    memory: Memory,
}

impl Node {
    /// The seed's gateway before mirrornet: eth0 carries the node's own address and default
    /// route, eth1 and eth2 are the sides; nothing forwards.
    fn fresh(vrf_available: bool) -> Self {
        let links: BTreeMap<String, Link> = [
            Link::up(1, "lo"),
            Link::up(2, "eth0"),
            Link::up(3, "eth1"),
            Link::up(4, "eth2"),
        ]
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
        let sysctls = ["eth1", "eth2"]
            .iter()
            .flat_map(|i| {
                [
                    (format!("net/ipv4/conf/{i}/forwarding"), "0".to_owned()),
                    (format!("net/ipv6/conf/{i}/forwarding"), "0".to_owned()),
                ]
            })
            .chain([("net/ipv6/conf/all/forwarding".to_owned(), "0".to_owned())])
            .collect();
        Self {
            view: KernelView {
                links,
                addresses: vec![ObservedAddress {
                    interface: "eth0".into(),
                    address: "10.0.0.5".parse().unwrap(),
                    prefix_len: 24,
                    noprefixroute: false,
                    ours: false,
                }],
                routes: Vec::new(),
                rules: Vec::new(),
                proxies: Vec::new(),
                tables_in_use: BTreeSet::from([254, 255]),
                nft: Default::default(),
                facts: NodeFacts {
                    ipv4_rp_filter: BTreeMap::from([("all".into(), 0), ("default".into(), 0)]),
                    ipv6_force_forwarding: false,
                    vrf_available,
                    ipv6: true,
                    aliases: BTreeMap::new(),
                },
                l3mdev: L3mdevRules::default(),
                default_routes: BTreeSet::from([DefaultRoute {
                    interface: "eth0".into(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                }]),
            },
            sysctls,
            memory: Memory::default(),
        }
    }

    fn plans(&self, networks: &[LoadedNetwork], choice: BackendChoice) -> Vec<NetworkPlan> {
        allocate::plans(
            &self.view,
            &self.memory,
            &IdRanges::default(),
            networks,
            choice,
        )
        .expect("the seed plans")
    }

    fn diff(&self, plans: &[NetworkPlan], remove: &[String]) -> Changes {
        let sysctls = Sysctls::from_values(
            self.sysctls
                .iter()
                .map(|(path, value)| (path.as_str(), value.as_str())),
        );
        super::changes(&self.view, &sysctls, plans, remove, &self.memory)
    }

    /// The change to `networks` (and without `remove`), as `plan` prints it; the node then
    /// holds it.
    fn apply(
        &mut self,
        networks: &[LoadedNetwork],
        choice: BackendChoice,
        remove: &[&str],
    ) -> String {
        let plans = self.plans(networks, choice);
        let remove: Vec<String> = remove.iter().map(|s| s.to_string()).collect();
        let changes = self.diff(&plans, &remove);
        let specs: Vec<_> = networks.iter().map(|n| &n.object.spec).collect();
        self.memory = if changes.is_empty() {
            self.memory.recording(&plans, &specs, &remove)
        } else {
            self.memory
                .intent(&changes, &plans, &specs)
                .done(&changes, &plans, &remove)
        };
        for step in &changes.steps {
            self.carry_out(step);
        }
        shown(&changes)
    }

    /// One step, as the kernel carries it out.
    fn carry_out(&mut self, step: &Step) {
        let view = &mut self.view;
        match step {
            Step::AddAddress { address: a, .. } => view.addresses.push(ObservedAddress {
                interface: a.interface.clone(),
                address: a.address,
                prefix_len: a.prefix_len,
                noprefixroute: true,
                ours: true,
            }),
            Step::DeleteAddress { address: a, .. } => view.addresses.retain(|o| {
                !(o.ours
                    && o.interface == a.interface
                    && o.address == a.address
                    && o.prefix_len == a.prefix_len)
            }),
            Step::AddRoute { route, .. } => {
                view.tables_in_use.insert(route.table);
                view.routes.push(route.clone());
            }
            Step::DeleteRoute { route, .. } => view.routes.retain(|r| r != route),
            Step::AddRule { rule, .. } => view.rules.push(rule.clone()),
            Step::AddProxy { proxy, .. } => view.proxies.push(ObservedProxy {
                proxy: proxy.clone(),
                ours: true,
            }),
            Step::DeleteProxy { proxy, .. } => view.proxies.retain(|p| p.proxy != *proxy),
            Step::DeleteRule { rule, .. } => view.rules.retain(|r| r != rule),
            Step::SetSysctl { path, value, .. } => {
                self.sysctls.insert(path.clone(), value.clone());
            }
            // A device gone took its settings with it.
            Step::RestoreSysctl { path, value, .. } => {
                if let Some(current) = self.sysctls.get_mut(path) {
                    *current = value.clone();
                }
            }
            Step::AddVrf { vrf, .. } => {
                let index = view.links.values().map(|l| l.index).max().unwrap_or(0) + 1;
                let mut device = Link::up(index, &vrf.name);
                device.vrf_table = Some(vrf.table);
                device.alias = Some(vrf.alias.clone());
                view.links.insert(vrf.name.clone(), device);
            }
            Step::DeleteVrf { vrf, .. } => {
                let settings = format!("/conf/{}/", vrf.name);
                self.sysctls.retain(|path, _| !path.contains(&settings));
                if let Some(gone) = view.links.remove(&vrf.name) {
                    for l in view.links.values_mut() {
                        if l.controller == Some(gone.index) {
                            l.controller = None;
                        }
                    }
                }
            }
            Step::Enslave { interface, vrf, .. } => {
                let controller = view.links[vrf].index;
                view.links.get_mut(interface).unwrap().controller = Some(controller);
                // Moving a link between routing domains cycles it: its routes are flushed.
                view.routes.retain(|r| r.interface != *interface);
            }
            Step::Release { interface, .. } => {
                view.links.get_mut(interface).unwrap().controller = None;
                view.routes.retain(|r| r.interface != *interface);
            }
            Step::EnsureL3mdevRule { ipv4, ipv6 } => {
                if *ipv4 {
                    view.l3mdev.ipv4 = Some(L3MDEV_PRIORITY);
                }
                if *ipv6 {
                    view.l3mdev.ipv6 = Some(L3MDEV_PRIORITY);
                }
            }
            Step::DeleteL3mdevRule { ipv6: true, .. } => view.l3mdev.ipv6 = None,
            Step::DeleteL3mdevRule { ipv6: false, .. } => view.l3mdev.ipv4 = None,
            Step::Nft { commands, .. } => {
                view.nft = std::sync::Arc::new(transacted(&view.nft, commands))
            }
        }
    }
}

/// The table once nft has run `commands`.
fn transacted(table: &ObservedNft, commands: &[Value]) -> ObservedNft {
    let (mut exists, mut chains, mut maps) =
        (table.table_exists, table.chains.clone(), table.maps.clone());
    for command in commands {
        let (verb, body) = command.as_object().unwrap().iter().next().unwrap();
        let (kind, object) = body.as_object().unwrap().iter().next().unwrap();
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (verb.as_str(), kind.as_str()) {
            ("add", "table") => exists = true,
            ("delete", "table") => {
                (exists, chains, maps) = (false, BTreeMap::new(), BTreeMap::new())
            }
            ("add", "map") => {
                maps.entry(name.to_owned()).or_default();
            }
            ("add", "chain") => {
                chains.entry(name.to_owned()).or_default();
            }
            ("flush", "chain") => chains.get_mut(name).unwrap().clear(),
            ("delete", "chain") => {
                chains.remove(name);
            }
            ("add", "rule") => chains
                .get_mut(object["chain"].as_str().unwrap())
                .unwrap()
                .push(object["comment"].as_str().unwrap().to_owned()),
            ("add", "element") => {
                for element in object["elem"].as_array().unwrap() {
                    let target = element[1].pointer("/jump/target").unwrap();
                    maps.get_mut(name)
                        .unwrap()
                        .insert((element[0].to_string(), target.as_str().unwrap().to_owned()));
                }
            }
            ("delete", "element") => {
                for key in object["elem"].as_array().unwrap() {
                    let key = key.to_string();
                    maps.get_mut(name).unwrap().retain(|(k, _)| *k != key);
                }
            }
            other => panic!("nft command {other:?} not known to the test"),
        }
    }
    if exists {
        ObservedNft::from_parts(chains, maps, BTreeMap::new())
    } else {
        ObservedNft::default()
    }
}

fn shown(changes: &Changes) -> String {
    changes.steps.iter().map(|s| format!("{s}\n")).collect()
}

fn seed() -> Vec<LoadedNetwork> {
    mirrornet_api::file::load_str("seed.yaml", include_str!("../../../examples/seed.yaml"))
        .expect("the seed example loads")
}

fn with(edit: impl FnOnce(&mut mirrornet_api::MirrorNetworkSpec)) -> Vec<LoadedNetwork> {
    let mut object = seed().remove(0).object;
    edit(&mut object.spec);
    let valid = mirrornet_api::validate(&object.spec).expect("the edited seed is valid");
    vec![LoadedNetwork { object, valid }]
}

const SEED_POLICY_ROUTING: &str = "\
+ address 192.168.2.1/24 dev eth1
+ address 192.168.2.1/24 dev eth2
+ route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
+ route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
+ rule 501 fwmark 0x2000000/0xff000000 lookup 20001
+ rule 500 fwmark 0x1000000/0xff000000 lookup 20000
~ sysctl net.ipv4.conf.eth1.forwarding = 1 (was 0)
~ sysctl net.ipv4.conf.eth2.forwarding = 1 (was 0)
+ rule 1000 nop
+ rule 499 fwmark 0x0/0xff000000 goto 1000
~ nft table inet mirrornet: add chain x11, add element x8, add map x5, add rule x16, add table x1
";

#[test]
fn a_fresh_seed_then_nothing_then_a_delete_that_leaves_nothing() {
    let mut node = Node::fresh(false);
    assert_eq!(
        node.apply(&seed(), BackendChoice::Auto, &[]),
        SEED_POLICY_ROUTING
    );
    assert_eq!(node.apply(&seed(), BackendChoice::Auto, &[]), "");
    let fresh = Node::fresh(false);
    assert_eq!(
        node.apply(&[], BackendChoice::Auto, &["plant-twin"]),
        "\
- rule 499 fwmark 0x0/0xff000000 goto 1000
~ nft table inet mirrornet: delete table x1
- rule 500 fwmark 0x1000000/0xff000000 lookup 20000
- rule 501 fwmark 0x2000000/0xff000000 lookup 20001
- rule 1000 nop
- route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
- route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
- address 192.168.2.1/24 dev eth1
- address 192.168.2.1/24 dev eth2
~ sysctl net.ipv4.conf.eth1.forwarding = 0 (restored; was 1)
~ sysctl net.ipv4.conf.eth2.forwarding = 0 (restored; was 1)
"
    );
    assert_eq!(node.view.addresses, fresh.view.addresses);
    assert_eq!(node.view.rules, fresh.view.rules);
    assert!(node.view.routes.is_empty() && !node.view.nft.table_exists);
    assert_eq!(node.sysctls, fresh.sysctls);
    assert_eq!(node.memory, Memory::default());
}

#[test]
fn the_first_vrf_brings_the_l3mdev_rule_first_and_takes_it_with_the_last() {
    let mut node = Node::fresh(true);
    assert_eq!(
        node.apply(&seed(), BackendChoice::Auto, &[]),
        "\
+ rule 1000 l3mdev (IPv4 and IPv6; the kernel adds it only with a namespace's first VRF)
+ vrf mnv20000 table 20000 (mirrornet:plant-twin/inner)
~ link eth1 master mnv20000
+ vrf mnv20001 table 20001 (mirrornet:plant-twin/outer)
~ link eth2 master mnv20001
+ address 192.168.2.1/24 dev eth1
+ address 192.168.2.1/24 dev eth2
+ route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
+ route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
+ rule 501 fwmark 0x2000000/0xff000000 lookup 20001
+ rule 500 fwmark 0x1000000/0xff000000 lookup 20000
~ sysctl net.ipv4.conf.eth1.forwarding = 1 (was 0)
~ sysctl net.ipv4.conf.mnv20000.forwarding = 1 (was )
~ sysctl net.ipv4.conf.eth2.forwarding = 1 (was 0)
~ sysctl net.ipv4.conf.mnv20001.forwarding = 1 (was )
+ rule 1000 nop
+ rule 499 fwmark 0x0/0xff000000 goto 1000
~ nft table inet mirrornet: add chain x9, add element x6, add map x5, add rule x14, add table x1
"
    );
    assert_eq!(node.apply(&seed(), BackendChoice::Auto, &[]), "");
    // Rules, routes and addresses go before the links leave their VRFs and the VRFs go; the
    // l3mdev rules mirrornet brought go last.
    assert_eq!(
        node.apply(&[], BackendChoice::Auto, &["plant-twin"]),
        "\
- rule 499 fwmark 0x0/0xff000000 goto 1000
~ nft table inet mirrornet: delete table x1
- rule 500 fwmark 0x1000000/0xff000000 lookup 20000
- rule 501 fwmark 0x2000000/0xff000000 lookup 20001
- rule 1000 nop
- route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
- route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
- address 192.168.2.1/24 dev eth1
- address 192.168.2.1/24 dev eth2
~ link eth1 nomaster (was mnv20000)
~ link eth2 nomaster (was mnv20001)
- vrf mnv20000 table 20000
- vrf mnv20001 table 20001
~ sysctl net.ipv4.conf.eth1.forwarding = 0 (restored; was 1)
~ sysctl net.ipv4.conf.eth2.forwarding = 0 (restored; was 1)
~ sysctl net.ipv4.conf.mnv20000.forwarding =  (restored; was 1)
~ sysctl net.ipv4.conf.mnv20001.forwarding =  (restored; was 1)
- rule 1000 l3mdev (the kernel's, added with the first VRF)
- rule -6 1000 l3mdev (the kernel's, added with the first VRF)
"
    );
    assert_eq!(node.view.l3mdev, L3mdevRules::default());
    assert_eq!(node.memory, Memory::default());
}

#[test]
fn from_vrf_to_policy_routing() {
    let mut node = Node::fresh(true);
    node.apply(&seed(), BackendChoice::Vrf, &[]);
    // The interfaces leave their VRFs first, since the plan still routes through them: the
    // kernel flushes their routes, which come back in the policy-routing tables.
    assert_eq!(
        node.apply(&seed(), BackendChoice::PolicyRouting, &[]),
        "\
~ link eth1 nomaster (was mnv20000)
~ link eth2 nomaster (was mnv20001)
+ route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
+ route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
~ nft table inet mirrornet: add chain x2, add element x2, add rule x2
- vrf mnv20000 table 20000
- vrf mnv20001 table 20001
~ sysctl net.ipv4.conf.mnv20000.forwarding =  (restored; was 1)
~ sysctl net.ipv4.conf.mnv20001.forwarding =  (restored; was 1)
- rule 1000 l3mdev (the kernel's, added with the first VRF)
- rule -6 1000 l3mdev (the kernel's, added with the first VRF)
"
    );
    assert_eq!(node.apply(&seed(), BackendChoice::PolicyRouting, &[]), "");
}

#[test]
fn suspend_withdraws_everything_but_the_ids() {
    let mut node = Node::fresh(false);
    node.apply(&seed(), BackendChoice::Auto, &[]);
    let suspended = with(|spec| spec.suspend = true);
    assert_eq!(
        node.apply(&suspended, BackendChoice::Auto, &[]),
        "\
- route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
- route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
- rule 499 fwmark 0x0/0xff000000 goto 1000
~ nft table inet mirrornet: delete chain x7, delete element x8
- rule 500 fwmark 0x1000000/0xff000000 lookup 20000
- rule 501 fwmark 0x2000000/0xff000000 lookup 20001
- rule 1000 nop
- address 192.168.2.1/24 dev eth1
- address 192.168.2.1/24 dev eth2
~ sysctl net.ipv4.conf.eth1.forwarding = 0 (restored; was 1)
~ sysctl net.ipv4.conf.eth2.forwarding = 0 (restored; was 1)
"
    );
    // The ids stay in the kernel: the one chain left is `ids.plant-twin`.
    assert_eq!(
        node.view
            .nft
            .chains
            .keys()
            .filter(|c| c.contains("plant-twin"))
            .collect::<Vec<_>>(),
        ["ids.plant-twin"]
    );
    assert_eq!(node.apply(&suspended, BackendChoice::Auto, &[]), "");
}

#[test]
fn a_stale_route_goes_before_anything_is_added() {
    let mut node = Node::fresh(false);
    node.apply(&seed(), BackendChoice::Auto, &[]);
    let narrower = with(|spec| {
        spec.subnet = "192.168.2.0/25".parse().unwrap();
        for side in &mut spec.sides {
            side.alias_prefix = "192.168.3.0/25".parse().unwrap();
        }
    });
    assert_eq!(
        node.apply(&narrower, BackendChoice::Auto, &[]),
        "\
- route 192.168.2.0/24 dev eth1 src 192.168.2.1 table 20000
- route 192.168.2.0/24 dev eth2 src 192.168.2.1 table 20001
+ address 192.168.2.1/25 dev eth1
+ address 192.168.2.1/25 dev eth2
+ route 192.168.2.0/25 dev eth1 src 192.168.2.1 table 20000
+ route 192.168.2.0/25 dev eth2 src 192.168.2.1 table 20001
~ nft table inet mirrornet: add element x2, add rule x3, delete element x2, flush chain x3
- address 192.168.2.1/24 dev eth1
- address 192.168.2.1/24 dev eth2
"
    );
    assert_eq!(node.apply(&narrower, BackendChoice::Auto, &[]), "");
}

#[test]
fn an_older_agents_iif_rules_go_after_the_nft_transaction_marks_every_side() {
    let mut node = Node::fresh(false);
    node.apply(&seed(), BackendChoice::Auto, &[]);
    // What an older agent left: each side's domain by `iif` rather than by its own traffic's
    // mark (no `home` chains), and no skip rule.
    node.view.rules.retain(|r| r.table != 0);
    let (mut chains, mut maps) = (node.view.nft.chains.clone(), node.view.nft.maps.clone());
    chains.retain(|name, _| !name.starts_with("home."));
    maps.insert("home".into(), BTreeSet::new());
    node.view.nft = std::sync::Arc::new(ObservedNft::from_parts(chains, maps, BTreeMap::new()));
    for (priority, interface, table) in [(502, "eth1", 20000), (503, "eth2", 20001)] {
        node.view.rules.push(Rule {
            ipv6: false,
            priority,
            selector: RuleSelector::Iif(interface.into()),
            table,
        });
    }
    assert_eq!(
        node.apply(&seed(), BackendChoice::Auto, &[]),
        "\
~ nft table inet mirrornet: add chain x2, add element x2, add rule x2
+ rule 1000 nop
+ rule 499 fwmark 0x0/0xff000000 goto 1000
- rule 502 iif eth1 lookup 20000
- rule 503 iif eth2 lookup 20001
"
    );
    // The node is now as this build lays it out.
    assert_eq!(node.apply(&seed(), BackendChoice::Auto, &[]), "");
}
