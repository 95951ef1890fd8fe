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

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use mirrornet_api::SideAllocation;
use serde_json::{Value, json};

pub mod command;
pub mod nfnetlink;
mod observed;
mod transaction;

pub use observed::{ObservedNft, Traffic, parse_listing};
pub use transaction::transaction;

/// Name of the table mirrornet owns.
pub const TABLE: &str = "mirrornet";
pub(crate) const FAMILY: &str = "inet";

pub(crate) const MAP_INGRESS_V4: &str = "ingress-v4";
pub(crate) const MAP_INGRESS_V6: &str = "ingress-v6";
pub(crate) const MAP_DNAT: &str = "dnat";
pub(crate) const MAP_SNAT: &str = "snat";
pub(crate) const MAP_HOME: &str = "home";
pub(crate) const CHAIN_PREROUTING: &str = "prerouting";
pub(crate) const CHAIN_NAT_PREROUTING: &str = "nat-prerouting";
pub(crate) const CHAIN_NAT_POSTROUTING: &str = "nat-postrouting";

/// A rule we put in a chain: its expression list and the comment that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub expr: Value,
    pub comment: String,
}

impl NftRule {
    pub(crate) fn new(expr: Value) -> Self {
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

pub(crate) fn prefix(net: IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

pub(crate) fn family_of(net: IpNet) -> (&'static str, &'static str) {
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

/// The comment of a side's rule in `ids.<network>`: how the kernel remembers the side's ids.
pub fn ids_comment(ids: &SideAllocation, mask: u32) -> String {
    // Short keys: a side name may take 63 of the 128 bytes nft allows in a comment.
    format!(
        "s={} t={} m={:#x} z={} p={} k={:#x}",
        ids.side, ids.table, ids.mark, ids.zone, ids.rule_priority, mask
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

pub(crate) fn parse_ids_comment(comment: &str) -> Option<RecordedSide> {
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
        let ids = SideAllocation {
            side: "inner".into(),
            table: 20000,
            mark: 0x0100_0000,
            zone: 40000,
            rule_priority: 500,
        };
        let c = ids_comment(&ids, 0xff00_0000);
        assert!(c.len() <= 128, "nft comments hold at most 128 bytes: {c}");
        let r = parse_ids_comment(&c).unwrap();
        assert_eq!(
            (r.table, r.mark, r.zone, r.rule_priority, r.mask),
            (20000, 0x0100_0000, 40000, 500, 0xff00_0000)
        );
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
