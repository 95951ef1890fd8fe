//! The one transaction: the commands that make our table hold exactly what the plans need,
//! leaving other networks' parts alone, and nothing when it already does.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{
    CHAIN_NAT_POSTROUTING, CHAIN_NAT_PREROUTING, CHAIN_PREROUTING, FAMILY, MAP_DNAT, MAP_HOME,
    MAP_INGRESS_V4, MAP_INGRESS_V6, MAP_SNAT, NetworkNft, NftElement, NftRule, ObservedNft, TABLE,
    chain_network,
};

fn skeleton_chains(mask: u32) -> Vec<(&'static str, Value, Vec<NftRule>)> {
    let mark = json!({"&": [{"meta": {"key": "mark"}}, mask]});
    // Only steered connections have a zone (ours are never 0); a side's own traffic carries
    // the side's mark too, and must not be translated.
    let steered = json!({"match": {"op": "!=",
        "left": {"ct": {"key": "zone", "dir": "original"}}, "right": 0}});
    vec![
        (
            CHAIN_PREROUTING,
            json!({"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}),
            vec![
                NftRule::new(json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
                    {"vmap": {"key": {"concat": [{"meta": {"key": "iifname"}},
                        {"payload": {"protocol": "ip", "field": "daddr"}}]},
                        "data": format!("@{MAP_INGRESS_V4}")}}
                ])),
                NftRule::new(json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}},
                    {"vmap": {"key": {"concat": [{"meta": {"key": "iifname"}},
                        {"payload": {"protocol": "ip6", "field": "daddr"}}]},
                        "data": format!("@{MAP_INGRESS_V6}")}}
                ])),
                NftRule::new(json!([
                    {"match": {"op": "==", "left": mark, "right": 0}},
                    {"vmap": {"key": {"meta": {"key": "iifname"}},
                        "data": format!("@{MAP_HOME}")}}
                ])),
            ],
        ),
        (
            CHAIN_NAT_PREROUTING,
            json!({"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}),
            vec![NftRule::new(json!([
                steered,
                {"vmap": {"key": mark, "data": format!("@{MAP_DNAT}")}}
            ]))],
        ),
        (
            CHAIN_NAT_POSTROUTING,
            json!({"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}),
            vec![NftRule::new(json!([
                steered,
                {"vmap": {"key": mark, "data": format!("@{MAP_SNAT}")}}
            ]))],
        ),
    ]
}

fn skeleton_maps() -> Vec<(&'static str, Value)> {
    vec![
        (
            MAP_INGRESS_V4,
            json!({"type": ["ifname", "ipv4_addr"], "map": "verdict", "flags": ["interval"]}),
        ),
        (
            MAP_INGRESS_V6,
            json!({"type": ["ifname", "ipv6_addr"], "map": "verdict", "flags": ["interval"]}),
        ),
        (MAP_DNAT, json!({"type": "mark", "map": "verdict"})),
        (MAP_SNAT, json!({"type": "mark", "map": "verdict"})),
        (MAP_HOME, json!({"type": "ifname", "map": "verdict"})),
    ]
}

fn with_base(mut object: Value, base: Value) -> Value {
    if let (Some(o), Some(b)) = (object.as_object_mut(), base.as_object()) {
        for (k, v) in b {
            o.insert(k.clone(), v.clone());
        }
    }
    object
}

fn add_rule(chain: &str, rule: &NftRule) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain,
        "comment": rule.comment, "expr": rule.expr}}})
}

fn element_value(e: &NftElement) -> Value {
    let key: Value = serde_json::from_str(&e.key).unwrap_or(Value::Null);
    json!([key, {"jump": {"target": e.target}}])
}

/// The commands of one transaction that make the table hold exactly `desired` for the
/// networks in it and nothing of the networks in `remove`, leaving other networks' parts
/// alone. Empty when the table already matches.
pub fn transaction(
    observed: &ObservedNft,
    desired: &[(&str, &NetworkNft)],
    remove: &[&str],
    mask: u32,
) -> Vec<Value> {
    let mut deletes = Vec::new();
    let mut chain_ops = Vec::new();
    let mut adds = Vec::new();

    if !desired.is_empty() {
        if !observed.table_exists {
            chain_ops.push(json!({"add": {"table": {"family": FAMILY, "name": TABLE}}}));
        }
        for (name, spec) in skeleton_maps() {
            if !observed.maps.contains_key(name) {
                chain_ops.push(json!({"add": {"map": with_base(
                    json!({"family": FAMILY, "table": TABLE, "name": name}), spec)}}));
            }
        }
        for (name, hook, rules) in skeleton_chains(mask) {
            let want: Vec<&str> = rules.iter().map(|r| r.comment.as_str()).collect();
            match observed.chains.get(name) {
                Some(have) if have.iter().map(String::as_str).eq(want.iter().copied()) => {}
                have => {
                    if have.is_some() {
                        chain_ops.push(json!({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}}));
                    } else {
                        chain_ops.push(json!({"add": {"chain": with_base(
                            json!({"family": FAMILY, "table": TABLE, "name": name}), hook)}}));
                    }
                    chain_ops.extend(rules.iter().map(|r| add_rule(name, r)));
                }
            }
        }
    }

    // Networks being programmed: their chains and elements exactly as desired. Each network
    // looks only at its own share of the table (the index), never the whole table.
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    for (network, want) in desired {
        touched.insert(network);
        let have = observed.network_index(network);
        let wanted_chains: BTreeSet<&str> = want.chains.iter().map(|c| c.name.as_str()).collect();
        let wanted_elements: BTreeSet<(&str, &str, &str)> = want
            .elements
            .iter()
            .map(|e| (e.map.as_str(), e.key.as_str(), e.target.as_str()))
            .collect();
        let mut present: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
        if let Some(have) = have {
            // Elements of this network that should not be there (or point elsewhere).
            for (map, key, target) in &have.elements {
                let element = (map.as_str(), key.as_str(), target.as_str());
                if wanted_elements.contains(&element) {
                    present.insert(element);
                } else {
                    deletes.push(delete_element(map, key));
                }
            }
            for chain in &have.chains {
                if !wanted_chains.contains(chain.as_str()) {
                    chain_ops.push(
                        json!({"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}}),
                    );
                }
            }
        }
        for chain in &want.chains {
            match observed.chains.get(&chain.name) {
                Some(have)
                    if have
                        .iter()
                        .map(String::as_str)
                        .eq(chain.rules.iter().map(|r| r.comment.as_str())) => {}
                Some(_) => {
                    chain_ops.push(json!({"flush": {"chain": {"family": FAMILY, "table": TABLE, "name": chain.name}}}));
                    chain_ops.extend(chain.rules.iter().map(|r| add_rule(&chain.name, r)));
                }
                None => {
                    chain_ops.push(json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": chain.name}}}));
                    chain_ops.extend(chain.rules.iter().map(|r| add_rule(&chain.name, r)));
                }
            }
        }
        for e in &want.elements {
            // Present elements are usually in this network's share; a target whose name does
            // not say the network (a dotted network name) is looked up in the whole map.
            if present.contains(&(e.map.as_str(), e.key.as_str(), e.target.as_str()))
                || observed
                    .maps
                    .get(&e.map)
                    .is_some_and(|m| m.contains(&(e.key.clone(), e.target.clone())))
            {
                continue;
            }
            // A key held by another chain (a stale or foreign element) is replaced.
            if observed.maps.get(&e.map).is_some_and(|m| {
                m.range((e.key.clone(), String::new())..)
                    .take_while(|(k, _)| *k == e.key)
                    .any(|(_, t)| chain_network(t) != Some(network))
            }) {
                deletes.push(delete_element(&e.map, &e.key));
            }
            adds.push(json!({"add": {"element": {"family": FAMILY, "table": TABLE,
                "name": e.map, "elem": [element_value(e)]}}}));
        }
    }

    // Networks being removed.
    let mut remaining: BTreeSet<String> = if remove.is_empty() {
        BTreeSet::new()
    } else {
        observed.networks()
    };
    for network in remove {
        remaining.remove(*network);
        let Some(have) = observed.network_index(network) else {
            continue;
        };
        for (map, key, _) in &have.elements {
            deletes.push(delete_element(map, key));
        }
        for chain in &have.chains {
            chain_ops.push(
                json!({"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}}),
            );
        }
    }
    for network in &touched {
        remaining.insert((*network).to_owned());
    }
    if !remove.is_empty() && remaining.is_empty() && observed.table_exists {
        // The last network is gone: the whole table goes, leaving no residue.
        return vec![json!({"delete": {"table": {"family": FAMILY, "name": TABLE}}})];
    }

    deletes.sort_by_cached_key(|v| v.to_string());
    deletes.dedup();
    deletes.into_iter().chain(chain_ops).chain(adds).collect()
}

fn delete_element(map: &str, key: &str) -> Value {
    let key: Value = serde_json::from_str(key).unwrap_or(Value::Null);
    json!({"delete": {"element": {"family": FAMILY, "table": TABLE, "name": map, "elem": [key]}}})
}
