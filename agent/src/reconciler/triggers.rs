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
    use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};
    /// NFNLGRP_NFTABLES from linux/netfilter/nfnetlink.h.
    const NFNLGRP_NFTABLES: u32 = 7;
    let socket = TokioSocket::new(protocols::NETLINK_NETFILTER).and_then(|mut s| {
        s.socket_mut()
            .bind(&SocketAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)))?;
        Ok(s)
    });
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot subscribe to nftables events; relying on resync");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            match socket.recv_from_full().await {
                Ok(_) => {
                    let _ = kick.try_send(Cause::Drift);
                }
                Err(e) => {
                    warn!(error = %e, "reading nftables events");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Kicks a pass when a sysctl a network needs no longer holds its value. Sysctl writes raise
/// no event this build can decode (netconf messages), and reading a few /proc files is cheap.
pub(super) fn spawn_sysctl_watch(
    kick: mpsc::Sender<Cause>,
    watched: Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let drifted = watched
                .lock()
                .map(|w| {
                    w.iter()
                        .any(|(path, value)| crate::sysctl::read(path).is_some_and(|v| v != *value))
                })
                .unwrap_or(false);
            if drifted {
                let _ = kick.try_send(Cause::Drift);
            }
        }
    });
}
