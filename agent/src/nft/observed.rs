//! The table as observed: what each network has in it, recovered ids, traffic counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::Value;

use super::{RecordedSide, chain_network, parse_ids_comment};

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
pub(crate) struct NetworkIndex {
    /// Whether the network has at least one chain (what [`ObservedNft::networks`] counts).
    has_chains: bool,
    /// The network's chains, in name order.
    pub(crate) chains: Vec<String>,
    /// Elements jumping to the network's chains: (map, key JSON, target), in map then
    /// element order.
    pub(crate) elements: Vec<(String, String, String)>,
    /// Side interfaces, from the first field of its ingress map keys.
    interfaces: BTreeSet<String>,
    /// The ids its `ids.<network>` chain records, parsed once: every pass asks for every
    /// network's (the allocator starts from them), a few milliseconds at 1024 networks.
    recorded: Vec<RecordedSide>,
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
        for (name, entry) in networks.iter_mut() {
            if let Some(comments) = observed.chains.get(&format!("ids.{name}")) {
                entry.recorded = comments
                    .iter()
                    .filter_map(|c| parse_ids_comment(c))
                    .collect();
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

    /// Builds the index now, so that a copy kept for later passes (the `run` loop's cache)
    /// carries it instead of building it again in every pass (8 ms at 1024 networks).
    pub(crate) fn indexed(self) -> Self {
        let _ = self.index();
        self
    }

    pub(crate) fn network_index(&self, network: &str) -> Option<&NetworkIndex> {
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
        match self.network_index(network) {
            Some(index) if !index.recorded.is_empty() => index.recorded.clone(),
            _ => self
                .chains
                .get(&format!("ids.{network}"))
                .map(|c| c.iter().filter_map(|s| parse_ids_comment(s)).collect())
                .unwrap_or_default(),
        }
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
