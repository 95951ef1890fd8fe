//! The summary the operator writes into status: `Ready`, `Progressing` and `Degraded`, node
//! counts and the backend in use, computed from the per-node entries the agents write.
//!
//! ```text
//! status.nodes[] (agents) ─┐
//! Node objects ────────────┼─> node_standing() per selected node ─> Health ─> conditions()
//! validation / conflict ───┘                                          (times kept unless flipped)
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use mirrornet_api::NodeStatus;
use mirrornet_api::conditions::{self as c, Decided, NodeReason, reason};

use crate::selection::NodeFacts;

/// Where one selected node stands with the current generation of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStanding {
    /// The agent reports the current generation programmed.
    Programmed,
    /// No report for the current generation yet.
    Pending,
    /// The agent reports a failure (the reason and message are the node condition's).
    Failed { reason: String, message: String },
    /// The kubelet reports NotReady, so no agent can be trusted to act there.
    NotReady,
}

/// Judges one selected node from its Node facts and the agent's entry. A node has failed (not
/// merely "not yet") when a condition is False for a reason whose
/// [`NodeReason::is_failure`] is true.
pub fn node_standing(
    facts: &NodeFacts,
    entry: Option<&NodeStatus>,
    generation: i64,
) -> NodeStanding {
    if !facts.is_ready() {
        return NodeStanding::NotReady;
    }
    let Some(entry) = entry else {
        return NodeStanding::Pending;
    };
    if entry.observed_generation != Some(generation) {
        return NodeStanding::Pending;
    }
    let programmed = c::find(&entry.conditions, c::PROGRAMMED);
    if programmed.is_some_and(|p| p.status == "True") {
        // Programmed but its path does not answer, or hosts hold some of its on-link alias
        // addresses: never Ready, and the check or the addresses are named.
        let failed = [c::DATA_PATH_VERIFIED, c::ALIASES_ANSWERED]
            .iter()
            .filter_map(|t| c::find(&entry.conditions, t))
            .find(|v| v.status == "False");
        return match failed {
            Some(v) => NodeStanding::Failed {
                reason: v.reason.clone(),
                message: v.message.clone(),
            },
            None => NodeStanding::Programmed,
        };
    }
    let failure = [c::PROGRAMMED, c::INTERFACES_PRESENT]
        .iter()
        .filter_map(|t| c::find(&entry.conditions, t))
        .find(|c| {
            c.status == "False"
                && NodeReason::from_reason(&c.reason).is_some_and(NodeReason::is_failure)
        });
    match failure {
        Some(f) => NodeStanding::Failed {
            reason: f.reason.clone(),
            message: f.message.clone(),
        },
        None => NodeStanding::Pending,
    }
}

/// The selected nodes, sorted into how they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub programmed: Vec<String>,
    pub pending: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub not_ready: Vec<String>,
}

impl NodeCounts {
    pub fn from_standings<'a>(states: impl IntoIterator<Item = (&'a str, NodeStanding)>) -> Self {
        let mut me = Self::default();
        for (node, state) in states {
            match state {
                NodeStanding::Programmed => me.programmed.push(node.into()),
                NodeStanding::Pending => me.pending.push(node.into()),
                NodeStanding::Failed { reason, message } => me
                    .failed
                    .push((node.into(), format!("{reason}: {message}"))),
                NodeStanding::NotReady => me.not_ready.push(node.into()),
            }
        }
        me
    }

    pub fn desired(&self) -> usize {
        self.programmed.len() + self.pending.len() + self.failed.len() + self.not_ready.len()
    }
}

/// What the summary conditions say, decided before they are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The spec failed validation; the message names the fields.
    InvalidSpec(String),
    /// An older network claims the same interface on a common node.
    Conflict(String),
    /// Ids could not be allocated (an explicit id is taken, or a range is exhausted).
    AllocationFailed(String),
    /// The network is being deleted; these nodes have not removed its state yet.
    Deleting { waiting: Vec<String> },
    /// The network is served; how far the nodes got.
    Nodes(NodeCounts),
    /// `spec.suspend`: how far the nodes got withdrawing the datapath.
    Suspended(NodeCounts),
}

/// A list of node names for a message, cut short on large clusters.
pub fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

fn render(health: &Health) -> [Decided<&'static str>; 3] {
    let blocked = |why: &'static str, message: &String| {
        [
            (c::READY, false, why, message.clone()),
            (
                c::PROGRESSING,
                false,
                why,
                "nothing to do until the spec changes".to_string(),
            ),
            (c::DEGRADED, true, why, message.clone()),
        ]
    };
    match health {
        Health::InvalidSpec(m) => blocked(reason::INVALID_SPEC, m),
        Health::Conflict(m) => blocked(reason::CONFLICT, m),
        Health::AllocationFailed(m) => blocked(reason::ALLOCATION_FAILED, m),
        Health::Deleting { waiting } => {
            let m = if waiting.is_empty() {
                "deleting".to_string()
            } else {
                format!(
                    "deleting: waiting for {} to remove the network's state",
                    name_list(waiting)
                )
            };
            [
                (c::READY, false, reason::DELETING, m.clone()),
                (c::PROGRESSING, true, reason::DELETING, m),
                (c::DEGRADED, false, reason::DELETING, String::new()),
            ]
        }
        Health::Suspended(n) => {
            let desired = n.desired();
            let done = n.programmed.len();
            let m = format!(
                "spec.suspend is true: the datapath is withdrawn on {done}/{desired} nodes; the \
                 object and its kernel ids are kept"
            );
            let degraded = if n.failed.is_empty() {
                (c::DEGRADED, false, reason::SUSPENDED, String::new())
            } else {
                let detail = n
                    .failed
                    .iter()
                    .take(5)
                    .map(|(node, why)| format!("{node}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    c::DEGRADED,
                    true,
                    reason::NODE_FAILED,
                    format!("failed on {detail}"),
                )
            };
            [
                (c::READY, false, reason::SUSPENDED, m.clone()),
                (c::PROGRESSING, done < desired, reason::SUSPENDED, m),
                degraded,
            ]
        }
        Health::Nodes(n) => {
            let desired = n.desired();
            let ready = n.programmed.len();
            if desired == 0 {
                let m = "the node selector matches no node".to_string();
                return [
                    (c::READY, false, reason::NO_NODES_SELECTED, m.clone()),
                    (c::PROGRESSING, false, reason::NO_NODES_SELECTED, m),
                    (c::DEGRADED, false, reason::NO_NODES_SELECTED, String::new()),
                ];
            }
            let progress = format!("{ready}/{desired} nodes programmed");
            let waiting = if n.pending.is_empty() {
                None
            } else {
                Some(format!("{progress}; waiting for {}", name_list(&n.pending)))
            };
            let progressing = match &waiting {
                Some(m) => (c::PROGRESSING, true, reason::WAITING_FOR_NODES, m.clone()),
                None => (
                    c::PROGRESSING,
                    false,
                    reason::ALL_NODES_PROGRAMMED,
                    progress.clone(),
                ),
            };
            if !n.failed.is_empty() {
                let detail = n
                    .failed
                    .iter()
                    .take(5)
                    .map(|(node, why)| format!("{node}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let m = format!("{progress}; failed on {detail}");
                let progressing = if waiting.is_some() {
                    progressing
                } else {
                    (c::PROGRESSING, false, reason::NODE_FAILED, m.clone())
                };
                return [
                    (c::READY, false, reason::NODE_FAILED, m.clone()),
                    progressing,
                    (c::DEGRADED, true, reason::NODE_FAILED, m),
                ];
            }
            if !n.not_ready.is_empty() {
                let m = format!("{progress}; node NotReady: {}", name_list(&n.not_ready));
                let progressing = if waiting.is_some() {
                    progressing
                } else {
                    (c::PROGRESSING, false, reason::NODE_NOT_READY, m.clone())
                };
                return [
                    (c::READY, false, reason::NODE_NOT_READY, m.clone()),
                    progressing,
                    (c::DEGRADED, true, reason::NODE_NOT_READY, m),
                ];
            }
            match waiting {
                Some(m) => [
                    (c::READY, false, reason::WAITING_FOR_NODES, m.clone()),
                    progressing,
                    (c::DEGRADED, false, reason::WAITING_FOR_NODES, String::new()),
                ],
                None => [
                    (
                        c::READY,
                        true,
                        reason::ALL_NODES_PROGRAMMED,
                        progress.clone(),
                    ),
                    progressing,
                    (
                        c::DEGRADED,
                        false,
                        reason::ALL_NODES_PROGRAMMED,
                        String::new(),
                    ),
                ],
            }
        }
    }
}

/// The summary conditions for `health`. A condition keeps its `lastTransitionTime` unless
/// its status flips, so that unchanged status renders identically and is never re-written.
pub fn conditions(
    health: &Health,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    c::stamp(render(health), generation, previous, now)
}

/// The backend the nodes report: one name when all agree, `Mixed` otherwise.
pub fn backend<'a>(entries: impl IntoIterator<Item = &'a NodeStatus>) -> Option<String> {
    let mut kinds = entries.into_iter().filter_map(|e| e.backend);
    let first = kinds.next()?;
    Some(if kinds.all(|k| k == first) {
        first.to_string()
    } else {
        "Mixed".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use mirrornet_api::BackendKind;

    fn facts(name: &str, ready: bool) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: Default::default(),
            not_ready_since: (!ready).then_some(None),
        }
    }

    /// An agent's entry for `generation` with these (type, status, reason) conditions.
    fn entry(generation: i64, conditions: &[(&str, &str, NodeReason)]) -> NodeStatus {
        NodeStatus {
            node_name: "n".into(),
            backend: Some(BackendKind::PolicyRouting),
            observed_generation: Some(generation),
            conditions: conditions
                .iter()
                .map(|(type_, status, why)| Condition {
                    type_: (*type_).into(),
                    status: (*status).into(),
                    reason: why.as_str().into(),
                    message: "m".into(),
                    observed_generation: Some(generation),
                    last_transition_time: Time(Timestamp::UNIX_EPOCH),
                })
                .collect(),
        }
    }

    /// Every reason the agent writes for a node that cannot program the network (conflict,
    /// node interface, missing backend, ...) makes that node Failed, not forever Pending; every
    /// other reason of Programmed=False (a wait) leaves it Pending.
    #[test]
    fn every_agent_failure_reason_fails_the_node() {
        let facts = facts("n", true);
        for why in NodeReason::ALL {
            let e = entry(3, &[(c::PROGRAMMED, "False", why)]);
            let state = node_standing(&facts, Some(&e), 3);
            if why.is_failure() {
                assert!(
                    matches!(state, NodeStanding::Failed { ref reason, .. } if reason == why.as_str()),
                    "{why:?}"
                );
            } else {
                assert_eq!(state, NodeStanding::Pending, "{why:?}");
            }
        }
    }

    /// Hosts on some on-link alias addresses: the node is programmed but not what the spec
    /// asks for, so the network is Degraded and says which addresses.
    #[test]
    fn a_node_whose_alias_addresses_hosts_hold_has_failed() {
        let facts = facts("n", true);
        let taken = entry(
            3,
            &[
                (c::PROGRAMMED, "True", NodeReason::Applied),
                (c::ALIASES_ANSWERED, "False", NodeReason::AddressTaken),
            ],
        );
        assert!(matches!(
            node_standing(&facts, Some(&taken), 3),
            NodeStanding::Failed { ref reason, .. } if reason == "AddressTaken"
        ));
        let answered = entry(
            3,
            &[
                (c::PROGRAMMED, "True", NodeReason::Applied),
                (c::ALIASES_ANSWERED, "True", NodeReason::AllAnswered),
            ],
        );
        assert_eq!(
            node_standing(&facts, Some(&answered), 3),
            NodeStanding::Programmed
        );
    }

    #[test]
    fn node_standings() {
        use NodeReason::*;
        let failed = |why: NodeReason| NodeStanding::Failed {
            reason: why.as_str().into(),
            message: "m".into(),
        };
        let programmed = [(c::PROGRAMMED, "True", Applied)];
        /// (case, kubelet Ready, entry: generation and conditions, state)
        type Row<'a> = (
            &'a str,
            bool,
            Option<(i64, &'a [(&'a str, &'a str, NodeReason)])>,
            NodeStanding,
        );
        let table: [Row; 10] = [
            (
                "verified",
                true,
                Some((
                    3,
                    &[
                        (c::PROGRAMMED, "True", Applied),
                        (c::DATA_PATH_VERIFIED, "True", ChecksPassed),
                    ],
                )),
                NodeStanding::Programmed,
            ),
            (
                "programmed, probe failing",
                true,
                Some((
                    3,
                    &[
                        (c::PROGRAMMED, "True", Applied),
                        (c::DATA_PATH_VERIFIED, "False", CheckFailed),
                    ],
                )),
                failed(CheckFailed),
            ),
            (
                "change rolled back",
                true,
                Some((3, &[(c::PROGRAMMED, "False", VerificationFailed)])),
                failed(VerificationFailed),
            ),
            (
                "programmed",
                true,
                Some((3, &programmed)),
                NodeStanding::Programmed,
            ),
            (
                "older generation",
                true,
                Some((2, &programmed)),
                NodeStanding::Pending,
            ),
            ("no entry", true, None, NodeStanding::Pending),
            (
                "apply failed",
                true,
                Some((3, &[(c::PROGRAMMED, "False", ApplyFailed)])),
                failed(ApplyFailed),
            ),
            (
                "interface missing",
                true,
                Some((
                    3,
                    &[
                        (c::PROGRAMMED, "False", WaitingForAllocation),
                        (c::INTERFACES_PRESENT, "False", InterfaceMissing),
                    ],
                )),
                failed(InterfaceMissing),
            ),
            (
                "waiting for ids",
                true,
                Some((3, &[(c::PROGRAMMED, "False", WaitingForAllocation)])),
                NodeStanding::Pending,
            ),
            (
                "kubelet NotReady",
                false,
                Some((3, &programmed)),
                NodeStanding::NotReady,
            ),
        ];
        for (name, ready, e, expected) in table {
            let e = e.map(|(generation, conditions)| entry(generation, conditions));
            assert_eq!(
                node_standing(&facts("n", ready), e.as_ref(), 3),
                expected,
                "{name}"
            );
        }
    }

    fn summary(health: &Health) -> Vec<(String, String, String)> {
        conditions(health, Some(3), &[], Timestamp::UNIX_EPOCH)
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason))
            .collect()
    }

    fn t(type_: &str, status: &str, why: &str) -> (String, String, String) {
        (type_.into(), status.into(), why.into())
    }

    #[test]
    fn health_to_conditions() {
        let counts =
            |programmed: &[&str], pending: &[&str], failed: &[&str], not_ready: &[&str]| {
                Health::Nodes(NodeCounts {
                    programmed: programmed.iter().map(|s| s.to_string()).collect(),
                    pending: pending.iter().map(|s| s.to_string()).collect(),
                    failed: failed
                        .iter()
                        .map(|s| (s.to_string(), "ApplyFailed: x".to_string()))
                        .collect(),
                    not_ready: not_ready.iter().map(|s| s.to_string()).collect(),
                })
            };
        let table = [
            (
                Health::InvalidSpec("spec.subnet: bad".into()),
                [
                    t(c::READY, "False", reason::INVALID_SPEC),
                    t(c::PROGRESSING, "False", reason::INVALID_SPEC),
                    t(c::DEGRADED, "True", reason::INVALID_SPEC),
                ],
            ),
            (
                Health::Conflict("x".into()),
                [
                    t(c::READY, "False", reason::CONFLICT),
                    t(c::PROGRESSING, "False", reason::CONFLICT),
                    t(c::DEGRADED, "True", reason::CONFLICT),
                ],
            ),
            (
                counts(&[], &[], &[], &[]),
                [
                    t(c::READY, "False", reason::NO_NODES_SELECTED),
                    t(c::PROGRESSING, "False", reason::NO_NODES_SELECTED),
                    t(c::DEGRADED, "False", reason::NO_NODES_SELECTED),
                ],
            ),
            (
                counts(&["a"], &["b"], &[], &[]),
                [
                    t(c::READY, "False", reason::WAITING_FOR_NODES),
                    t(c::PROGRESSING, "True", reason::WAITING_FOR_NODES),
                    t(c::DEGRADED, "False", reason::WAITING_FOR_NODES),
                ],
            ),
            (
                counts(&["a", "b"], &[], &[], &[]),
                [
                    t(c::READY, "True", reason::ALL_NODES_PROGRAMMED),
                    t(c::PROGRESSING, "False", reason::ALL_NODES_PROGRAMMED),
                    t(c::DEGRADED, "False", reason::ALL_NODES_PROGRAMMED),
                ],
            ),
            (
                counts(&["a"], &[], &["b"], &[]),
                [
                    t(c::READY, "False", reason::NODE_FAILED),
                    t(c::PROGRESSING, "False", reason::NODE_FAILED),
                    t(c::DEGRADED, "True", reason::NODE_FAILED),
                ],
            ),
            (
                counts(&[], &["a"], &["b"], &[]),
                [
                    t(c::READY, "False", reason::NODE_FAILED),
                    t(c::PROGRESSING, "True", reason::WAITING_FOR_NODES),
                    t(c::DEGRADED, "True", reason::NODE_FAILED),
                ],
            ),
            (
                counts(&["a"], &[], &[], &["b"]),
                [
                    t(c::READY, "False", reason::NODE_NOT_READY),
                    t(c::PROGRESSING, "False", reason::NODE_NOT_READY),
                    t(c::DEGRADED, "True", reason::NODE_NOT_READY),
                ],
            ),
            (
                Health::Deleting {
                    waiting: vec!["a".into()],
                },
                [
                    t(c::READY, "False", reason::DELETING),
                    t(c::PROGRESSING, "True", reason::DELETING),
                    t(c::DEGRADED, "False", reason::DELETING),
                ],
            ),
        ];
        for (health, expected) in table {
            assert_eq!(summary(&health), expected, "{health:?}");
        }
    }

    #[test]
    fn a_suspended_network_is_not_ready_and_not_degraded() {
        let withdrawn = Health::Suspended(NodeCounts {
            programmed: vec!["a".into(), "b".into()],
            ..Default::default()
        });
        assert_eq!(
            summary(&withdrawn),
            vec![
                t(c::READY, "False", reason::SUSPENDED),
                t(c::PROGRESSING, "False", reason::SUSPENDED),
                t(c::DEGRADED, "False", reason::SUSPENDED),
            ]
        );
        let withdrawing = Health::Suspended(NodeCounts {
            programmed: vec!["a".into()],
            pending: vec!["b".into()],
            ..Default::default()
        });
        assert_eq!(
            summary(&withdrawing)[1],
            t(c::PROGRESSING, "True", reason::SUSPENDED)
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let before = Timestamp::from_second(1000).unwrap();
        let now = Timestamp::from_second(2000).unwrap();
        let waiting = Health::Nodes(NodeCounts {
            pending: vec!["a".into()],
            ..Default::default()
        });
        let first = conditions(&waiting, Some(1), &[], before);
        // Same statuses, new message and generation: times are kept.
        let again = Health::Nodes(NodeCounts {
            pending: vec!["a".into(), "b".into()],
            ..Default::default()
        });
        let second = conditions(&again, Some(2), &first, now);
        assert!(second.iter().all(|c| c.last_transition_time.0 == before));
        // Ready flips: only Ready and Progressing move.
        let ready = Health::Nodes(NodeCounts {
            programmed: vec!["a".into()],
            ..Default::default()
        });
        let third = conditions(&ready, Some(2), &second, now);
        let time = |type_: &str| {
            third
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap()
                .last_transition_time
                .0
        };
        assert_eq!(time(c::READY), now);
        assert_eq!(time(c::PROGRESSING), now);
        assert_eq!(time(c::DEGRADED), before);
    }

    #[test]
    fn backend_summary() {
        let e = |b| NodeStatus {
            node_name: "n".into(),
            backend: b,
            observed_generation: None,
            conditions: vec![],
        };
        assert_eq!(backend([]), None);
        assert_eq!(
            backend(&[
                e(Some(BackendKind::Vrf)),
                e(None),
                e(Some(BackendKind::Vrf))
            ]),
            Some("VRF".into())
        );
        assert_eq!(
            backend(&[
                e(Some(BackendKind::Vrf)),
                e(Some(BackendKind::PolicyRouting))
            ]),
            Some("Mixed".into())
        );
    }
}
