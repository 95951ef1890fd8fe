//! mirrornet's one nftables table: what it must hold, what it holds, and the single atomic
//! transaction that turns one into the other.
//!
//! We speak nft's JSON schema (`nft -j`), built as typed values, rather than the `nftables`
//! crate: its 0.6 schema cannot express prefix NAT (`type_flags: prefix`, `flags: netmap`),
//! the heart of the 1:1 mapping. Everything lives in `table inet mirrornet`; the per-packet
//! path is one verdict-map lookup per hook whatever the number of networks:
//!
//! ```text
//! prerouting (raw, -300)   iifname . daddr vmap @ingress-v4|v6 -> steer.<net>.<in>.<to>
//!                            meta mark = (mark & ~mask) | mark(to);  ct original zone = zone(in)
//!                          unmarked: iifname vmap @home -> home.<net>.<side> (policy routing)
//!                            meta mark = (mark & ~mask) | mark(side)
//! nat-prerouting (-100)    zone set: mark & mask vmap @dnat -> xlate-dst.<net>:
//!                            zone of an answer-only side: drop;  not allowed (spec.allow): drop;
//!                            dnat prefix to subnet
//! nat-postrouting (100)    zone set: mark & mask vmap @snat -> xlate-src.<net>.<to>:
//!                            saddr in subnet, ct original zone == zone(in): snat prefix to alias(in)
//! ids.<net>                never jumped to: one `return` per side whose comment records the
//!                            side's ids, so a restarted agent recovers them from the kernel
//! ```
//!
//! The zone is set in raw priority, before conntrack looks the packet up, and for the original
//! direction only: a reply arrives on the other side and must still find its entry. Every rule
//! carries a comment with a hash of its own expression, so comparing comments tells whether a
//! chain still holds exactly what we put there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::IpNet;
use mirrornet_api::{Protocol, ValidAllow};
use serde_json::{Value, json};

use crate::plan::SidePlan;

pub mod command;

/// Name of the table mirrornet owns.
pub const TABLE: &str = "mirrornet";
const FAMILY: &str = "inet";

const MAP_INGRESS_V4: &str = "ingress-v4";
const MAP_INGRESS_V6: &str = "ingress-v6";
const MAP_DNAT: &str = "dnat";
const MAP_SNAT: &str = "snat";
const MAP_HOME: &str = "home";
const CHAIN_PREROUTING: &str = "prerouting";
const CHAIN_NAT_PREROUTING: &str = "nat-prerouting";
const CHAIN_NAT_POSTROUTING: &str = "nat-postrouting";

/// A rule we put in a chain: its expression list and the comment that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub expr: Value,
    pub comment: String,
}

impl NftRule {
    fn new(expr: Value) -> Self {
        let comment = format!("mn:{:016x}", fnv1a(expr.to_string().as_bytes()));
        Self { expr, comment }
    }
}

/// A regular chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub name: String,
    pub rules: Vec<NftRule>,
}

/// One element of a verdict map: `key : jump target`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NftElement {
    pub map: String,
    /// The key in nft's JSON form, e.g. `{"concat": ["eth1", {"prefix": ...}]}` or a mark.
    pub key: String,
    pub target: String,
}

/// The part of the table that belongs to one network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkNft {
    pub chains: Vec<NftChain>,
    pub elements: Vec<NftElement>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn prefix(net: IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

fn family_of(net: IpNet) -> (&'static str, &'static str) {
    match net {
        IpNet::V4(_) => ("ip", MAP_INGRESS_V4),
        IpNet::V6(_) => ("ip6", MAP_INGRESS_V6),
    }
}

/// The network a chain of ours belongs to, from its name.
pub fn chain_network(chain: &str) -> Option<&str> {
    let mut parts = chain.split('.');
    match parts.next()? {
        "steer" | "home" | "xlate-dst" | "xlate-src" | "ids" => parts.next(),
        _ => None,
    }
}

/// The chain that records a network's ids: all a suspended network keeps in the table.
pub fn ids_chain(name: &str, mask: u32, sides: &[SidePlan]) -> NftChain {
    NftChain {
        name: format!("ids.{name}"),
        rules: sides
            .iter()
            .map(|s| NftRule {
                expr: json!([{"return": null}]),
                comment: ids_comment(s, mask),
            })
            .collect(),
    }
}

/// The chains and map elements one network needs. `allow` empty: every connection may open.
pub fn network(
    name: &str,
    subnet: IpNet,
    mask: u32,
    sides: &[SidePlan],
    allow: &[ValidAllow],
    home: bool,
) -> NetworkNft {
    let (proto, ingress_map) = family_of(subnet);
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
    dnat_rules.extend(allow_list_drop(allow, matches!(subnet, IpNet::V6(_))));
    dnat_rules.push(NftRule::new(json!([{"dnat": {
        "family": proto,
        "addr": prefix(subnet),
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
                .map(|ingress| {
                    NftRule::new(json!([
                        {"match": {"op": "==",
                            "left": {"payload": {"protocol": proto, "field": "saddr"}},
                            "right": prefix(subnet)}},
                        {"match": {"op": "==",
                            "left": {"ct": {"key": "zone", "dir": "original"}},
                            "right": ingress.ids.zone}},
                        {"snat": {"family": proto, "addr": prefix(ingress.alias),
                            "flags": "netmap", "type_flags": "prefix"}}
                    ]))
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

fn ids_comment(side: &SidePlan, mask: u32) -> String {
    // Short keys: a side name may take 63 of the 128 bytes nft allows in a comment.
    format!(
        "s={} t={} m={:#x} z={} p={} k={:#x}",
        side.name, side.ids.table, side.ids.mark, side.ids.zone, side.ids.rule_priority, mask
    )
}

/// A side's ids as recorded in the kernel by [`ids_comment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSide {
    pub side: String,
    pub table: u32,
    pub mark: u32,
    pub zone: u16,
    pub rule_priority: u32,
    pub mask: u32,
}

fn parse_ids_comment(comment: &str) -> Option<RecordedSide> {
    let fields: BTreeMap<&str, &str> = comment
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some(RecordedSide {
        side: fields.get("s")?.to_string(),
        table: fields.get("t")?.parse().ok()?,
        mark: hex(fields.get("m")?)?,
        zone: fields.get("z")?.parse().ok()?,
        rule_priority: fields.get("p")?.parse().ok()?,
        mask: hex(fields.get("k")?)?,
    })
}

/// What the table holds, as far as we care.
#[derive(Debug, Clone, Default)]
pub struct ObservedNft {
    pub table_exists: bool,
    /// Chain name -> comments of its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map name -> elements (key JSON, jump target).
    pub maps: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Chain name -> (packets, bytes) of its rules' counters: traffic, not state, so not part
    /// of equality.
    pub counters: BTreeMap<String, (u64, u64)>,
    /// What belongs to which network, built once on first use (the fields above are not
    /// changed after parsing).
    index: OnceLock<NftIndex>,
}

impl PartialEq for ObservedNft {
    fn eq(&self, other: &Self) -> bool {
        self.table_exists == other.table_exists
            && self.chains == other.chains
            && self.maps == other.maps
    }
}

impl Eq for ObservedNft {}

/// The table's chains and elements grouped by the network they belong to, so that per-network
/// work costs the network's share of the table rather than the whole table.
#[derive(Debug, Clone, Default)]
struct NftIndex {
    networks: BTreeMap<String, NetworkIndex>,
}

#[derive(Debug, Clone, Default)]
struct NetworkIndex {
    /// Whether the network has at least one chain (what [`ObservedNft::networks`] counts).
    has_chains: bool,
    /// The network's chains, in name order.
    chains: Vec<String>,
    /// Elements jumping to the network's chains: (map, key JSON, target), in map then
    /// element order.
    elements: Vec<(String, String, String)>,
    /// Side interfaces, from the first field of its ingress map keys.
    interfaces: BTreeSet<String>,
}

impl NftIndex {
    fn build(observed: &ObservedNft) -> Self {
        let mut networks: BTreeMap<String, NetworkIndex> = BTreeMap::new();
        for chain in observed.chains.keys() {
            if let Some(network) = chain_network(chain) {
                let entry = networks.entry(network.to_owned()).or_default();
                entry.has_chains = true;
                entry.chains.push(chain.clone());
            }
        }
        for (map, elements) in &observed.maps {
            for (key, target) in elements {
                let Some(network) = chain_network(target) else {
                    continue;
                };
                let entry = networks.entry(network.to_owned()).or_default();
                if let Some(interface) = key_interface(key) {
                    entry.interfaces.insert(interface);
                }
                entry
                    .elements
                    .push((map.clone(), key.clone(), target.clone()));
            }
        }
        Self { networks }
    }
}

/// The interface name a concatenated ingress key starts with (`{"concat": ["eth1", ...]}`).
fn key_interface(key: &str) -> Option<String> {
    let key: Value = serde_json::from_str(key).ok()?;
    key.pointer("/concat/0")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl ObservedNft {
    /// A table that exists, from what a reader found in it.
    pub fn from_parts(
        chains: BTreeMap<String, Vec<String>>,
        maps: BTreeMap<String, BTreeSet<(String, String)>>,
        counters: BTreeMap<String, (u64, u64)>,
    ) -> Self {
        Self {
            table_exists: true,
            chains,
            maps,
            counters,
            index: OnceLock::new(),
        }
    }

    fn index(&self) -> &NftIndex {
        self.index.get_or_init(|| NftIndex::build(self))
    }

    fn network_index(&self, network: &str) -> Option<&NetworkIndex> {
        self.index().networks.get(network)
    }

    /// Networks that have chains in the table.
    pub fn networks(&self) -> BTreeSet<String> {
        self.index()
            .networks
            .iter()
            .filter(|(_, n)| n.has_chains)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Side interfaces the table attributes to `network` (from its ingress map keys).
    pub fn interfaces_of(&self, network: &str) -> BTreeSet<String> {
        self.network_index(network)
            .map(|n| n.interfaces.clone())
            .unwrap_or_default()
    }

    /// The ids recorded for `network`, one entry per side.
    pub fn recorded_ids(&self, network: &str) -> Vec<RecordedSide> {
        self.chains
            .get(&format!("ids.{network}"))
            .map(|c| c.iter().filter_map(|s| parse_ids_comment(s)).collect())
            .unwrap_or_default()
    }

    /// Everything of `network` that is present, for `show`.
    pub fn network_chains(&self, network: &str) -> usize {
        self.network_index(network).map_or(0, |n| n.chains.len())
    }
}

/// Traffic of one direction of a network, from its steering chain's counter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// The side the packets entered from.
    pub from: String,
    /// The side they were sent to.
    pub to: String,
    pub packets: u64,
    pub bytes: u64,
}

impl ObservedNft {
    /// Packets and bytes per direction of `network` (new flows and every packet of them: the
    /// steering chain sees every packet addressed to an alias).
    pub fn traffic(&self, network: &str) -> Vec<Traffic> {
        let prefix = format!("steer.{network}.");
        self.counters
            .iter()
            .filter_map(|(chain, (packets, bytes))| {
                let (from, to) = chain.strip_prefix(&prefix)?.split_once('.')?;
                Some(Traffic {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    packets: *packets,
                    bytes: *bytes,
                })
            })
            .collect()
    }
}

/// Parses `nft -j list table inet mirrornet` output.
pub fn parse_listing(listing: &Value) -> ObservedNft {
    let mut observed = ObservedNft {
        table_exists: true,
        ..Default::default()
    };
    let items = listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for item in items {
        if let Some(chain) = item.get("chain") {
            if let Some(name) = chain.get("name").and_then(Value::as_str)
                && !observed.chains.contains_key(name)
            {
                observed.chains.insert(name.to_owned(), Vec::new());
            }
        } else if let Some(rule) = item.get("rule") {
            let chain = rule
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let comment = rule
                .get("comment")
                .and_then(Value::as_str)
                .unwrap_or("<no comment>");
            for counter in rule
                .get("expr")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("counter"))
            {
                let n = |k: &str| counter.get(k).and_then(Value::as_u64).unwrap_or(0);
                let total = observed.counters.entry(chain.to_owned()).or_default();
                total.0 += n("packets");
                total.1 += n("bytes");
            }
            match observed.chains.get_mut(chain) {
                Some(comments) => comments.push(comment.to_owned()),
                None => {
                    observed
                        .chains
                        .insert(chain.to_owned(), vec![comment.to_owned()]);
                }
            }
        } else if let Some(map) = item.get("map") {
            let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
            let elements = observed.maps.entry(name.to_owned()).or_default();
            for elem in map
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(key), Some(target)) = (
                    elem.get(0),
                    elem.get(1)
                        .and_then(|v| v.pointer("/jump/target"))
                        .and_then(Value::as_str),
                ) else {
                    continue;
                };
                elements.insert((key.to_string(), target.to_owned()));
            }
        }
    }
    observed
}

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

/// Renders a transaction for `nft -j -f -`.
pub fn batch(commands: &[Value]) -> Value {
    json!({"nftables": commands})
}

/// An address in nft's JSON text form, for tests and `show`.
pub fn addr(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_comment_round_trips() {
        let side = SidePlan {
            name: "inner".into(),
            interface: "eth1".into(),
            alias: "192.168.3.0/24".parse().unwrap(),
            ids: mirrornet_api::SideAllocation {
                side: "inner".into(),
                table: 20000,
                mark: 0x0100_0000,
                zone: 40000,
                rule_priority: 500,
            },
            answer_only: false,
        };
        let c = ids_comment(&side, 0xff00_0000);
        assert!(c.len() <= 128, "nft comments hold at most 128 bytes: {c}");
        let r = parse_ids_comment(&c).unwrap();
        assert_eq!(
            (r.table, r.mark, r.zone, r.rule_priority, r.mask),
            (20000, 0x0100_0000, 40000, 500, 0xff00_0000)
        );
    }

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
        let nft = network("n", subnet, 0xff00_0000, &sides, &list, true);
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
        );
        let dst = nft.chains.iter().find(|c| c.name == "xlate-dst.n").unwrap();
        assert_eq!(dst.rules.len(), 1);
    }

    #[test]
    fn policy_routing_marks_each_sides_own_traffic_and_vrf_does_not() {
        let sides = [side("inner", 1, false), side("outer", 2, false)];
        let subnet: IpNet = "10.0.0.0/24".parse().unwrap();
        let policy = network("n", subnet, 0xff00_0000, &sides, &[], true);
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
        let vrf = network("n", subnet, 0xff00_0000, &sides, &[], false);
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

    #[test]
    fn chain_names_say_their_network() {
        assert_eq!(
            chain_network("steer.plant-twin.inner.outer"),
            Some("plant-twin")
        );
        assert_eq!(chain_network("xlate-dst.plant-twin"), Some("plant-twin"));
        assert_eq!(chain_network("prerouting"), None);
    }
}
