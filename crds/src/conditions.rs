//! The condition vocabulary operator and agent share: condition types, reasons, and the one
//! rule by which both stamp a condition, so that the two sides, the tests and the docs agree.
//!
//! Summary conditions (`status.conditions`) belong to the operator; node conditions
//! (`status.nodes[].conditions`) belong to the agent of that node. The agent writes node
//! reasons as [`NodeReason`]s; the operator reads them back with [`NodeReason::from_reason`]
//! and judges a node by [`NodeReason::is_failure`].
//!
//! ```text
//! decided (type, status, reason, message) ─┐
//! previous conditions ─────────────────────┼─> stamp() ─> Vec<Condition>
//! now, generation ─────────────────────────┘   (lastTransitionTime kept unless status flips)
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Summary: the network is programmed on every node it selects.
pub const READY: &str = "Ready";
/// Summary: the operator or some agent is still working towards the spec.
pub const PROGRESSING: &str = "Progressing";
/// Summary: some selected node failed to program the network.
pub const DEGRADED: &str = "Degraded";

/// Node: the kernel state of this network matches the plan on the node.
pub const PROGRAMMED: &str = "Programmed";
/// Node: every side's interface exists on the node.
pub const INTERFACES_PRESENT: &str = "InterfacesPresent";
/// Node: the checks after the last change, and the periodic probes since, passed. The
/// condition's lastTransitionTime tells since when; absent until the node has checked.
pub const DATA_PATH_VERIFIED: &str = "DataPathVerified";
/// Node: the network's kernel state was removed from the node (teardown finished).
pub const REMOVED: &str = "Removed";
/// Node, networks with on-link aliases only: the node answers address resolution for every
/// alias address on every side. False when hosts use some of them: those are left to the
/// hosts, and the message names them.
pub const ALIASES_ANSWERED: &str = "AliasesAnswered";

/// Reasons of summary conditions and of the operator's events, CamelCase as Kubernetes API
/// conventions ask. Node condition reasons are [`NodeReason`]s; the few that the summary uses
/// too are spelled here from it, so that each string is written once.
pub mod reason {
    use super::NodeReason;

    /// The spec failed validation; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Another network claims the same interface or ids on a common node.
    pub const CONFLICT: &str = NodeReason::Conflict.as_str();
    /// Every selected node reports the network programmed.
    pub const ALL_NODES_PROGRAMMED: &str = "AllNodesProgrammed";
    /// Some selected nodes have not reported the current generation yet.
    pub const WAITING_FOR_NODES: &str = "WaitingForNodes";
    /// The selector matches no node.
    pub const NO_NODES_SELECTED: &str = "NoNodesSelected";
    /// Some node reports a failure.
    pub const NODE_FAILED: &str = "NodeFailed";
    /// No kernel ids could be allocated (range exhausted or explicit id taken).
    pub const ALLOCATION_FAILED: &str = NodeReason::AllocationFailed.as_str();
    /// The network is being deleted; the operator waits for every node to remove its state.
    pub const DELETING: &str = "Deleting";
    /// A selected node's kubelet reports NotReady, so the network cannot be confirmed there.
    pub const NODE_NOT_READY: &str = "NodeNotReady";
    /// Event: kernel ids were allocated (or re-allocated) for the network.
    pub const ALLOCATED: &str = "Allocated";
    /// Event: the network's kernel ids were freed (deletion finished, or a conflict).
    pub const IDS_RELEASED: &str = "IdsReleased";
    /// Event: a node was no longer waited for during deletion: it is gone, or it stayed
    /// NotReady beyond the grace period, so its state may remain on it.
    pub const NODE_RELEASED: &str = "NodeReleased";
    /// Event: every node removed the network's state; the finalizer is lifted.
    pub const TEARDOWN_COMPLETE: &str = "TeardownComplete";
    /// Event (agent): a pass rewrote kernel state changed outside mirrornet.
    pub const REPAIRED: &str = "Repaired";
    /// A change failed its checks and was rolled back. Kept as a string for code that still
    /// writes reasons as strings; new code takes [`NodeReason::VerificationFailed`].
    pub const VERIFICATION_FAILED: &str = NodeReason::VerificationFailed.as_str();
    /// `spec.suspend` is true: the datapath is withdrawn (summary: on the selected nodes;
    /// node: on this node).
    pub const SUSPENDED: &str = NodeReason::Suspended.as_str();
}

/// Every reason an agent writes in its node's conditions (`Programmed`, `InterfacesPresent`,
/// `DataPathVerified`, `Removed`). The agent writes them and the operator judges by them, so
/// both take them from here: a failure reason the operator did not know would leave such a
/// node waiting forever instead of Degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeReason {
    /// The reconcile loop's word for a network it holds, before the status code turns it
    /// into [`Applied`](Self::Applied) (or [`Suspended`](Self::Suspended)).
    Programmed,
    /// Programmed=True: the plan is applied.
    Applied,
    /// Programmed=True: `spec.suspend` is true and the datapath is withdrawn on this node.
    Suspended,
    /// Programmed=False (and InterfacesPresent=False): a side's interface is missing.
    InterfaceMissing,
    /// Programmed=False: a side's interface is down.
    InterfaceDown,
    /// Programmed=False: applying failed; the message says which kernel object and why.
    ApplyFailed,
    /// Programmed=False: another network or the node itself holds the interface or its address.
    Conflict,
    /// Programmed=False: the interface carries the node's own traffic (its default route, the
    /// API server).
    NodeInterface,
    /// Programmed=False: the network's ids are taken on this node.
    AllocationFailed,
    /// Programmed=False: the node's kernel lacks the backend the spec asks for.
    BackendUnavailable,
    /// Programmed=False: a change failed its checks and was rolled back.
    VerificationFailed,
    /// DataPathVerified=True: every check passed.
    ChecksPassed,
    /// DataPathVerified=False: a check failed; the message names it.
    CheckFailed,
    /// Programmed=False: waiting for the operator to allocate ids (the state was removed).
    WaitingForAllocation,
    /// InterfacesPresent=True: every interface of the network is present and up.
    AllPresent,
    /// Programmed=False and Removed=True: teardown finished.
    TornDown,
    /// AliasesAnswered=True: no host uses an on-link alias address.
    AllAnswered,
    /// AliasesAnswered=False: hosts use some on-link alias addresses, which the node leaves to
    /// them; the hosts those addresses stand for are out of reach from that side.
    AddressTaken,
}

/// On the wire (the agent's `/readyz` and reports), the CamelCase word itself.
impl serde::Serialize for NodeReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl NodeReason {
    pub const ALL: [Self; 18] = [
        Self::Programmed,
        Self::Applied,
        Self::Suspended,
        Self::InterfaceMissing,
        Self::InterfaceDown,
        Self::ApplyFailed,
        Self::Conflict,
        Self::NodeInterface,
        Self::AllocationFailed,
        Self::BackendUnavailable,
        Self::VerificationFailed,
        Self::ChecksPassed,
        Self::CheckFailed,
        Self::WaitingForAllocation,
        Self::AllPresent,
        Self::TornDown,
        Self::AllAnswered,
        Self::AddressTaken,
    ];

    /// The CamelCase reason written in the condition (e2e tests and docs read these).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Programmed => "Programmed",
            Self::Applied => "Applied",
            Self::Suspended => "Suspended",
            Self::InterfaceMissing => "InterfaceMissing",
            Self::InterfaceDown => "InterfaceDown",
            Self::ApplyFailed => "ApplyFailed",
            Self::Conflict => "Conflict",
            Self::NodeInterface => "NodeInterface",
            Self::AllocationFailed => "AllocationFailed",
            Self::BackendUnavailable => "BackendUnavailable",
            Self::VerificationFailed => "VerificationFailed",
            Self::ChecksPassed => "ChecksPassed",
            Self::CheckFailed => "CheckFailed",
            Self::WaitingForAllocation => "WaitingForAllocation",
            Self::AllPresent => "AllPresent",
            Self::TornDown => "TornDown",
            Self::AllAnswered => "AllAnswered",
            Self::AddressTaken => "AddressTaken",
        }
    }

    /// The reason a condition's `reason` string names, if it names one.
    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == reason)
    }

    /// True when the node could not do what the spec asks: a node whose condition is False
    /// for such a reason makes the network Degraded, and the agent announces it as a Warning.
    pub const fn is_failure(self) -> bool {
        match self {
            Self::ApplyFailed
            | Self::InterfaceMissing
            | Self::InterfaceDown
            | Self::Conflict
            | Self::NodeInterface
            | Self::AllocationFailed
            | Self::BackendUnavailable
            | Self::VerificationFailed
            | Self::CheckFailed
            | Self::AddressTaken => true,
            Self::Programmed
            | Self::Applied
            | Self::Suspended
            | Self::ChecksPassed
            | Self::WaitingForAllocation
            | Self::AllPresent
            | Self::TornDown
            | Self::AllAnswered => false,
        }
    }

    /// True for the reasons of Programmed=False that are waits, not failures: the node
    /// removed the network's state as asked and waits for ids or for nothing more.
    pub const fn is_wait(self) -> bool {
        matches!(self, Self::WaitingForAllocation | Self::TornDown)
    }
}

impl std::fmt::Display for NodeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The condition of `type_` in `conditions`, if there is one.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// One condition as decided, before it is stamped: (type, status, reason, message).
pub type Decided<R> = (&'static str, bool, R, String);

/// The conditions `decided` says, for `generation`. Each keeps the `lastTransitionTime` of
/// its type in `previous` unless its status flips (then it is `now`), so that an unchanged
/// state renders identically and is never written twice.
pub fn stamp<R: Into<String>>(
    decided: impl IntoIterator<Item = Decided<R>>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    decided
        .into_iter()
        .map(|(type_, status, why, message)| {
            let status = if status { "True" } else { "False" };
            let since = find(previous, type_)
                .filter(|p| p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason: why.into(),
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_string() {
        for r in NodeReason::ALL {
            assert_eq!(NodeReason::from_reason(r.as_str()), Some(r));
        }
        assert_eq!(NodeReason::from_reason("NodeFailed"), None);
        assert_eq!(NodeReason::from_reason(""), None);
    }

    /// The reasons that make a network Degraded, as the agent writes them today: a change to
    /// this list changes what the operator calls a failed node.
    #[test]
    fn failures_are_exactly_these() {
        let failures: Vec<&str> = NodeReason::ALL
            .into_iter()
            .filter(|r| r.is_failure())
            .map(NodeReason::as_str)
            .collect();
        assert_eq!(
            failures,
            [
                "InterfaceMissing",
                "InterfaceDown",
                "ApplyFailed",
                "Conflict",
                "NodeInterface",
                "AllocationFailed",
                "BackendUnavailable",
                "VerificationFailed",
                "CheckFailed",
                "AddressTaken",
            ]
        );
        assert!(
            NodeReason::ALL
                .iter()
                .all(|r| !(r.is_wait() && r.is_failure()))
        );
    }

    #[test]
    fn stamp_keeps_the_time_unless_the_status_flips() {
        let before = Timestamp::from_second(10).unwrap();
        let now = Timestamp::from_second(20).unwrap();
        let first = stamp(
            [(PROGRAMMED, true, "Applied", "m".to_string())],
            Some(1),
            &[],
            before,
        );
        assert_eq!(first[0].last_transition_time, Time(before));
        // Same status, new reason, message and generation: the time stays.
        let kept = stamp(
            [(PROGRAMMED, true, "Suspended", "n".to_string())],
            Some(2),
            &first,
            now,
        );
        assert_eq!(kept[0].last_transition_time, Time(before));
        assert_eq!(kept[0].observed_generation, Some(2));
        assert_eq!(kept[0].reason, "Suspended");
        // Flipped: the time moves.
        let flipped = stamp(
            [(PROGRAMMED, false, "ApplyFailed", "x".to_string())],
            Some(2),
            &kept,
            now,
        );
        assert_eq!(flipped[0].last_transition_time, Time(now));
        assert_eq!(flipped[0].status, "False");
    }
}
