//! Neighbours: the proxy entries through which a network answers address resolution for its
//! on-link aliases, on its side interfaces.

use std::collections::BTreeSet;

use super::{Diff, Ownership};
use crate::plan::NetworkPlan;
use crate::step::{Phase, Step};

/// The proxy entries a planned network adds, and ours on its interfaces it no longer needs.
/// Entries on `cycled` links count as gone: the move into or out of a VRF flushes them.
pub(super) fn network(
    diff: &mut Diff,
    owned: &Ownership,
    p: &NetworkPlan,
    interfaces: &BTreeSet<String>,
    cycled: &BTreeSet<String>,
) {
    let have: Vec<&crate::plan::Proxy> = owned
        .proxies(interfaces)
        .into_iter()
        .filter(|p| !cycled.contains(&p.interface))
        .collect();
    let want: BTreeSet<&crate::plan::Proxy> = p.proxies.iter().collect();
    let held: BTreeSet<&crate::plan::Proxy> = have.iter().copied().collect();
    for proxy in want.difference(&held) {
        diff.push(
            Phase::Proxies,
            Step::AddProxy {
                network: p.name.clone(),
                proxy: (*proxy).clone(),
            },
        );
    }
    for proxy in held.difference(&want) {
        diff.push(
            Phase::WithdrawProxies,
            Step::DeleteProxy {
                network: p.name.clone(),
                proxy: (*proxy).clone(),
            },
        );
    }
}

/// Every proxy entry of ours on a removed network's interfaces.
pub(super) fn removed(
    diff: &mut Diff,
    owned: &Ownership,
    network: &str,
    interfaces: &BTreeSet<String>,
) {
    for proxy in owned.proxies(interfaces) {
        diff.push(
            Phase::WithdrawProxies,
            Step::DeleteProxy {
                network: network.into(),
                proxy: proxy.clone(),
            },
        );
    }
}
