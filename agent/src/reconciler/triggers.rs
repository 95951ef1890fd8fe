//! Triggers: what makes the loop run a pass, the desired networks aside: kernel events
//! (rtnetlink groups, the nftables group of nfnetlink), sysctls that drift, and the resync.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::scope::KernelEvent;
use crate::plan::Proxy;

/// Where the watches send what they saw. Unbounded, so that no event is dropped: the pass that
/// follows must know every network a burst touched (a flushed table is a few thousand small
/// messages, drained in one go).
pub(super) type Kicks = mpsc::UnboundedSender<Notice>;

/// One kernel notification: what it concerns, and the rtnetlink message itself, with which the
/// loop keeps its view of the node up to date.
#[derive(Debug)]
pub(super) struct Notice {
    pub event: KernelEvent,
    pub message: Option<netlink_packet_route::RouteNetlinkMessage>,
}

impl From<KernelEvent> for Notice {
    fn from(event: KernelEvent) -> Self {
        Self {
            event,
            message: None,
        }
    }
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct Trigger {
    pub cause: Cause,
    /// Whether the pass converged every network or only those an event concerned.
    pub scope: Breadth,
}

/// How much of the node a pass converged.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prometheus_client::encoding::EncodeLabelValue,
)]
pub enum Breadth {
    /// Every desired network.
    Node,
    /// The networks owning what an event changed.
    Networks,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prometheus_client::encoding::EncodeLabelValue,
)]
pub enum Cause {
    /// The desired networks changed.
    Spec,
    /// The kernel changed under us.
    Drift,
    /// The periodic full resync.
    Resync,
}

/// Sends every link, address, route and rule change, decoded as far as ownership needs.
pub(super) fn spawn_netlink_watch(kick: Kicks) {
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
    ];
    match rtnetlink::new_multicast_connection(&groups) {
        Ok((connection, _handle, mut messages)) => {
            tokio::spawn(connection);
            tokio::spawn(async move {
                // An overflow of the socket arrives as an `Overrun` message, which
                // `route_event` cannot trace: a full pass follows.
                while let Some((message, _)) = messages.next().await {
                    let event = route_event(&message);
                    let message = match message.payload {
                        netlink_packet_core::NetlinkPayload::InnerMessage(m) => Some(m),
                        _ => None,
                    };
                    if kick.send(Notice { event, message }).is_err() {
                        return;
                    }
                }
                warn!("the rtnetlink event stream ended; relying on resync");
                let _ = kick.send(KernelEvent::Unknown.into());
            });
        }
        Err(e) => warn!(error = %e, "cannot subscribe to rtnetlink events; relying on resync"),
    }
}

/// What an rtnetlink notification is about.
fn route_event(
    message: &netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
) -> KernelEvent {
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_route::RouteNetlinkMessage as M;
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::route::RouteAttribute;
    use netlink_packet_route::rule::RuleAttribute;
    let NetlinkPayload::InnerMessage(message) = &message.payload else {
        return KernelEvent::Unknown;
    };
    match message {
        M::NewLink(m) | M::DelLink(m) | M::SetLink(m) => KernelEvent::Link {
            index: m.header.index,
            name: m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }),
        },
        M::NewAddress(m) | M::DelAddress(m) => KernelEvent::Address {
            index: m.header.index,
        },
        M::NewRoute(m) | M::DelRoute(m) => KernelEvent::Route {
            table: crate::netlink::route_table(m),
            interface: m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
        },
        M::NewRule(m) | M::DelRule(m) => KernelEvent::Rule {
            table: crate::netlink::rule_table(m),
            priority: m.attributes.iter().find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            }),
        },
        _ => KernelEvent::Unknown,
    }
}

/// Sends every change of the nftables ruleset: the kernel multicasts every transaction
/// (elements included, which `nft monitor` 1.0.6 does not print) to the NFNLGRP_NFTABLES group
/// of a netfilter netlink socket, one message per object.
pub(super) fn spawn_nft_watch(kick: Kicks) {
    /// NFNLGRP_NFTABLES from linux/netfilter/nfnetlink.h.
    const NFNLGRP_NFTABLES: u32 = 7;
    spawn_group_watch(
        netlink_sys::protocols::NETLINK_NETFILTER,
        1 << (NFNLGRP_NFTABLES - 1),
        "nftables",
        kick,
        |datagram| {
            crate::nft::nfnetlink::notifications(datagram)
                .into_iter()
                .map(KernelEvent::Nft)
                .collect()
        },
    );
}

/// Sends every change of an interface's forwarding or reverse-path setting: the kernel
/// announces those sysctls in netconf messages (RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF).
/// netlink-packet-route 0.34 cannot decode them; the link they concern is their one attribute
/// this needs. Returns whether the subscription holds, so that the sysctl watch polls only
/// what no message announces.
pub(super) fn spawn_netconf_watch(kick: Kicks) -> bool {
    /// RTNLGRP_IPV4_NETCONF and RTNLGRP_IPV6_NETCONF from linux/rtnetlink.h.
    const GROUPS: [u32; 2] = [24, 25];
    spawn_group_watch(
        netlink_sys::protocols::NETLINK_ROUTE,
        GROUPS.iter().map(|g| 1 << (g - 1)).sum(),
        "netconf",
        kick,
        netconf_events,
    )
}

/// ENOBUFS: what a netlink socket answers once the kernel dropped messages it had no room for.
const ENOBUFS: i32 = 105;

/// The links the netconf messages of one datagram are about (`struct netconfmsg`, then
/// NETCONFA_IFINDEX; negative for `all` and `default`).
fn netconf_events(datagram: &[u8]) -> Vec<KernelEvent> {
    use crate::nft::nfnetlink::{attributes, messages};
    const NETCONFA_IFINDEX: u16 = 1;
    let mut events: Vec<KernelEvent> = messages(datagram)
        .map(|(_, body)| {
            attributes(body)
                .find(|(kind, value)| *kind == NETCONFA_IFINDEX && value.len() >= 4)
                .map_or(KernelEvent::Unknown, |(_, value)| KernelEvent::Netconf {
                    index: i32::from_ne_bytes(value[..4].try_into().unwrap_or_default()),
                })
        })
        .collect();
    if events.is_empty() {
        events.push(KernelEvent::Unknown);
    }
    events
}

/// Sends the events `decode` finds in every datagram of the multicast `groups` of netlink
/// `protocol`; returns whether the subscription holds (if not, the resync is the backstop).
fn spawn_group_watch(
    protocol: isize,
    groups: u32,
    what: &'static str,
    kick: Kicks,
    decode: fn(&[u8]) -> Vec<KernelEvent>,
) -> bool {
    use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
    let socket = TokioSocket::new(protocol).and_then(|mut s| {
        s.socket_mut().bind(&SocketAddr::new(0, groups))?;
        Ok(s)
    });
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot subscribe to {what} events; relying on resync");
            return false;
        }
    };
    tokio::spawn(async move {
        loop {
            match socket.recv_from_full().await {
                Ok((datagram, _)) => {
                    for event in decode(&datagram) {
                        if kick.send(event.into()).is_err() {
                            return;
                        }
                    }
                }
                // The socket's buffer overflowed (a burst such as a first transaction of a
                // thousand networks): some events are lost, so nobody knows which networks
                // they concerned, and the pass that follows is over the whole node.
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                    debug!("{what} events overflowed the socket; a full pass follows");
                    if kick.send(KernelEvent::Unknown.into()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading {what} events");
                    if kick.send(KernelEvent::Unknown.into()).is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    true
}

/// Whether the kernel announces a change of sysctl `path` in a netconf message: IPv4
/// `forwarding` and `rp_filter`, IPv6 `forwarding` (net/ipv4/devinet.c, net/ipv6/addrconf.c).
/// `src_valid_mark` and `force_forwarding` raise none.
pub fn announced(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("net/") else {
        return false;
    };
    matches!(
        rest.split_once("/conf/")
            .map(|(family, r)| (family, r.rsplit_once('/').map(|(_, key)| key))),
        Some(("ipv4", Some("forwarding" | "rp_filter")) | ("ipv6", Some("forwarding")))
    )
}

/// Kicks a pass when a sysctl a network needs no longer holds its value, for the sysctls no
/// netconf message announces (all of them, when `announced_by_netconf` is false). Polled, as
/// a sysctl write raises no other event; at a thousand networks, polling every sysctl cost
/// ten per cent of a core while idle (BENCHMARKS.md), hence only these.
pub(super) fn spawn_sysctl_watch(
    kick: Kicks,
    watched: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    announced_by_netconf: bool,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let drifted: Vec<String> = watched
                .lock()
                .map(|w| {
                    w.iter()
                        .filter(|(path, _)| !(announced_by_netconf && announced(path)))
                        .filter(|(path, value)| {
                            crate::sysctl::read(path).is_some_and(|v| v != *value)
                        })
                        .map(|(path, _)| path.clone())
                        .collect()
                })
                .unwrap_or_default();
            for path in drifted {
                if kick.send(KernelEvent::Sysctl { path }.into()).is_err() {
                    return;
                }
            }
        }
    });
}

/// Kicks a pass when a proxy neighbour entry an on-link network needs is gone. Polled once a
/// second, and only while some network needs one: the kernel sends no notification when such
/// an entry is added or deleted.
pub(super) fn spawn_proxy_watch(kick: Kicks, watched: Arc<std::sync::Mutex<Vec<Proxy>>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut netlink: Option<crate::netlink::Netlink> = None;
        let mut indexes: BTreeMap<String, u32> = BTreeMap::new();
        loop {
            tick.tick().await;
            let wanted: Vec<Proxy> = watched.lock().map(|w| w.clone()).unwrap_or_default();
            if wanted.is_empty() {
                continue;
            }
            if netlink.is_none() {
                netlink = crate::netlink::Netlink::connect().ok();
            }
            let Some(nl) = netlink.as_ref() else {
                continue;
            };
            let Ok(entries) = nl.proxy_entries().await else {
                continue;
            };
            let held: BTreeSet<(u32, std::net::IpAddr)> = entries
                .into_iter()
                .filter(|(_, _, ours)| *ours)
                .map(|(index, address, _)| (index, address))
                .collect();
            let mut gone: BTreeSet<String> = BTreeSet::new();
            for p in &wanted {
                if !indexes.contains_key(&p.interface)
                    && let Ok(Some(index)) = nl.link_index(&p.interface).await
                {
                    indexes.insert(p.interface.clone(), index);
                }
                // An interface that is gone is the link watch's news, not this one's.
                let Some(index) = indexes.get(&p.interface) else {
                    continue;
                };
                if !held.contains(&(*index, p.address)) {
                    gone.insert(p.interface.clone());
                }
            }
            for interface in gone {
                // The index may be stale (the link was made again): look it up anew.
                indexes.remove(&interface);
                if kick.send(KernelEvent::Proxy { interface }.into()).is_err() {
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{KernelEvent, announced, netconf_events};

    #[test]
    fn netconf_messages_name_their_link() {
        // RTM_NEWNETCONF for link 7, then one for `all` (-1): header, family, NETCONFA_IFINDEX.
        let message = |index: i32| {
            let mut m = 28u32.to_ne_bytes().to_vec();
            m.extend_from_slice(&80u16.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&[2, 0, 0, 0]);
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&1u16.to_ne_bytes());
            m.extend_from_slice(&index.to_ne_bytes());
            m
        };
        let datagram = [message(7), message(-1)].concat();
        assert_eq!(
            netconf_events(&datagram),
            vec![
                KernelEvent::Netconf { index: 7 },
                KernelEvent::Netconf { index: -1 }
            ]
        );
        assert_eq!(netconf_events(&[1, 2, 3]), vec![KernelEvent::Unknown]);
    }

    #[test]
    fn netconf_announces_forwarding_and_rp_filter_only() {
        for (path, expected) in [
            ("net/ipv4/conf/eth1/forwarding", true),
            ("net/ipv4/conf/eth1/rp_filter", true),
            ("net/ipv6/conf/eth1/forwarding", true),
            ("net/ipv6/conf/all/forwarding", true),
            ("net/ipv4/conf/eth1/src_valid_mark", false),
            ("net/ipv6/conf/eth1/force_forwarding", false),
            ("net/ipv4/ip_forward", false),
        ] {
            assert_eq!(announced(path), expected, "{path}");
        }
    }
}
