//! The middle of the reconcile pipeline, with no client: from a network, the other networks
//! and the nodes (all read from the watch caches), decide its ids, its summary status and the
//! events worth telling the user.
//!
//! ```text
//! network ─ validate ─┬─ invalid ──────────────> InvalidSpec (ids kept if held, none new)
//!                     ├─ older network claims ─> Conflict (ids released)
//!                     └─ allocate ─┬─ error ──> AllocationFailed
//!                                  └─ ids ────> node states -> Ready / Progressing / Degraded
//! ```

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use mirrornet_api::allocation::Allocator;
use mirrornet_api::conditions::{self as c, reason};
use mirrornet_api::events::Notice;
use mirrornet_api::{Allocation, MirrorNetwork, MirrorNetworkStatus};

use crate::conflict;
use crate::deletion::{self, Gate, Release};
use crate::selection::{NodeFacts, selected};
use crate::summary::{self, Health, NodeCounts, node_standing};

/// What the reconcile reads, taken from the watch caches.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub network: &'a MirrorNetwork,
    /// Every network known, possibly including an older copy of `network`.
    pub networks: &'a [Arc<MirrorNetwork>],
    pub nodes: &'a [NodeFacts],
    pub now: Timestamp,
}

/// The outcome of deciding about a live network.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The summary part of status (never `nodes`, which the agents own).
    pub status: MirrorNetworkStatus,
    /// True when `status` differs from what is recorded, so it must be written.
    pub status_changed: bool,
    pub notices: Vec<Notice>,
    /// When to look again even if nothing changes.
    pub requeue: Duration,
}

/// How often a settled network is looked at again (the backstop for missed events).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often a network refused for a conflict re-checks: the older network may go away.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// The summary fields of `status` only, for comparison and for writing.
pub fn summary_of(status: Option<&MirrorNetworkStatus>) -> MirrorNetworkStatus {
    let Some(s) = status else {
        return MirrorNetworkStatus::default();
    };
    MirrorNetworkStatus {
        observed_generation: s.observed_generation,
        conditions: s.conditions.clone(),
        allocation: s.allocation.clone(),
        ready_nodes: s.ready_nodes,
        desired_nodes: s.desired_nodes,
        backend: s.backend.clone(),
        nodes: Vec::new(),
    }
}

fn describe(allocation: &Allocation) -> String {
    allocation
        .sides
        .iter()
        .map(|s| {
            format!(
                "{}: table {}, mark {:#x}/{:#x}, zone {}, rule priority {}",
                s.side, s.table, s.mark, allocation.mark_mask, s.zone, s.rule_priority
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

const WARNING_REASONS: [&str; 5] = [
    reason::INVALID_SPEC,
    reason::CONFLICT,
    reason::ALLOCATION_FAILED,
    reason::NODE_FAILED,
    reason::NODE_NOT_READY,
];

/// Events for the change from `before` to `after`: one whenever the Ready reason changes
/// (that is every state a user tells apart), one when ids are allocated or released.
pub fn notices(before: &MirrorNetworkStatus, after: &MirrorNetworkStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    match (&before.allocation, &after.allocation) {
        (None, Some(a)) => out.push(Notice {
            warning: false,
            reason: reason::ALLOCATED.into(),
            note: format!("kernel ids allocated: {}", describe(a)),
            action: "Allocate",
        }),
        (Some(old), Some(a)) if old != a => out.push(Notice {
            warning: false,
            reason: reason::ALLOCATED.into(),
            note: format!("kernel ids changed with the sides: {}", describe(a)),
            action: "Allocate",
        }),
        (Some(old), None) => out.push(Notice {
            warning: false,
            reason: reason::IDS_RELEASED.into(),
            note: format!("kernel ids released: {}", describe(old)),
            action: "Release",
        }),
        _ => {}
    }
    let ready = |s: &MirrorNetworkStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == c::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((status, why, message)) = ready(after)
        && ready(before).map(|(s, r, _)| (s, r)) != Some((status, why.clone()))
    {
        out.push(Notice {
            warning: WARNING_REASONS.contains(&why.as_str()),
            note: message,
            reason: why,
            action: "Reconcile",
        });
    }
    out
}

/// Decides about a network that is not being deleted. `allocator` holds every network's
/// ids; it is updated in place (ids allocated, or released on a conflict).
pub fn decide_live(observed: Observed<'_>, allocator: &mut Allocator) -> Decision {
    let net = observed.network;
    let name = net.name_any();
    let generation = net.metadata.generation;
    let before = summary_of(net.status.as_ref());
    let mut allocation = before.allocation.clone();
    let mut requeue = RESYNC;
    let selected_nodes: Vec<&NodeFacts> =
        selected(net.spec.node_selector.as_ref(), observed.nodes).collect();
    let entries = net.status.iter().flat_map(|s| &s.nodes);

    let health = match mirrornet_api::validate(&net.spec) {
        // Ids already held stay reserved, so that fixing the spec brings the same ids back;
        // agents run the same validation and program nothing meanwhile.
        Err(errors) => Health::InvalidSpec(errors.to_string()),
        Ok(valid) => match conflict::find(net, observed.networks, observed.nodes) {
            Some(found) => {
                // The newer network must not keep ids or datapath on the contested interface.
                allocator.release(&name);
                allocation = None;
                requeue = CONFLICT_RECHECK;
                Health::Conflict(found.to_string())
            }
            None => match allocator.allocate(&name, &valid) {
                Err(e) => Health::AllocationFailed(e.to_string()),
                Ok(ids) => {
                    allocation = Some(ids);
                    let generation = generation.unwrap_or_default();
                    let counts = NodeCounts::from_standings(selected_nodes.iter().map(|n| {
                        let entry = net
                            .status
                            .iter()
                            .flat_map(|s| &s.nodes)
                            .find(|e| e.node_name == n.name);
                        (n.name.as_str(), node_standing(n, entry, generation))
                    }));
                    // Suspended, the ids stay allocated so that resuming brings the same ones.
                    if valid.suspend {
                        Health::Suspended(counts)
                    } else {
                        Health::Nodes(counts)
                    }
                }
            },
        },
    };
    let ready = match &health {
        Health::Nodes(counts) => counts.programmed.len(),
        _ => 0,
    };
    let status = MirrorNetworkStatus {
        observed_generation: generation,
        conditions: summary::conditions(&health, generation, &before.conditions, observed.now),
        allocation,
        ready_nodes: Some(count(ready)),
        desired_nodes: Some(count(selected_nodes.len())),
        backend: summary::backend(
            entries.filter(|e| selected_nodes.iter().any(|n| n.name == e.node_name)),
        ),
        nodes: Vec::new(),
    };
    Decision {
        status_changed: status != before,
        notices: notices(&before, &status),
        status,
        requeue,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The outcome of deciding about a network being deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Teardown {
    pub gate: Gate,
    pub status: MirrorNetworkStatus,
    pub status_changed: bool,
    /// Events to publish now (state changes while waiting).
    pub notices: Vec<Notice>,
    /// Events to publish once the finalizer is lifted.
    pub final_notices: Vec<Notice>,
}

/// Decides whether a deleting network may go, and what its status says meanwhile.
pub fn decide_teardown(observed: Observed<'_>, grace: Duration) -> Teardown {
    let net = observed.network;
    let generation = net.metadata.generation;
    let before = summary_of(net.status.as_ref());
    let gate = deletion::gate(net, observed.nodes, observed.now, grace);
    let health = Health::Deleting {
        waiting: gate.waiting.clone(),
    };
    let status = MirrorNetworkStatus {
        observed_generation: generation,
        conditions: summary::conditions(&health, generation, &before.conditions, observed.now),
        ..before.clone()
    };
    let mut final_notices: Vec<Notice> = gate
        .released
        .iter()
        .map(|(node, why)| Notice {
            warning: true,
            reason: reason::NODE_RELEASED.into(),
            note: match why {
                Release::Gone => format!(
                    "node {node} no longer exists; not waiting for it to remove the network's state"
                ),
                Release::NotReadyTooLong => format!(
                    "node {node} stayed NotReady beyond the {}s grace period; its kernel state for this network may remain until its agent runs again",
                    grace.as_secs()
                ),
            },
            action: "Teardown",
        })
        .collect();
    final_notices.push(Notice {
        warning: false,
        reason: reason::TEARDOWN_COMPLETE.into(),
        note: match &before.allocation {
            Some(a) => format!(
                "every node removed the network; kernel ids released: {}",
                describe(a)
            ),
            None => "every node removed the network".into(),
        },
        action: "Teardown",
    });
    Teardown {
        status_changed: status != before,
        notices: notices(&before, &status),
        gate,
        status,
        final_notices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrornet_api::allocation::IdRanges;
    use mirrornet_api::fixtures::{NetworkExt, first_allocation, network, node};

    fn ready_of(status: &MirrorNetworkStatus) -> (String, String) {
        let r = status
            .conditions
            .iter()
            .find(|c| c.type_ == c::READY)
            .unwrap();
        (r.status.clone(), r.reason.clone())
    }

    fn decide(
        net: &MirrorNetwork,
        others: &[MirrorNetwork],
        allocator: &mut Allocator,
    ) -> Decision {
        let gw = [("gw", "true")];
        let nodes = vec![
            NodeFacts::of(&node("n1", &gw, true)),
            NodeFacts::of(&node("n2", &gw, true)),
        ];
        let networks: Vec<_> = others.iter().cloned().map(Arc::new).collect();
        decide_live(
            Observed {
                network: net,
                networks: &networks,
                nodes: &nodes,
                now: Timestamp::from_second(100).unwrap(),
            },
            allocator,
        )
    }

    #[test]
    fn live_decisions() {
        let gw = [("gw", "true")];
        let older = network("older").created(1).selector(&gw).allocated();
        let taken = {
            let mut n = network("explicit").created(2).selector(&gw);
            n.spec.sides[0].kernel_ids = Some(mirrornet_api::SideKernelIds {
                table: Some(20000),
                ..Default::default()
            });
            n
        };
        let all_programmed = network("fine")
            .created(1)
            .selector(&gw)
            .node_entry("n1", c::PROGRAMMED, "True")
            .node_entry("n2", c::PROGRAMMED, "True");
        /// (case, network, other networks, Ready (status, reason), gets ids)
        type Row<'a> = (
            &'a str,
            MirrorNetwork,
            Vec<MirrorNetwork>,
            (&'a str, &'a str),
            bool,
        );
        let table: Vec<Row> = vec![
            (
                "invalid spec: no ids",
                network("bad")
                    .created(2)
                    .selector(&gw)
                    .subnet("192.168.2.1/24"),
                vec![],
                ("False", reason::INVALID_SPEC),
                false,
            ),
            (
                "conflict with an older network",
                network("newer").created(2).selector(&gw),
                vec![older.clone()],
                ("False", reason::CONFLICT),
                false,
            ),
            (
                "explicit id held by another network",
                taken.interfaces("eth7", "eth8"),
                vec![older.clone()],
                ("False", reason::ALLOCATION_FAILED),
                false,
            ),
            (
                "no node selected",
                network("nowhere").created(2).selector(&[("none", "x")]),
                vec![],
                ("False", reason::NO_NODES_SELECTED),
                true,
            ),
            (
                "waiting for agents",
                network("new").created(2).selector(&gw),
                vec![],
                ("False", reason::WAITING_FOR_NODES),
                true,
            ),
            (
                "every node programmed",
                all_programmed,
                vec![],
                ("True", reason::ALL_NODES_PROGRAMMED),
                true,
            ),
        ];
        for (name, net, others, ready, has_ids) in table {
            let mut allocator = Allocator::from_existing(
                IdRanges::default(),
                others.iter().filter_map(|o| {
                    Some((
                        o.metadata.name.as_deref()?,
                        o.status.as_ref()?.allocation.as_ref()?,
                    ))
                }),
            );
            let d = decide(&net, &others, &mut allocator);
            assert_eq!(
                ready_of(&d.status),
                (ready.0.to_string(), ready.1.to_string()),
                "{name}"
            );
            assert_eq!(d.status.allocation.is_some(), has_ids, "{name}");
            assert_eq!(allocator.get(&net.name_any()).is_some(), has_ids, "{name}");
            assert!(d.status_changed, "{name}");
            assert!(
                d.status.nodes.is_empty(),
                "{name}: the operator never writes node entries"
            );
            let reasons: Vec<_> = d.notices.iter().map(|n| n.reason.as_str()).collect();
            assert!(reasons.contains(&ready.1), "{name}: {reasons:?}");
        }
    }

    #[test]
    fn unchanged_network_is_not_rewritten() {
        let gw = [("gw", "true")];
        let mut allocator = Allocator::new(IdRanges::default());
        let net = network("a").created(1).selector(&gw);
        let first = decide(&net, &[], &mut allocator);
        assert_eq!(first.status.allocation, Some(first_allocation()));
        let settled = net.clone().with_status(first.status.clone());
        let second = decide(&settled, &[], &mut allocator);
        assert!(!second.status_changed);
        assert!(second.notices.is_empty());
        assert_eq!(second.status, first.status);
    }

    #[test]
    fn conflict_releases_ids_of_the_newer_network() {
        let gw = [("gw", "true")];
        let mut allocator = Allocator::new(IdRanges::default());
        let newer = network("newer").created(5).selector(&gw);
        let first = decide(&newer, &[], &mut allocator);
        assert!(first.status.allocation.is_some());
        let older = network("older").created(1).selector(&gw);
        let held = newer.with_status(first.status);
        let second = decide(&held, &[older], &mut allocator);
        assert_eq!(second.status.allocation, None);
        assert!(allocator.get("newer").is_none());
        assert_eq!(second.requeue, CONFLICT_RECHECK);
        let reasons: Vec<_> = second.notices.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons, [reason::IDS_RELEASED, reason::CONFLICT]);
        assert!(second.notices[1].warning);
        assert!(second.notices[1].note.contains("network older"));
    }

    #[test]
    fn teardown_waits_then_releases() {
        let gw = [("gw", "true")];
        let nodes = vec![NodeFacts::of(&node("n1", &gw, true))];
        let net = network("a")
            .created(1)
            .selector(&gw)
            .allocated()
            .deleting()
            .finalized();
        let observed = |net| Observed {
            network: net,
            networks: &[],
            nodes: &nodes,
            now: Timestamp::from_second(6000).unwrap(),
        };
        let waiting = decide_teardown(observed(&net), Duration::from_secs(300));
        assert_eq!(waiting.gate.waiting, ["n1"]);
        assert_eq!(
            ready_of(&waiting.status),
            ("False".into(), reason::DELETING.into())
        );
        assert_eq!(waiting.status.allocation, Some(first_allocation()));
        let removed = net
            .clone()
            .with_status(waiting.status.clone())
            .node_entry("n1", c::REMOVED, "True")
            .node_entry("gone", c::PROGRAMMED, "True");
        let done = decide_teardown(observed(&removed), Duration::from_secs(300));
        assert!(done.gate.is_open());
        let reasons: Vec<_> = done
            .final_notices
            .iter()
            .map(|n| n.reason.as_str())
            .collect();
        assert_eq!(reasons, [reason::NODE_RELEASED, reason::TEARDOWN_COMPLETE]);
    }
}
