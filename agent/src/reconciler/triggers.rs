//! Triggers: what makes the loop run a pass, the desired networks aside: kernel events
//! (rtnetlink groups, the nftables group of nfnetlink), sysctls that drift, and the resync.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use tokio::sync::mpsc;
use tracing::warn;

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct Trigger {
    pub cause: Cause,
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

/// Kicks a pass on every link, address, route and rule change.
pub(super) fn spawn_netlink_watch(kick: mpsc::Sender<Cause>) {
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
                while messages.next().await.is_some() {
                    if kick.try_send(Cause::Drift).is_err() {
                        // A pass is already queued; it will see this change too.
                    }
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot subscribe to rtnetlink events; relying on resync"),
    }
}

/// Kicks a pass whenever the nftables ruleset changes: the kernel multicasts every
/// transaction (elements included, which `nft monitor` 1.0.6 does not print) to the
/// NFNLGRP_NFTABLES group of a netfilter netlink socket. Any change kicks; a pass over an
/// untouched table costs one listing and writes nothing.
pub(super) fn spawn_nft_watch(kick: mpsc::Sender<Cause>) {
    /// NFNLGRP_NFTABLES from linux/netfilter/nfnetlink.h.
    const NFNLGRP_NFTABLES: u32 = 7;
    spawn_group_watch(
        netlink_sys::protocols::NETLINK_NETFILTER,
        1 << (NFNLGRP_NFTABLES - 1),
        "nftables",
        kick,
    );
}

/// Kicks a pass whenever an interface's forwarding or reverse-path setting changes: the kernel
/// announces those sysctls in netconf messages (RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF).
/// This build cannot decode them (netlink-packet-route 0.34), and need not: any message kicks.
/// Returns whether the subscription holds, so that the sysctl watch polls only what no
/// message announces.
pub(super) fn spawn_netconf_watch(kick: mpsc::Sender<Cause>) -> bool {
    /// RTNLGRP_IPV4_NETCONF and RTNLGRP_IPV6_NETCONF from linux/rtnetlink.h.
    const GROUPS: [u32; 2] = [24, 25];
    spawn_group_watch(
        netlink_sys::protocols::NETLINK_ROUTE,
        GROUPS.iter().map(|g| 1 << (g - 1)).sum(),
        "netconf",
        kick,
    )
}

/// Kicks a pass on every message of the multicast `groups` of netlink `protocol`; returns
/// whether the subscription holds (if not, the resync is the backstop).
fn spawn_group_watch(
    protocol: isize,
    groups: u32,
    what: &'static str,
    kick: mpsc::Sender<Cause>,
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
                Ok(_) => {
                    let _ = kick.try_send(Cause::Drift);
                }
                Err(e) => {
                    warn!(error = %e, "reading {what} events");
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
    kick: mpsc::Sender<Cause>,
    watched: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    announced_by_netconf: bool,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let drifted = watched
                .lock()
                .map(|w| {
                    w.iter()
                        .filter(|(path, _)| !(announced_by_netconf && announced(path)))
                        .any(|(path, value)| crate::sysctl::read(path).is_some_and(|v| v != *value))
                })
                .unwrap_or(false);
            if drifted {
                let _ = kick.try_send(Cause::Drift);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::announced;

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
