//! Condition types and reasons, as constants so that operator, agent, tests and docs agree.
//!
//! Summary conditions (`status.conditions`) belong to the operator; node conditions
//! (`status.nodes[].conditions`) belong to the agent of that node.

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

/// Reasons, CamelCase as Kubernetes API conventions ask.
pub mod reason {
    /// The spec failed validation; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Another network claims the same interface or ids on a common node.
    pub const CONFLICT: &str = "Conflict";
    /// Every selected node reports the network programmed.
    pub const ALL_NODES_PROGRAMMED: &str = "AllNodesProgrammed";
    /// Some selected nodes have not reported the current generation yet.
    pub const WAITING_FOR_NODES: &str = "WaitingForNodes";
    /// The selector matches no node.
    pub const NO_NODES_SELECTED: &str = "NoNodesSelected";
    /// Some node reports a failure.
    pub const NODE_FAILED: &str = "NodeFailed";
    /// No kernel ids could be allocated (range exhausted or explicit id taken).
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
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
    /// Node: plan applied and verified.
    pub const APPLIED: &str = "Applied";
    /// Node: applying failed; the message says which kernel object and why.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Node: every check passed (DataPathVerified=True).
    pub const CHECKS_PASSED: &str = "ChecksPassed";
    /// Node: a check failed (DataPathVerified=False); the message names it.
    pub const CHECK_FAILED: &str = "CheckFailed";
    /// Node: a change failed its checks and was rolled back (Programmed=False); summary:
    /// some node rolled the current spec back.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// `spec.suspend` is true: the datapath is withdrawn (node: withdrawn on this node).
    pub const SUSPENDED: &str = "Suspended";
    /// Node: a side's interface is missing.
    pub const INTERFACE_MISSING: &str = "InterfaceMissing";
    /// Node: waiting for the operator to allocate ids.
    pub const WAITING_FOR_ALLOCATION: &str = "WaitingForAllocation";
    /// Node: every interface of the network is present.
    pub const ALL_PRESENT: &str = "AllPresent";
    /// Node: teardown finished.
    pub const TORN_DOWN: &str = "TornDown";
}

/// Why a node could not program a network: the reasons of a node's `Programmed=False` that
/// make the network Degraded. The agent writes them and the operator judges by them, so both
/// take them from here; a reason missing here would leave such a node waiting forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeFailure {
    /// Applying failed; the message says which kernel object and why.
    ApplyFailed,
    /// A side's interface is missing.
    InterfaceMissing,
    /// A side's interface is down.
    InterfaceDown,
    /// Another network or the node itself holds the interface or its address.
    Conflict,
    /// The interface carries the node's own traffic (its default route, the API server).
    NodeInterface,
    /// The network's ids are taken on this node.
    AllocationFailed,
    /// The node's kernel lacks the backend the spec asks for.
    BackendUnavailable,
    /// A change failed its checks and was rolled back.
    VerificationFailed,
}

impl NodeFailure {
    pub const ALL: [Self; 8] = [
        Self::ApplyFailed,
        Self::InterfaceMissing,
        Self::InterfaceDown,
        Self::Conflict,
        Self::NodeInterface,
        Self::AllocationFailed,
        Self::BackendUnavailable,
        Self::VerificationFailed,
    ];

    /// The CamelCase reason written in the condition.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ApplyFailed => reason::APPLY_FAILED,
            Self::InterfaceMissing => reason::INTERFACE_MISSING,
            Self::InterfaceDown => "InterfaceDown",
            Self::Conflict => reason::CONFLICT,
            Self::NodeInterface => "NodeInterface",
            Self::AllocationFailed => reason::ALLOCATION_FAILED,
            Self::BackendUnavailable => "BackendUnavailable",
            Self::VerificationFailed => reason::VERIFICATION_FAILED,
        }
    }

    /// The failure a condition reason names, if it names one.
    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == reason)
    }
}

#[cfg(test)]
mod node_failure_tests {
    use super::NodeFailure;

    #[test]
    fn every_failure_reads_back_from_its_reason() {
        for f in NodeFailure::ALL {
            assert_eq!(NodeFailure::from_reason(f.as_str()), Some(f));
        }
        assert_eq!(NodeFailure::from_reason("Applied"), None);
    }
}
