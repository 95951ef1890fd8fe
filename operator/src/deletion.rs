//! When a deleting network may let go: every node that may hold its kernel state must report
//! it removed (`Removed`=True in its entry), except nodes that are gone or have stayed
//! NotReady beyond the grace period, which are released (and announced with a Warning).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use mirrornet_api::MirrorNetwork;
use mirrornet_api::conditions as c;

use crate::selection::{NodeFacts, selected};

/// Why a node no longer holds up a deletion although it did not report removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The Node object no longer exists.
    Gone,
    /// The kubelet has reported NotReady for longer than the grace period.
    NotReadyTooLong,
}

/// The verdict for a deleting network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gate {
    /// Nodes that must still report removal.
    pub waiting: Vec<String>,
    /// Nodes let go without a report.
    pub released: Vec<(String, Release)>,
}

impl Gate {
    pub fn is_open(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// True when the node's agent reported the network's state removed.
pub fn reported_removed(net: &MirrorNetwork, node: &str) -> bool {
    net.status.iter().flat_map(|s| &s.nodes).any(|e| {
        e.node_name == node
            && e.conditions
                .iter()
                .any(|cond| cond.type_ == c::REMOVED && cond.status == "True")
    })
}

/// Nodes that may hold the network's kernel state: those it selects (when it ever had ids,
/// since without ids no agent programs anything) and those whose entry does not say removed.
pub fn holders(net: &MirrorNetwork, nodes: &[NodeFacts]) -> BTreeSet<String> {
    let mut holders: BTreeSet<String> = BTreeSet::new();
    let allocated = net.status.as_ref().is_some_and(|s| s.allocation.is_some());
    if allocated {
        holders.extend(selected(net.spec.node_selector.as_ref(), nodes).map(|n| n.name.clone()));
    }
    holders.extend(
        net.status
            .iter()
            .flat_map(|s| &s.nodes)
            .map(|e| e.node_name.clone()),
    );
    holders.retain(|n| !reported_removed(net, n));
    holders
}

/// Decides which nodes a deleting network still waits for.
pub fn gate(net: &MirrorNetwork, nodes: &[NodeFacts], now: Timestamp, grace: Duration) -> Gate {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let mut gate = Gate::default();
    for name in holders(net, nodes) {
        match nodes.iter().find(|n| n.name == name) {
            None => gate.released.push((name, Release::Gone)),
            Some(facts) => match facts.not_ready_since {
                Some(Some(since)) if now.duration_since(since) > grace => {
                    gate.released.push((name, Release::NotReadyTooLong))
                }
                _ => gate.waiting.push(name),
            },
        }
    }
    gate
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrornet_api::fixtures::{NetworkExt, network, node, node_not_ready_since};

    #[test]
    fn deletion_gate() {
        let gw = [("gw", "true")];
        let now = Timestamp::from_second(10_000).unwrap();
        let grace = Duration::from_secs(300);
        let nodes = vec![
            NodeFacts::of(&node("ready", &gw, true)),
            NodeFacts::of(&node_not_ready_since("briefly-down", &gw, 9_900)),
            NodeFacts::of(&node_not_ready_since("long-down", &gw, 1_000)),
            NodeFacts::of(&node("unselected", &[], true)),
        ];
        let allocated = network("n").created(1).selector(&gw).allocated().deleting();
        /// (case, network, nodes waited for, nodes released)
        type Row<'a> = (
            &'a str,
            MirrorNetwork,
            Vec<&'a str>,
            Vec<(&'a str, Release)>,
        );
        let table: Vec<Row> = vec![
            (
                "every selected node is waited for",
                allocated.clone(),
                vec!["briefly-down", "ready"],
                vec![("long-down", Release::NotReadyTooLong)],
            ),
            (
                "removed nodes are done",
                allocated
                    .clone()
                    .node_entry("ready", c::REMOVED, "True")
                    .node_entry("briefly-down", c::REMOVED, "True"),
                vec![],
                vec![("long-down", Release::NotReadyTooLong)],
            ),
            (
                "a node that left the selector but still holds state is waited for",
                allocated
                    .clone()
                    .node_entry("unselected", c::PROGRAMMED, "True"),
                vec!["briefly-down", "ready", "unselected"],
                vec![("long-down", Release::NotReadyTooLong)],
            ),
            (
                "a vanished node is released",
                allocated.clone().node_entry("gone", c::PROGRAMMED, "True"),
                vec!["briefly-down", "ready"],
                vec![
                    ("gone", Release::Gone),
                    ("long-down", Release::NotReadyTooLong),
                ],
            ),
            (
                "a network that never had ids waits for nobody",
                network("n").created(1).selector(&gw).deleting(),
                vec![],
                vec![],
            ),
        ];
        for (name, net, waiting, released) in table {
            let mut got = gate(&net, &nodes, now, grace);
            got.released.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got.waiting, waiting, "{name}");
            let released: Vec<_> = released
                .into_iter()
                .map(|(n, r)| (n.to_string(), r))
                .collect();
            assert_eq!(got.released, released, "{name}");
        }
    }
}
