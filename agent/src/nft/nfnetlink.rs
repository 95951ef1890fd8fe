//! mirrornet's nft table read straight from the kernel over nfnetlink: its chains with their
//! rules' comments and counters, and every map's elements with the keys rendered exactly as
//! `nft -j` renders them, so that they compare equal to what [`crate::nft`] plans.
//!
//! Why not `nft -j list table`: starting nft and parsing its JSON was most of a converged
//! pass's cost (about 55 of 85 ms with 127 networks, release build), while the dumps below take
//! a few milliseconds. nft is still run, and its JSON kept, when a change writes the table: only
//! nft itself can restore the table on a rollback.
//!
//! A dump is not one atomic read (chains, rules, sets and elements are separate requests), so
//! the ruleset generation is read before and after and the dump retried when a transaction
//! came in between, as nft does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use serde_json::{Value, json};

use super::{ObservedNft, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Set on a dump's messages when the kernel's view changed while it was being dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFPROTO_INET: u8 = 1;
const ENOENT: i32 = 2;

// Attributes (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_GEN_ID: u16 = 1;

const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_JUMP: i32 = -3;
/// libnftnl's rule userdata type for the comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

// nft's datatype numbers (nftables' datatype.h) for the key fields our maps use; a
// concatenation's type is its fields' types, 6 bits each, first field highest.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_MARK: u32 = 19;
const TYPE_IFNAME: u32 = 41;
const TYPE_BITS: u32 = 6;

/// How many times a dump is retried when the ruleset changes underneath it.
const ATTEMPTS: usize = 5;

/// One nfnetlink message of an answer: its type and its attributes (after the nfgenmsg).
struct Message {
    kind: u16,
    payload: Vec<u8>,
}

/// A netlink socket to the kernel's nf_tables.
pub struct Nfnetlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Nfnetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nfnetlink")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Nfnetlink {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
            // Dump answers come one datagram per receive; the kernel sizes them to at most
            // 32 KiB when the reader offers that much.
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends one request and collects its answer. `Ok(None)` when the kernel answered ENOENT.
    /// The flag says whether the kernel saw the ruleset change during a dump.
    fn request(
        &mut self,
        message: u16,
        flags: u16,
        attributes: &[(u16, &[u8])],
    ) -> io::Result<Option<(Vec<Message>, bool)>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = Vec::with_capacity(64);
        request.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        request.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | message).to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        request.extend_from_slice(&self.sequence.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
        request.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]); // nfgenmsg: family, v0, res_id
        for (kind, value) in attributes {
            let length = 4 + value.len();
            request.extend_from_slice(&(length as u16).to_ne_bytes());
            request.extend_from_slice(&kind.to_ne_bytes());
            request.extend_from_slice(value);
            request.resize(request.len().next_multiple_of(4), 0);
        }
        let total = request.len() as u32;
        request[..4].copy_from_slice(&total.to_ne_bytes());
        self.socket.send(&request, 0)?;

        let dump = flags & NLM_F_DUMP != 0;
        let mut answer = Vec::new();
        let mut interrupted = false;
        loop {
            self.buffer.clear();
            let received = self.socket.recv(&mut self.buffer, 0)?;
            let mut data = &self.buffer[..received.min(self.buffer.len())];
            while data.len() >= 16 {
                let length = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default());
                let length = length as usize;
                let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap_or_default());
                let message_flags = u16::from_ne_bytes(data[6..8].try_into().unwrap_or_default());
                let sequence = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
                if length < 16 || length > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let body = &data[16..length];
                data = &data[length.next_multiple_of(4).min(data.len())..];
                if sequence != self.sequence {
                    continue;
                }
                interrupted |= message_flags & NLM_F_DUMP_INTR != 0;
                match kind {
                    NLMSG_DONE => return Ok(Some((answer, interrupted))),
                    NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                            .unwrap_or(0);
                        return match -code {
                            0 => Ok(Some((answer, interrupted))),
                            ENOENT => Ok(None),
                            errno => Err(io::Error::from_raw_os_error(errno)),
                        };
                    }
                    _ => {
                        answer.push(Message {
                            kind: kind & 0xff,
                            payload: body.get(4..).unwrap_or_default().to_vec(),
                        });
                        if !dump {
                            return Ok(Some((answer, interrupted)));
                        }
                    }
                }
            }
        }
    }

    /// The ruleset generation (`NFT_MSG_GETGEN`), which the kernel bumps with every committed
    /// transaction in this namespace.
    pub fn generation(&mut self) -> io::Result<u32> {
        let answer = self.request(NFT_MSG_GETGEN, 0, &[])?;
        answer
            .into_iter()
            .flat_map(|(messages, _)| messages)
            .filter(|m| m.kind == NFT_MSG_NEWGEN)
            .flat_map(|m| {
                attributes(&m.payload)
                    .filter(|(kind, _)| *kind == NFTA_GEN_ID)
                    .map(|(_, value)| be32(value))
                    .collect::<Vec<_>>()
            })
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no generation in answer"))
    }

    /// Our table as the engine compares it, and the generation it was read at.
    pub fn observe(&mut self) -> io::Result<(u32, ObservedNft)> {
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let before = self.generation()?;
            match self.observe_once()? {
                Some(observed) if self.generation()? == before => return Ok((before, observed)),
                Some(_) => last_error = Some("the ruleset kept changing while it was read"),
                None => last_error = Some("a dump was interrupted"),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            last_error.unwrap_or_default(),
        ))
    }

    /// One read of the table; `None` when the kernel flagged a dump as interrupted.
    fn observe_once(&mut self) -> io::Result<Option<ObservedNft>> {
        let table = nul_terminated(TABLE);
        if self
            .request(NFT_MSG_GETTABLE, 0, &[(NFTA_TABLE_NAME, &table)])?
            .is_none()
        {
            return Ok(Some(ObservedNft::default()));
        }
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut maps: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();

        let Some((messages, false)) = self.request(NFT_MSG_GETCHAIN, NLM_F_DUMP, &[])? else {
            return Ok(None);
        };
        for message in messages {
            let mut ours = false;
            let mut name = None;
            for (kind, value) in attributes(&message.payload) {
                match kind {
                    NFTA_CHAIN_TABLE => ours = string(value) == TABLE,
                    NFTA_CHAIN_NAME => name = Some(string(value)),
                    _ => {}
                }
            }
            if let (true, Some(name)) = (ours, name) {
                chains.entry(name).or_default();
            }
        }

        let Some((messages, false)) =
            self.request(NFT_MSG_GETRULE, NLM_F_DUMP, &[(NFTA_RULE_TABLE, &table)])?
        else {
            return Ok(None);
        };
        for message in messages {
            let rule = Rule::parse(&message.payload);
            if rule.table != TABLE {
                continue;
            }
            if let Some((packets, bytes)) = rule.counter {
                let total = counters.entry(rule.chain.clone()).or_default();
                total.0 += packets;
                total.1 += bytes;
            }
            chains
                .entry(rule.chain)
                .or_default()
                .push(rule.comment.unwrap_or_else(|| "<no comment>".into()));
        }

        let Some((messages, false)) =
            self.request(NFT_MSG_GETSET, NLM_F_DUMP, &[(NFTA_SET_TABLE, &table)])?
        else {
            return Ok(None);
        };
        let sets: Vec<MapShape> = messages
            .iter()
            .filter_map(|m| MapShape::parse(&m.payload))
            .collect();
        for set in sets {
            let name = nul_terminated(&set.name);
            let Some((messages, false)) = self.request(
                NFT_MSG_GETSETELEM,
                NLM_F_DUMP,
                &[
                    (NFTA_SET_ELEM_LIST_TABLE, &table),
                    (NFTA_SET_ELEM_LIST_SET, &name),
                ],
            )?
            else {
                return Ok(None);
            };
            let elements = maps.entry(set.name.clone()).or_default();
            for message in messages {
                for (kind, list) in attributes(&message.payload) {
                    if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (_, element) in attributes(list).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
                        if let Some(pair) = set.element(element) {
                            elements.insert(pair);
                        }
                    }
                }
            }
        }
        Ok(Some(ObservedNft::from_parts(chains, maps, counters)))
    }
}

/// What the engine needs of one rule.
struct Rule {
    table: String,
    chain: String,
    comment: Option<String>,
    /// Packets and bytes summed over the rule's counters, if it has any.
    counter: Option<(u64, u64)>,
}

impl Rule {
    fn parse(payload: &[u8]) -> Self {
        let mut rule = Rule {
            table: String::new(),
            chain: String::new(),
            comment: None,
            counter: None,
        };
        for (kind, value) in attributes(payload) {
            match kind {
                NFTA_RULE_TABLE => rule.table = string(value),
                NFTA_RULE_CHAIN => rule.chain = string(value),
                NFTA_RULE_USERDATA => rule.comment = comment(value),
                NFTA_RULE_EXPRESSIONS => {
                    for (_, expression) in attributes(value).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
                        let mut name = String::new();
                        let mut data: &[u8] = &[];
                        for (kind, value) in attributes(expression) {
                            match kind {
                                NFTA_EXPR_NAME => name = string(value),
                                NFTA_EXPR_DATA => data = value,
                                _ => {}
                            }
                        }
                        if name != "counter" {
                            continue;
                        }
                        let total = rule.counter.get_or_insert((0, 0));
                        for (kind, value) in attributes(data) {
                            match kind {
                                NFTA_COUNTER_PACKETS => total.0 += be64(value),
                                NFTA_COUNTER_BYTES => total.1 += be64(value),
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        rule
    }
}

/// A rule's comment from its userdata (type-length-value records, as libnftnl writes them).
fn comment(mut userdata: &[u8]) -> Option<String> {
    while userdata.len() >= 2 {
        let (kind, length) = (userdata[0], usize::from(userdata[1]));
        let value = userdata.get(2..2 + length)?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(string(value));
        }
        userdata = &userdata[2 + length..];
    }
    None
}

/// One field of a map's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ifname,
    Ipv4,
    Ipv6,
    Mark,
    /// A type none of our maps uses: rendered so that it never equals a planned key.
    Other(usize),
}

impl Field {
    fn of_type(kind: u32, length: Option<usize>) -> Self {
        match kind {
            TYPE_IFNAME => Field::Ifname,
            TYPE_IPADDR => Field::Ipv4,
            TYPE_IP6ADDR => Field::Ipv6,
            TYPE_MARK => Field::Mark,
            _ => Field::Other(length.unwrap_or(4)),
        }
    }

    fn length(self) -> usize {
        match self {
            Field::Ifname | Field::Ipv6 => 16,
            Field::Ipv4 | Field::Mark => 4,
            Field::Other(n) => n,
        }
    }
}

/// A verdict map's name and key layout.
struct MapShape {
    name: String,
    fields: Vec<Field>,
}

impl MapShape {
    /// `None` for sets that are not maps, or not in our table.
    fn parse(payload: &[u8]) -> Option<Self> {
        let mut table = String::new();
        let mut name = String::new();
        let mut flags = 0;
        let mut key_type = 0;
        let mut key_length = 0;
        let mut field_lengths = Vec::new();
        for (kind, value) in attributes(payload) {
            match kind {
                NFTA_SET_TABLE => table = string(value),
                NFTA_SET_NAME => name = string(value),
                NFTA_SET_FLAGS => flags = be32(value),
                NFTA_SET_KEY_TYPE => key_type = be32(value),
                NFTA_SET_KEY_LEN => key_length = be32(value) as usize,
                NFTA_SET_DESC => {
                    for (_, concat) in attributes(value).filter(|(k, _)| *k == NFTA_SET_DESC_CONCAT)
                    {
                        for (_, field) in attributes(concat).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
                            field_lengths.extend(
                                attributes(field)
                                    .filter(|(k, _)| *k == NFTA_SET_FIELD_LEN)
                                    .map(|(_, v)| be32(v) as usize),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        if table != TABLE || flags & NFT_SET_MAP == 0 {
            return None;
        }
        // A concatenation's type lists its fields' types 6 bits each, the first field highest;
        // its description gives the field lengths (nft writes it for every concatenation).
        let count = if field_lengths.is_empty() {
            (0..5)
                .take_while(|i| key_type >> (TYPE_BITS * i) != 0)
                .count()
                .max(1)
        } else {
            field_lengths.len()
        };
        let fields = (0..count)
            .map(|i| {
                let shift = TYPE_BITS * (count - 1 - i) as u32;
                let kind = key_type.checked_shr(shift).unwrap_or(0) & ((1 << TYPE_BITS) - 1);
                let kind = if count == 1 { key_type } else { kind };
                let length = field_lengths
                    .get(i)
                    .copied()
                    .or((count == 1).then_some(key_length));
                Field::of_type(kind, length)
            })
            .collect();
        Some(Self { name, fields })
    }

    /// One element as (key in nft's JSON, jump target); `None` for anything but a jump (what
    /// the listing's parse keeps too) and for the closing half of a non-concatenated interval.
    fn element(&self, element: &[u8]) -> Option<(String, String)> {
        let mut key = None;
        let mut key_end = None;
        let mut target = None;
        for (kind, value) in attributes(element) {
            match kind {
                NFTA_SET_ELEM_KEY => key = data_value(value),
                NFTA_SET_ELEM_KEY_END => key_end = data_value(value),
                NFTA_SET_ELEM_DATA => target = jump_target(value),
                NFTA_SET_ELEM_FLAGS if be32(value) & NFT_SET_ELEM_INTERVAL_END != 0 => {
                    return None;
                }
                _ => {}
            }
        }
        let key = self.render(key?, key_end.unwrap_or(key?))?;
        Some((key.to_string(), target?))
    }

    /// The key as nft prints it: a concatenation as `{"concat": [...]}`, an address range as
    /// a prefix where it is one.
    fn render(&self, start: &[u8], end: &[u8]) -> Option<Value> {
        let mut rendered = Vec::with_capacity(self.fields.len());
        let (mut start, mut end) = (start, end);
        for field in &self.fields {
            let length = field.length();
            let stride = if self.fields.len() > 1 {
                length.next_multiple_of(4)
            } else {
                length
            };
            let (a, b) = (start.get(..length)?, end.get(..length)?);
            rendered.push(render_field(*field, a, b));
            start = start.get(stride.min(start.len())..)?;
            end = end.get(stride.min(end.len())..)?;
        }
        Some(if rendered.len() == 1 {
            rendered.pop()?
        } else {
            json!({ "concat": rendered })
        })
    }
}

fn render_field(field: Field, start: &[u8], end: &[u8]) -> Value {
    let raw = || json!({"raw": [hex(start), hex(end)]});
    match field {
        Field::Ifname if start == end => Value::String(string(start)),
        Field::Mark if start == end => {
            json!(u32::from_ne_bytes(start.try_into().unwrap_or_default()))
        }
        Field::Ipv4 => {
            let (Ok(a), Ok(b)) = (<[u8; 4]>::try_from(start), <[u8; 4]>::try_from(end)) else {
                return raw();
            };
            let (a, b) = (u32::from_be_bytes(a), u32::from_be_bytes(b));
            render_range(u128::from(a), u128::from(b), 32, |v| {
                Ipv4Addr::from(v as u32).to_string()
            })
        }
        Field::Ipv6 => {
            let (Ok(a), Ok(b)) = (<[u8; 16]>::try_from(start), <[u8; 16]>::try_from(end)) else {
                return raw();
            };
            render_range(u128::from_be_bytes(a), u128::from_be_bytes(b), 128, |v| {
                Ipv6Addr::from(v).to_string()
            })
        }
        _ => raw(),
    }
}

/// An address, a prefix or a range, as nft prints an interval element's bounds.
fn render_range(start: u128, end: u128, bits: u32, show: impl Fn(u128) -> String) -> Value {
    if start == end {
        return Value::String(show(start));
    }
    let host = start ^ end;
    let is_prefix = end > start && host & host.wrapping_add(1) == 0 && start & host == 0;
    if is_prefix {
        let length = bits - host.count_ones();
        json!({"prefix": {"addr": show(start), "len": length}})
    } else {
        json!({"range": [show(start), show(end)]})
    }
}

/// The bytes in an `NFTA_DATA_VALUE` nest.
fn data_value(nest: &[u8]) -> Option<&[u8]> {
    attributes(nest)
        .find(|(kind, _)| *kind == NFTA_DATA_VALUE)
        .map(|(_, value)| value)
}

/// The chain a verdict jumps to.
fn jump_target(nest: &[u8]) -> Option<String> {
    let (_, verdict) = attributes(nest).find(|(kind, _)| *kind == NFTA_DATA_VERDICT)?;
    let mut code = None;
    let mut chain = None;
    for (kind, value) in attributes(verdict) {
        match kind {
            NFTA_VERDICT_CODE => code = Some(be32(value) as i32),
            NFTA_VERDICT_CHAIN => chain = Some(string(value)),
            _ => {}
        }
    }
    (code == Some(NFT_JUMP)).then_some(chain).flatten()
}

/// What one nftables notification (a message of the NFNLGRP_NFTABLES group) is about: enough
/// to tell which network owns the object, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A table itself was added or deleted.
    Table { table: String },
    /// A chain, or a rule in it.
    Chain { table: String, chain: String },
    /// A set or map itself.
    Set { table: String, set: String },
    /// Elements of a map, with the chains they jump to.
    Elements {
        table: String,
        set: String,
        targets: Vec<String>,
    },
    /// The end of a transaction (`NFT_MSG_NEWGEN`): names no object.
    Generation,
    /// Objects, flowtables and what a newer kernel adds.
    Other,
}

/// The notifications in one datagram of the nftables multicast group.
pub fn notifications(datagram: &[u8]) -> Vec<Notification> {
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_DELTABLE: u16 = 2;
    const NFT_MSG_NEWCHAIN: u16 = 3;
    const NFT_MSG_DELCHAIN: u16 = 5;
    const NFT_MSG_NEWRULE: u16 = 6;
    const NFT_MSG_DELRULE: u16 = 8;
    const NFT_MSG_NEWSET: u16 = 9;
    const NFT_MSG_DELSET: u16 = 11;
    const NFT_MSG_NEWSETELEM: u16 = 12;
    const NFT_MSG_DELSETELEM: u16 = 14;
    let mut found = Vec::new();
    for (kind, body) in messages(datagram) {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let text = |wanted: u16| {
            attributes(body)
                .find(|(k, _)| *k == wanted)
                .map(|(_, v)| string(v))
                .unwrap_or_default()
        };
        found.push(match kind & 0xff {
            NFT_MSG_NEWTABLE | NFT_MSG_DELTABLE => Notification::Table {
                table: text(NFTA_TABLE_NAME),
            },
            NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN => Notification::Chain {
                table: text(NFTA_CHAIN_TABLE),
                chain: text(NFTA_CHAIN_NAME),
            },
            NFT_MSG_NEWRULE | NFT_MSG_DELRULE => Notification::Chain {
                table: text(NFTA_RULE_TABLE),
                chain: text(NFTA_RULE_CHAIN),
            },
            NFT_MSG_NEWSET | NFT_MSG_DELSET => Notification::Set {
                table: text(NFTA_SET_TABLE),
                set: text(NFTA_SET_NAME),
            },
            NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => Notification::Elements {
                table: text(NFTA_SET_ELEM_LIST_TABLE),
                set: text(NFTA_SET_ELEM_LIST_SET),
                targets: attributes(body)
                    .filter(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
                    .flat_map(|(_, list)| attributes(list))
                    .filter(|(k, _)| *k == NFTA_LIST_ELEM)
                    .filter_map(|(_, element)| {
                        attributes(element)
                            .find(|(k, _)| *k == NFTA_SET_ELEM_DATA)
                            .and_then(|(_, data)| jump_target(data))
                    })
                    .collect(),
            },
            NFT_MSG_NEWGEN => Notification::Generation,
            _ => Notification::Other,
        });
    }
    found
}

/// The messages of one multicast datagram, each as (type, body): the body follows the netlink
/// header (16 bytes) and the 4-byte family header that netfilter's `nfgenmsg` and a padded
/// `netconfmsg` alike take. Stops at a malformed length.
pub(crate) fn messages(mut datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if datagram.len() < 20 {
            return None;
        }
        let length = u32::from_ne_bytes(datagram[0..4].try_into().unwrap_or_default()) as usize;
        if length < 20 || length > datagram.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(datagram[4..6].try_into().unwrap_or_default());
        let body = &datagram[20..length];
        datagram = &datagram[length.next_multiple_of(4).min(datagram.len())..];
        Some((kind, body))
    })
}

/// The attributes in `data`, each as (type without the nested/byte-order flags, value).
pub(crate) fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if length < 4 || length > data.len() {
            return None;
        }
        let value = &data[4..length];
        data = &data[length.next_multiple_of(4).min(data.len())..];
        Some((kind, value))
    })
}

fn string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn be32(value: &[u8]) -> u32 {
    value
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
        .unwrap_or(0)
}

fn be64(value: &[u8]) -> u64 {
    value
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_render_as_nft_prints_them() {
        let v4 = |s: &str| u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()));
        let show = |v: u128| Ipv4Addr::from(v as u32).to_string();
        assert_eq!(
            render_range(v4("10.64.0.0"), v4("10.64.0.255"), 32, show),
            json!({"prefix": {"addr": "10.64.0.0", "len": 24}})
        );
        assert_eq!(
            render_range(v4("10.64.0.5"), v4("10.64.0.5"), 32, show),
            json!("10.64.0.5")
        );
        assert_eq!(
            render_range(v4("10.64.0.1"), v4("10.64.0.6"), 32, show),
            json!({"range": ["10.64.0.1", "10.64.0.6"]})
        );
        assert_eq!(
            render_range(0, u128::MAX, 128, |v| Ipv6Addr::from(v).to_string()),
            json!({"prefix": {"addr": "::", "len": 0}})
        );
    }

    #[test]
    fn attributes_stop_at_a_malformed_length() {
        let mut data = vec![8, 0, 1, 0, 1, 2, 3, 4];
        data.extend_from_slice(&[200, 0, 2, 0]);
        let seen: Vec<_> = attributes(&data).collect();
        assert_eq!(seen, vec![(1, &[1u8, 2, 3, 4][..])]);
    }

    /// One attribute: length, type, value, padded to 4.
    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// One nftables notification of type `message` with `body` after the nfgenmsg.
    fn notification(message: u16, body: &[u8]) -> Vec<u8> {
        let mut out = ((20 + body.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | message).to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn notifications_name_the_chain_or_the_jump_targets() {
        let nested = 0x8000;
        let verdict = [
            attribute(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes()),
            attribute(NFTA_VERDICT_CHAIN, b"xlate-dst.b\0"),
        ]
        .concat();
        let element = attribute(
            NFTA_SET_ELEM_DATA | nested,
            &attribute(NFTA_DATA_VERDICT | nested, &verdict),
        );
        let elements = [
            attribute(NFTA_SET_ELEM_LIST_TABLE, b"mirrornet\0"),
            attribute(NFTA_SET_ELEM_LIST_SET, b"dnat\0"),
            attribute(
                NFTA_SET_ELEM_LIST_ELEMENTS | nested,
                &attribute(NFTA_LIST_ELEM | nested, &element),
            ),
        ]
        .concat();
        let rule = [
            attribute(NFTA_RULE_TABLE, b"mirrornet\0"),
            attribute(NFTA_RULE_CHAIN, b"steer.a.inner.outer\0"),
        ]
        .concat();
        let datagram = [
            notification(14, &elements),
            notification(8, &rule),
            notification(NFT_MSG_NEWGEN, &attribute(NFTA_GEN_ID, &7u32.to_be_bytes())),
        ]
        .concat();
        assert_eq!(
            notifications(&datagram),
            vec![
                Notification::Elements {
                    table: "mirrornet".into(),
                    set: "dnat".into(),
                    targets: vec!["xlate-dst.b".into()],
                },
                Notification::Chain {
                    table: "mirrornet".into(),
                    chain: "steer.a.inner.outer".into(),
                },
                Notification::Generation,
            ]
        );
    }

    #[test]
    fn comments_come_from_libnftnl_userdata() {
        let mut userdata = vec![1, 2, 9, 9];
        userdata.extend_from_slice(&[0, 4, b'm', b'n', b':', 0]);
        assert_eq!(comment(&userdata).as_deref(), Some("mn:"));
        assert_eq!(comment(&[1, 1, 7]), None);
    }
}
