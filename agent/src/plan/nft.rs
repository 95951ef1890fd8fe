//! The nft part of a plan: the chains and map elements one network needs in our table
//! (steering, the allow-list, NAT, the ids record), built from the plan's sides.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use mirrornet_api::{Protocol, ValidAllow};
use serde_json::{Value, json};

use super::{SidePlan, TakenAlias};
use crate::nft::{
    MAP_DNAT, MAP_HOME, MAP_SNAT, NetworkNft, NftChain, NftElement, NftRule, family_of,
    ids_comment, prefix,
};

/// The chain that records a network's ids: all a suspended network keeps in the table.
pub fn ids_chain(name: &str, mask: u32, sides: &[SidePlan]) -> NftChain {
    NftChain {
        name: format!("ids.{name}"),
        rules: sides
            .iter()
            .map(|s| NftRule {
                expr: json!([{"return": null}]),
                comment: ids_comment(&s.ids, mask),
            })
            .collect(),
    }
}

/// The chains and map elements one network needs. `hosts` is the part of the subnet the hosts
/// use (all of it but with on-link aliases), what the 1:1 mapping translates. `allow` empty:
/// every connection may open. `taken`: on-link aliases a host on their side uses, whose hosts
/// may not open connections into that side (their replies would go to that host).
pub fn network(
    name: &str,
    hosts: IpNet,
    mask: u32,
    sides: &[SidePlan],
    allow: &[ValidAllow],
    home: bool,
    taken: &[TakenAlias],
) -> NetworkNft {
    let (proto, ingress_map) = family_of(hosts);
    let mut chains = vec![ids_chain(name, mask, sides)];
    let mut elements = Vec::new();

    // Policy routing: every other packet from a side interface carries its own side's mark,
    // which routes it in the side's table (what an `iif` rule per side did, at one rule per
    // side on every packet's path). Not NATed: only steered connections have a zone.
    for side in sides.iter().filter(|_| home) {
        let chain = format!("home.{name}.{}", side.name);
        chains.push(NftChain {
            name: chain.clone(),
            rules: vec![NftRule::new(json!([{"mangle": {
                "key": {"meta": {"key": "mark"}},
                "value": {"|": [{"&": [{"meta": {"key": "mark"}}, !mask]}, side.ids.mark]}
            }}]))],
        });
        elements.push(NftElement {
            map: MAP_HOME.into(),
            key: json!(side.interface).to_string(),
            target: chain,
        });
    }

    for ingress in sides {
        for target in sides.iter().filter(|t| t.name != ingress.name) {
            let chain = format!("steer.{name}.{}.{}", ingress.name, target.name);
            chains.push(NftChain {
                name: chain.clone(),
                rules: vec![
                    // The counter makes every direction's traffic visible (`show`, /metrics).
                    NftRule::new(json!([{"counter": null}, {"mangle": {
                        "key": {"meta": {"key": "mark"}},
                        "value": {"|": [{"&": [{"meta": {"key": "mark"}}, !mask]}, target.ids.mark]}
                    }}])),
                    NftRule::new(json!([{"mangle": {
                        "key": {"ct": {"key": "zone", "dir": "original"}},
                        "value": ingress.ids.zone
                    }}])),
                ],
            });
            elements.push(NftElement {
                map: ingress_map.into(),
                key: json!({"concat": [ingress.interface, prefix(target.alias)]}).to_string(),
                target: chain,
            });
        }
    }

    let dnat_chain = format!("xlate-dst.{name}");
    // A nat chain sees only a connection's first packet: dropping there refuses a connection
    // an answer-only side tries to open, while replies (and connections others open) pass.
    let mut dnat_rules: Vec<NftRule> = sides
        .iter()
        .filter(|s| s.answer_only)
        .map(|s| {
            NftRule::new(json!([
                {"match": {"op": "==",
                    "left": {"ct": {"key": "zone", "dir": "original"}},
                    "right": s.ids.zone}},
                {"drop": null}
            ]))
        })
        .collect();
    // After the answer-only drop, so a refused initiation stays refused whatever is allowed.
    dnat_rules.extend(allow_list_drop(allow, matches!(hosts, IpNet::V6(_))));
    dnat_rules.push(NftRule::new(json!([{"dnat": {
        "family": proto,
        "addr": prefix(hosts),
        "flags": "netmap",
        "type_flags": "prefix"
    }}])));
    chains.push(NftChain {
        name: dnat_chain.clone(),
        rules: dnat_rules,
    });
    for target in sides {
        elements.push(NftElement {
            map: MAP_DNAT.into(),
            key: json!(target.ids.mark).to_string(),
            target: dnat_chain.clone(),
        });
        let snat_chain = format!("xlate-src.{name}.{}", target.name);
        chains.push(NftChain {
            name: snat_chain.clone(),
            rules: sides
                .iter()
                .filter(|i| i.name != target.name)
                .flat_map(|ingress| {
                    let mut blocked: Vec<String> = taken
                        .iter()
                        .filter(|t| t.side == target.name && t.for_side == ingress.name)
                        .map(|t| t.for_host.to_string())
                        .collect();
                    blocked.sort();
                    blocked.dedup();
                    let block = (!blocked.is_empty()).then(|| {
                        NftRule::new(json!([
                            {"match": {"op": "==",
                                "left": {"payload": {"protocol": proto, "field": "saddr"}},
                                "right": {"set": blocked}}},
                            {"match": {"op": "==",
                                "left": {"ct": {"key": "zone", "dir": "original"}},
                                "right": ingress.ids.zone}},
                            {"drop": null}
                        ]))
                    });
                    block.into_iter().chain([NftRule::new(json!([
                        {"match": {"op": "==",
                            "left": {"payload": {"protocol": proto, "field": "saddr"}},
                            "right": prefix(hosts)}},
                        {"match": {"op": "==",
                            "left": {"ct": {"key": "zone", "dir": "original"}},
                            "right": ingress.ids.zone}},
                        {"snat": {"family": proto, "addr": prefix(ingress.alias),
                            "flags": "netmap", "type_flags": "prefix"}}
                    ]))])
                })
                .collect(),
        });
        elements.push(NftElement {
            map: MAP_SNAT.into(),
            key: json!(target.ids.mark).to_string(),
            target: snat_chain,
        });
    }
    NetworkNft { chains, elements }
}

/// An allow-list reduced to what nft can hold: protocols allowed on every port, and per
/// protocol the allowed port ranges sorted and merged. An interval set refuses overlapping
/// elements (`tcp . 20-30, tcp . 22`), and the same entries in any order must make the same
/// rule, or its comment would change and a reordered spec would rewrite the chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList {
    pub any_port: BTreeSet<Protocol>,
    pub ports: BTreeMap<Protocol, Vec<(u16, u16)>>,
}

impl AllowList {
    pub fn new(allow: &[ValidAllow]) -> Self {
        let mut me = Self::default();
        for entry in allow {
            match entry.ports {
                None => {
                    me.any_port.insert(entry.protocol);
                }
                Some(range) => me.ports.entry(entry.protocol).or_default().push(range),
            }
        }
        let any_port = me.any_port.clone();
        me.ports.retain(|protocol, _| !any_port.contains(protocol));
        for ranges in me.ports.values_mut() {
            ranges.sort_unstable();
            let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
            for &(first, last) in ranges.iter() {
                match merged.last_mut() {
                    Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => {
                        prev.1 = prev.1.max(last)
                    }
                    _ => merged.push((first, last)),
                }
            }
            *ranges = merged;
        }
        me
    }

    /// Whether a connection's first packet of `protocol` to `port` may pass.
    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        self.any_port.contains(&protocol)
            || self
                .ports
                .get(&protocol)
                .is_some_and(|r| r.iter().any(|&(a, b)| (a..=b).contains(&port)))
    }
}

/// nft's name of the protocol, as `meta l4proto` prints it.
fn l4proto(protocol: Protocol, ipv6: bool) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
        Protocol::Icmp if ipv6 => "ipv6-icmp",
        Protocol::Icmp => "icmp",
    }
}

/// One rule that drops a connection's first packet unless an entry allows it:
/// `meta l4proto != { icmp } meta l4proto . th dport != { tcp . 22, udp . 5000-5100 } drop`.
/// One set lookup per new connection however long the list. `None` for an empty list.
fn allow_list_drop(allow: &[ValidAllow], ipv6: bool) -> Option<NftRule> {
    if allow.is_empty() {
        return None;
    }
    let list = AllowList::new(allow);
    let mut expr = Vec::new();
    if !list.any_port.is_empty() {
        let protocols: Vec<&str> = list.any_port.iter().map(|p| l4proto(*p, ipv6)).collect();
        expr.push(json!({"match": {"op": "!=",
            "left": {"meta": {"key": "l4proto"}},
            "right": {"set": protocols}}}));
    }
    if !list.ports.is_empty() {
        let elements: Vec<Value> = list
            .ports
            .iter()
            .flat_map(|(protocol, ranges)| {
                ranges.iter().map(move |&(first, last)| {
                    let port = if first == last {
                        json!(first)
                    } else {
                        json!({"range": [first, last]})
                    };
                    json!({"concat": [l4proto(*protocol, ipv6), port]})
                })
            })
            .collect();
        expr.push(json!({"match": {"op": "!=",
            "left": {"concat": [{"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}]},
            "right": {"set": elements}}}));
    }
    expr.push(json!({"drop": null}));
    Some(NftRule::new(Value::Array(expr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::chain_network;

    fn allow(protocol: Protocol, ports: Option<(u16, u16)>) -> ValidAllow {
        ValidAllow { protocol, ports }
    }

    fn side(name: &str, zone: u16, answer_only: bool) -> SidePlan {
        SidePlan {
            name: name.into(),
            interface: format!("if-{name}"),
            alias: "192.168.3.0/24".parse().unwrap(),
            ids: mirrornet_api::SideAllocation {
                side: name.into(),
                table: 20000 + u32::from(zone),
                mark: u32::from(zone) << 24,
                zone,
                rule_priority: 500,
            },
            answer_only,
        }
    }

    #[test]
    fn an_allow_list_becomes_one_drop_between_the_answer_only_drop_and_the_dnat() {
        let sides = [side("inner", 1, false), side("outer", 2, true)];
        let list = [
            allow(Protocol::Tcp, Some((22, 22))),
            allow(Protocol::Udp, Some((5000, 5100))),
            allow(Protocol::Icmp, None),
        ];
        let subnet: IpNet = "192.168.2.0/24".parse().unwrap();
        let nft = network("n", subnet, 0xff00_0000, &sides, &list, true, &[]);
        let dst = nft.chains.iter().find(|c| c.name == "xlate-dst.n").unwrap();
        let text: Vec<String> = dst.rules.iter().map(|r| r.expr.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(text[0].contains(r#""zone""#) && text[0].contains("drop"));
        assert_eq!(
            dst.rules[1].expr,
            json!([
                {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}},
                    "right": {"set": ["icmp"]}}},
                {"match": {"op": "!=",
                    "left": {"concat": [{"meta": {"key": "l4proto"}},
                        {"payload": {"protocol": "th", "field": "dport"}}]},
                    "right": {"set": [{"concat": ["tcp", 22]},
                        {"concat": ["udp", {"range": [5000, 5100]}]}]}}},
                {"drop": null}
            ])
        );
        assert!(text[2].contains("dnat"));
        assert!(dst.rules.iter().all(|r| r.comment.starts_with("mn:")));

        let v6 = network(
            "n",
            "fd00::/64".parse().unwrap(),
            0xff00_0000,
            &sides,
            &list[2..],
            true,
            &[],
        );
        let dst = v6.chains.iter().find(|c| c.name == "xlate-dst.n").unwrap();
        assert_eq!(
            dst.rules[1].expr,
            json!([{"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}},
                "right": {"set": ["ipv6-icmp"]}}}, {"drop": null}])
        );
    }

    #[test]
    fn no_allow_list_means_no_drop() {
        let sides = [side("inner", 1, false), side("outer", 2, false)];
        let nft = network(
            "n",
            "10.0.0.0/24".parse().unwrap(),
            0xff00_0000,
            &sides,
            &[],
            true,
            &[],
        );
        let dst = nft.chains.iter().find(|c| c.name == "xlate-dst.n").unwrap();
        assert_eq!(dst.rules.len(), 1);
    }

    #[test]
    fn policy_routing_marks_each_sides_own_traffic_and_vrf_does_not() {
        let sides = [side("inner", 1, false), side("outer", 2, false)];
        let subnet: IpNet = "10.0.0.0/24".parse().unwrap();
        let policy = network("n", subnet, 0xff00_0000, &sides, &[], true, &[]);
        let home: Vec<&NftElement> = policy
            .elements
            .iter()
            .filter(|e| e.map == MAP_HOME)
            .collect();
        assert_eq!(home.len(), 2);
        for (element, side) in home.iter().zip(&sides) {
            assert_eq!(element.key, json!(side.interface).to_string());
            let chain = policy
                .chains
                .iter()
                .find(|c| c.name == element.target)
                .unwrap();
            assert_eq!(chain_network(&chain.name), Some("n"));
            assert!(
                chain.rules[0]
                    .expr
                    .to_string()
                    .contains(&side.ids.mark.to_string())
            );
        }
        let vrf = network("n", subnet, 0xff00_0000, &sides, &[], false, &[]);
        assert!(vrf.elements.iter().all(|e| e.map != MAP_HOME));
        assert!(vrf.chains.iter().all(|c| !c.name.starts_with("home.")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge_and_any_port_wins() {
        let list = AllowList::new(&[
            allow(Protocol::Tcp, Some((31, 40))),
            allow(Protocol::Tcp, Some((22, 22))),
            allow(Protocol::Tcp, Some((20, 30))),
            allow(Protocol::Tcp, Some((65535, 65535))),
            allow(Protocol::Udp, Some((53, 53))),
            allow(Protocol::Udp, None),
        ]);
        assert_eq!(list.any_port, [Protocol::Udp].into());
        assert_eq!(
            list.ports,
            [(Protocol::Tcp, vec![(20, 40), (65535, 65535)])].into()
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn protocol() -> impl Strategy<Value = Protocol> {
            prop_oneof![
                Just(Protocol::Tcp),
                Just(Protocol::Udp),
                Just(Protocol::Sctp),
                Just(Protocol::Icmp),
            ]
        }

        fn entry() -> impl Strategy<Value = ValidAllow> {
            (protocol(), proptest::option::of((1u16..200, 0u16..20))).prop_map(
                |(protocol, ports)| ValidAllow {
                    protocol,
                    ports: ports
                        .filter(|_| protocol != Protocol::Icmp)
                        .map(|(first, extra)| (first, first.saturating_add(extra))),
                },
            )
        }

        proptest! {
            /// The reduced list lets through exactly what some entry names, in whatever order
            /// the entries come, and holds only disjoint, non-adjacent ranges (what an nft
            /// interval set accepts).
            #[test]
            fn the_reduced_list_allows_what_an_entry_allows(
                entries in proptest::collection::vec(entry(), 1..12),
                probes in proptest::collection::vec((protocol(), 1u16..230), 1..40),
                rotate in 0usize..12,
            ) {
                let list = AllowList::new(&entries);
                for (protocol, port) in probes {
                    let naive = entries.iter().any(|e| e.protocol == protocol
                        && e.ports.is_none_or(|(a, b)| (a..=b).contains(&port)));
                    prop_assert_eq!(list.allows(protocol, port), naive);
                }
                for ranges in list.ports.values() {
                    for pair in ranges.windows(2) {
                        prop_assert!(u32::from(pair[0].1) + 1 < u32::from(pair[1].0));
                    }
                }
                let mut turned = entries.clone();
                turned.rotate_left(rotate % entries.len());
                prop_assert_eq!(
                    allow_list_drop(&turned, false),
                    allow_list_drop(&entries, false)
                );
            }
        }
    }
}
