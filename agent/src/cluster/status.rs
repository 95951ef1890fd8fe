//! Pure: this node's entry in a network's `status.nodes`, built from what the reconcile loop
//! reported, the events a change of entry deserves, and the server-side apply body that
//! carries it.
//!
//! ```text
//! Placement (index) ─┐
//! NodeReport (loop) ─┼─> entry() ─> changed()? ─> patch_body()   (SSA, one list-map entry)
//! previous entry ────┘                         └> notices()      (Events)
//! ```
//! A condition keeps its `lastTransitionTime` unless its status flips, so an unchanged state
//! renders identically and is never written twice.

use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use mirrornet_api::conditions::{self as c, Decided, NodeReason, reason};
use mirrornet_api::events::Notice;
use mirrornet_api::{MirrorNetwork, NodeStatus};

use super::index::{Placement, Role};
use crate::reconciler::{NetworkReport, NodeReport};

/// Field managers are limited to 128 characters by the API server.
const MAX_FIELD_MANAGER: usize = 128;

/// The field manager of this node's agent: one per node, so that each agent owns exactly its
/// own `status.nodes` entry and server-side apply never lets two agents fight over one.
pub fn field_manager(node: &str) -> String {
    let mut manager = format!("mirrornet-agent/{node}");
    // Node names are DNS subdomains (ASCII), so cutting at a byte index is safe.
    manager.truncate(MAX_FIELD_MANAGER);
    manager
}

/// The server-side apply body for this node's entry: apiVersion and kind, and a `status.nodes`
/// list holding only our entry (the list is a map keyed by `nodeName`, so the API server
/// merges it with the other agents' entries instead of replacing them).
pub fn patch_body(entry: &NodeStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": MirrorNetwork::api_version(&()),
        "kind": MirrorNetwork::kind(&()),
        "status": { "nodes": [entry] },
    })
}

/// The entry this node should have for `placement`, or `None` when there is nothing to say
/// (yet): the loop has not reported the network, a teardown is not finished, or the network
/// never concerned this node.
pub fn entry(
    node: &str,
    placement: &Placement,
    report: &NodeReport,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> Option<NodeStatus> {
    // Before the first pass (or after one that could not read the kernel) the report says
    // nothing about the kernel: an absent network is not a removed one.
    if !report.synced {
        return None;
    }
    let name = placement.name.as_str();
    let (generation, backend, rendered) = match placement.role {
        Role::Program => {
            let network = report.networks.get(name)?;
            (network.generation, network.backend, held(network))
        }
        Role::WaitForAllocation | Role::Release(_) => {
            let torn_down = !report.networks.contains_key(name) && !report.held.contains(name);
            if !placement.owes_entry || !torn_down {
                return None;
            }
            let (why, message) = match placement.role {
                Role::Release(r) => (
                    NodeReason::TornDown,
                    format!("removed from this node: {}", r.describe()),
                ),
                _ => (
                    NodeReason::WaitingForAllocation,
                    "removed from this node: the network has no allocated kernel ids".to_owned(),
                ),
            };
            (
                placement.generation,
                None,
                vec![
                    (
                        c::PROGRAMMED,
                        false,
                        why.as_str().to_owned(),
                        message.clone(),
                    ),
                    (
                        c::REMOVED,
                        true,
                        NodeReason::TornDown.as_str().to_owned(),
                        message,
                    ),
                ],
            )
        }
    };
    let previous = previous.map_or(&[][..], |p| p.conditions.as_slice());
    let conditions = c::stamp(rendered, generation, previous, now);
    Some(NodeStatus {
        node_name: node.into(),
        backend,
        observed_generation: generation,
        conditions,
    })
}

/// The conditions of a network the node holds (or tries to). `Removed` is left out: under
/// server-side apply, leaving out a condition this manager wrote before removes it, so a
/// network that comes back to the node loses its old `Removed=True`.
fn held(network: &NetworkReport) -> Vec<Decided<String>> {
    let programmed = if network.programmed {
        // Suspended, "programmed" means withdrawn as the spec asks; the reason says so.
        let why = if network.reason == Some(NodeReason::Suspended) {
            NodeReason::Suspended
        } else {
            NodeReason::Applied
        };
        (
            c::PROGRAMMED,
            true,
            why.as_str().to_owned(),
            network.message.clone(),
        )
    } else {
        (
            c::PROGRAMMED,
            false,
            network
                .reason
                .map(NodeReason::as_str)
                .unwrap_or_default()
                .to_owned(),
            network.message.clone(),
        )
    };
    let interfaces = if network.interfaces_present {
        (
            c::INTERFACES_PRESENT,
            true,
            NodeReason::AllPresent.as_str().to_owned(),
            "every side's interface is present and up".to_owned(),
        )
    } else {
        (
            c::INTERFACES_PRESENT,
            false,
            NodeReason::InterfaceMissing.as_str().to_owned(),
            network.message.clone(),
        )
    };
    let mut conditions = vec![programmed, interfaces];
    if let Some(taken) = &network.taken {
        conditions.push(aliases_answered(taken));
    }
    // Left out until the node has checked: under server-side apply that also clears an old
    // verdict when the network stops being checked.
    if let Some(passed) = network.verified {
        conditions.push((
            c::DATA_PATH_VERIFIED,
            passed,
            if passed {
                NodeReason::ChecksPassed
            } else {
                NodeReason::CheckFailed
            }
            .as_str()
            .to_owned(),
            network.verification.clone(),
        ));
    }
    conditions
}

/// `AliasesAnswered` of a network with on-link aliases: which addresses hosts hold, the first
/// few named (a condition message is for people; `show` lists them all).
fn aliases_answered(taken: &[crate::plan::TakenAlias]) -> Decided<String> {
    const NAMED: usize = 4;
    if taken.is_empty() {
        return (
            c::ALIASES_ANSWERED,
            true,
            NodeReason::AllAnswered.as_str().to_owned(),
            "the node answers for every on-link alias address".to_owned(),
        );
    }
    let mut message: Vec<String> = taken.iter().take(NAMED).map(ToString::to_string).collect();
    if taken.len() > NAMED {
        message.push(format!("and {} more", taken.len() - NAMED));
    }
    (
        c::ALIASES_ANSWERED,
        false,
        NodeReason::AddressTaken.as_str().to_owned(),
        message.join("; "),
    )
}

fn is_true(entry: Option<&NodeStatus>, type_: &str) -> bool {
    entry
        .and_then(|e| c::find(&e.conditions, type_))
        .is_some_and(|c| c.status == "True")
}

/// True when `new` says something `previous` does not; condition order does not count.
pub fn changed(previous: Option<&NodeStatus>, new: &NodeStatus) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let sorted = |e: &NodeStatus| {
        let mut e = e.clone();
        e.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        e
    };
    sorted(previous) != sorted(new)
}

/// The events a change of this node's entry from `previous` to `new` deserves: programmed,
/// failed (once per new reason, not per message), torn down.
pub fn notices(node: &str, previous: Option<&NodeStatus>, new: &NodeStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let programmed = c::find(&new.conditions, c::PROGRAMMED);
    if let Some(p) = programmed {
        if p.status == "True" && !is_true(previous, c::PROGRAMMED) {
            let backend = new
                .backend
                .map(|b| format!(" with backend {b}"))
                .unwrap_or_default();
            out.push(Notice {
                warning: false,
                reason: NodeReason::Applied.as_str().into(),
                note: format!("programmed on node {node}{backend}"),
                action: "Program",
            });
        }
        let before = previous.and_then(|e| c::find(&e.conditions, c::PROGRAMMED));
        let new_failure = p.status == "False"
            // Waits (for ids, or nothing more after teardown) are not worth a Warning.
            && !NodeReason::from_reason(&p.reason).is_some_and(NodeReason::is_wait)
            && before.is_none_or(|b| b.status == "True" || b.reason != p.reason);
        if new_failure {
            out.push(Notice {
                warning: true,
                reason: p.reason.clone(),
                note: format!("node {node}: {}", p.message),
                action: "Program",
            });
        }
    }
    // Checks that fail, and alias addresses hosts take: a Warning when the condition turns
    // False, not again while it stays so.
    for (type_, reason, action) in [
        (c::DATA_PATH_VERIFIED, NodeReason::CheckFailed, "Verify"),
        (c::ALIASES_ANSWERED, NodeReason::AddressTaken, "Program"),
    ] {
        let Some(now) = c::find(&new.conditions, type_) else {
            continue;
        };
        let was = previous.and_then(|e| c::find(&e.conditions, type_));
        if now.status == "False" && was.is_none_or(|w| w.status == "True") {
            out.push(Notice {
                warning: true,
                reason: reason.as_str().into(),
                note: format!("node {node}: {}", now.message),
                action,
            });
        }
    }
    if is_true(Some(new), c::REMOVED) && !is_true(previous, c::REMOVED) {
        let message = c::find(&new.conditions, c::REMOVED)
            .map(|r| r.message.clone())
            .unwrap_or_default();
        out.push(Notice {
            warning: false,
            reason: NodeReason::TornDown.as_str().into(),
            note: format!("node {node}: {message}"),
            action: "Teardown",
        });
    }
    out
}

/// The event for a pass that rewrote kernel state someone else had changed. The loop counts
/// repairs per node, not per network, so the note says so.
pub fn repair_notice(node: &str, repairs: u64) -> Notice {
    Notice {
        warning: false,
        reason: reason::REPAIRED.into(),
        note: format!(
            "node {node}: rewrote kernel state changed outside mirrornet ({repairs} repair(s) on this node since the agent started)"
        ),
        action: "Repair",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::{interface_missing, programmed, report};
    use crate::cluster::index::Release;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use mirrornet_api::BackendKind;
    use mirrornet_api::fixtures::now;

    fn placement(role: Role, owes_entry: bool) -> Placement {
        Placement {
            name: "a".into(),
            uid: Some("uid-a".into()),
            generation: Some(3),
            role,
            owes_entry,
            entry: None,
        }
    }

    /// (type, status, reason) of each condition, in order.
    fn summary(entry: &Option<NodeStatus>) -> Option<Vec<(String, String, String)>> {
        entry.as_ref().map(|e| {
            e.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect()
        })
    }

    fn conds(rows: &[(&str, &str, &str)]) -> Option<Vec<(String, String, String)>> {
        Some(
            rows.iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
                .collect(),
        )
    }

    #[test]
    fn entry_from_report() {
        let deleting = Role::Release(Release::Deleting);
        /// (case, placement, report, conditions written or None)
        type Row<'a> = (
            &'a str,
            Placement,
            NodeReport,
            Option<Vec<(String, String, String)>>,
        );
        let table: Vec<Row> = vec![
            (
                "programmed",
                placement(Role::Program, true),
                report(vec![programmed("a", 3)], &["a"]),
                conds(&[
                    ("Programmed", "True", "Applied"),
                    ("InterfacesPresent", "True", "AllPresent"),
                ]),
            ),
            (
                "interface missing",
                placement(Role::Program, true),
                report(vec![interface_missing("a", 3)], &[]),
                conds(&[
                    ("Programmed", "False", "InterfaceMissing"),
                    ("InterfacesPresent", "False", "InterfaceMissing"),
                ]),
            ),
            (
                "programmed and its probes answer",
                placement(Role::Program, true),
                report(
                    vec![NetworkReport {
                        verified: Some(true),
                        verification: "2 check(s) passed".into(),
                        ..programmed("a", 3)
                    }],
                    &["a"],
                ),
                conds(&[
                    ("Programmed", "True", "Applied"),
                    ("InterfacesPresent", "True", "AllPresent"),
                    ("DataPathVerified", "True", "ChecksPassed"),
                ]),
            ),
            (
                "suspended: withdrawn as asked",
                placement(Role::Program, true),
                report(
                    vec![NetworkReport {
                        reason: Some(NodeReason::Suspended),
                        message: "suspended: datapath withdrawn, ids kept".into(),
                        ..programmed("a", 3)
                    }],
                    &["a"],
                ),
                conds(&[
                    ("Programmed", "True", "Suspended"),
                    ("InterfacesPresent", "True", "AllPresent"),
                ]),
            ),
            (
                "a change rolled back by its checks",
                placement(Role::Program, true),
                report(
                    vec![NetworkReport {
                        programmed: false,
                        reason: Some(NodeReason::VerificationFailed),
                        verified: Some(false),
                        verification: "probe a/outer 192.168.2.99:9: no answer".into(),
                        ..programmed("a", 3)
                    }],
                    &["a"],
                ),
                conds(&[
                    ("Programmed", "False", "VerificationFailed"),
                    ("InterfacesPresent", "True", "AllPresent"),
                    ("DataPathVerified", "False", "CheckFailed"),
                ]),
            ),
            (
                "not reported by the loop yet",
                placement(Role::Program, true),
                report(vec![], &[]),
                None,
            ),
            (
                "loop not synced",
                placement(Role::Program, true),
                NodeReport::default(),
                None,
            ),
            (
                "deleting, still held",
                placement(deleting, true),
                report(vec![], &["a"]),
                None,
            ),
            (
                "deleting, the loop still reports it (pass pending)",
                placement(deleting, true),
                report(vec![programmed("a", 3)], &[]),
                None,
            ),
            (
                "deleting, torn down",
                placement(deleting, true),
                report(vec![], &[]),
                conds(&[
                    ("Programmed", "False", "TornDown"),
                    ("Removed", "True", "TornDown"),
                ]),
            ),
            (
                "not selected and never reported: nothing",
                placement(Role::Release(Release::NotSelected), false),
                report(vec![], &[]),
                None,
            ),
            (
                "ids withdrawn, torn down",
                placement(Role::WaitForAllocation, true),
                report(vec![], &[]),
                conds(&[
                    ("Programmed", "False", "WaitingForAllocation"),
                    ("Removed", "True", "TornDown"),
                ]),
            ),
            (
                "waiting for ids, nothing owed",
                placement(Role::WaitForAllocation, false),
                report(vec![], &[]),
                None,
            ),
        ];
        for (case, placement, report, expected) in table {
            let got = entry("node-a", &placement, &report, None, now());
            assert_eq!(summary(&got), expected, "{case}");
        }
    }

    #[test]
    fn programmed_entry_fields() {
        let got = entry(
            "node-a",
            &placement(Role::Program, true),
            &report(vec![programmed("a", 3)], &["a"]),
            None,
            now(),
        )
        .unwrap();
        assert_eq!(got.node_name, "node-a");
        assert_eq!(got.backend, Some(BackendKind::PolicyRouting));
        assert_eq!(got.observed_generation, Some(3));
        for c in &got.conditions {
            assert_eq!(c.observed_generation, Some(3));
            assert_eq!(c.last_transition_time, Time(now()));
        }
        assert_eq!(
            got.conditions[0].message,
            "programmed with backend PolicyRouting"
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let p = placement(Role::Program, true);
        let earlier = Timestamp::from_second(10).unwrap();
        let first = entry(
            "n",
            &p,
            &report(vec![programmed("a", 3)], &["a"]),
            None,
            earlier,
        )
        .unwrap();
        // Same state later: identical entry, nothing to write.
        let again = entry(
            "n",
            &p,
            &report(vec![programmed("a", 3)], &["a"]),
            Some(&first),
            now(),
        )
        .unwrap();
        assert_eq!(again, first);
        assert!(!changed(Some(&first), &again));
        // Interface lost: both conditions flip, both times move.
        let lost = entry(
            "n",
            &p,
            &report(vec![interface_missing("a", 3)], &["a"]),
            Some(&first),
            now(),
        )
        .unwrap();
        assert!(changed(Some(&first), &lost));
        assert!(
            lost.conditions
                .iter()
                .all(|c| c.last_transition_time == Time(now()))
        );
        // A new generation programmed again: status unchanged, time kept, generation moves.
        let mut v4 = programmed("a", 4);
        v4.message = "programmed with backend PolicyRouting".into();
        let next = entry("n", &p, &report(vec![v4], &["a"]), Some(&first), now()).unwrap();
        assert!(changed(Some(&first), &next));
        assert!(
            next.conditions
                .iter()
                .all(|c| c.last_transition_time == Time(earlier))
        );
    }

    /// An on-link network says whether the node answers for every alias address; hosts on
    /// some of them turn the condition False (a failure the operator reports as Degraded),
    /// announced once.
    #[test]
    fn on_link_networks_report_the_alias_addresses_hosts_hold() {
        let p = placement(Role::Program, true);
        let mut clear = programmed("a", 3);
        clear.taken = Some(Vec::new());
        let first = entry("n", &p, &report(vec![clear], &["a"]), None, now()).unwrap();
        let answered = c::find(&first.conditions, c::ALIASES_ANSWERED).unwrap();
        assert_eq!(
            (answered.status.as_str(), answered.reason.as_str()),
            ("True", "AllAnswered")
        );
        let mut squatted = programmed("a", 3);
        squatted.taken = Some(vec![crate::plan::TakenAlias {
            side: "inner".into(),
            interface: "eth1".into(),
            address: "192.168.2.139".parse().unwrap(),
            for_side: "outer".into(),
            for_host: "192.168.2.11".parse().unwrap(),
        }]);
        let next = entry(
            "n",
            &p,
            &report(vec![squatted], &["a"]),
            Some(&first),
            now(),
        )
        .unwrap();
        let taken = c::find(&next.conditions, c::ALIASES_ANSWERED).unwrap();
        assert_eq!(
            (taken.status.as_str(), taken.reason.as_str()),
            ("False", "AddressTaken")
        );
        assert!(
            taken.message.contains("192.168.2.139 on side inner"),
            "{}",
            taken.message
        );
        let said = notices("n", Some(&first), &next);
        assert!(
            said.iter().any(|n| n.warning && n.reason == "AddressTaken"),
            "{said:?}"
        );
        assert!(notices("n", Some(&next), &next).is_empty());
        // A network without on-link aliases has no such condition.
        let plain = entry(
            "n",
            &p,
            &report(vec![programmed("a", 3)], &["a"]),
            None,
            now(),
        )
        .unwrap();
        assert!(c::find(&plain.conditions, c::ALIASES_ANSWERED).is_none());
    }

    #[test]
    fn changed_ignores_condition_order() {
        let p = placement(Role::Program, true);
        let e = entry(
            "n",
            &p,
            &report(vec![programmed("a", 3)], &["a"]),
            None,
            now(),
        )
        .unwrap();
        let mut reversed = e.clone();
        reversed.conditions.reverse();
        assert!(!changed(Some(&reversed), &e));
        assert!(changed(None, &e));
    }

    #[test]
    fn events_for_transitions() {
        let p = placement(Role::Program, true);
        let ok = entry(
            "n",
            &p,
            &report(vec![programmed("a", 3)], &["a"]),
            None,
            now(),
        )
        .unwrap();
        let missing = entry(
            "n",
            &p,
            &report(vec![interface_missing("a", 3)], &[]),
            None,
            now(),
        )
        .unwrap();
        let gone = entry(
            "n",
            &placement(Role::Release(Release::Deleting), true),
            &report(vec![], &[]),
            None,
            now(),
        )
        .unwrap();
        let reasons = |prev: Option<&NodeStatus>, new: &NodeStatus| -> Vec<(bool, String)> {
            notices("n", prev, new)
                .into_iter()
                .map(|n| (n.warning, n.reason))
                .collect()
        };
        assert_eq!(reasons(None, &ok), [(false, "Applied".to_string())]);
        assert_eq!(reasons(Some(&ok), &ok), []);
        assert_eq!(
            reasons(Some(&ok), &missing),
            [(true, "InterfaceMissing".to_string())]
        );
        // A failure that only changes its message is not announced again.
        let mut reworded = missing.clone();
        reworded.conditions[0].message = "interface(s) eth1, eth2 ...".into();
        assert_eq!(reasons(Some(&missing), &reworded), []);
        assert_eq!(
            reasons(Some(&missing), &ok),
            [(false, "Applied".to_string())]
        );
        assert_eq!(reasons(Some(&ok), &gone), [(false, "TornDown".to_string())]);
        assert_eq!(reasons(Some(&gone), &gone), []);
        assert_eq!(
            notices("n", Some(&ok), &gone)[0].note,
            "node n: removed from this node: the network is being deleted"
        );
    }

    #[test]
    fn field_manager_is_per_node_and_bounded() {
        assert_eq!(field_manager("node-a"), "mirrornet-agent/node-a");
        assert_eq!(field_manager(&"x".repeat(253)).len(), 128);
    }

    #[test]
    fn patch_body_holds_only_our_entry() {
        let e = entry(
            "node-a",
            &placement(Role::Program, true),
            &report(vec![programmed("a", 3)], &["a"]),
            None,
            now(),
        )
        .unwrap();
        let body = patch_body(&e);
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "mirrornet.io/v1alpha1",
                "kind": "MirrorNetwork",
                "status": {"nodes": [{
                    "nodeName": "node-a",
                    "backend": "PolicyRouting",
                    "observedGeneration": 3,
                    "conditions": [
                        {"type": "Programmed", "status": "True", "reason": "Applied",
                         "message": "programmed with backend PolicyRouting",
                         "observedGeneration": 3, "lastTransitionTime": "1970-01-12T13:46:40Z"},
                        {"type": "InterfacesPresent", "status": "True", "reason": "AllPresent",
                         "message": "every side's interface is present and up",
                         "observedGeneration": 3, "lastTransitionTime": "1970-01-12T13:46:40Z"},
                    ],
                }]},
            })
        );
    }
}
