//! Report: how each network stands on this node after a pass, what the status writer and
//! `/readyz` publish. Built from a pass's outcome by pure functions.

use std::collections::{BTreeMap, BTreeSet};

use mirrornet_api::BackendKind;
use mirrornet_api::conditions::NodeReason;
use serde::Serialize;

use crate::error::AgentError;
use crate::plan::NetworkPlan;

/// How one network stands on this node; what the agent reports in status and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkReport {
    pub name: String,
    pub generation: Option<i64>,
    pub backend: Option<BackendKind>,
    pub programmed: bool,
    pub interfaces_present: bool,
    /// Why the network stands as it does; `None` before there is anything to say.
    pub reason: Option<NodeReason>,
    pub message: String,
    /// Whether the last checks of this network (after its last change, or the periodic
    /// probes) passed; `None` before any.
    pub verified: Option<bool>,
    /// The last checks: what passed, or the check that failed and why.
    pub verification: String,
    /// On-link aliases: `None` for a network without them, else the alias addresses hosts
    /// use, which the node leaves to them.
    pub taken: Option<Vec<crate::plan::TakenAlias>>,
}

impl NetworkReport {
    /// A network not (yet) programmed, with nothing to say about it.
    pub fn new(name: &str, generation: Option<i64>) -> Self {
        Self {
            name: name.to_owned(),
            generation,
            backend: None,
            programmed: false,
            interfaces_present: true,
            reason: None,
            message: String::new(),
            verified: None,
            verification: String::new(),
            taken: None,
        }
    }

    /// The node holds `plan`: the datapath, or, suspended, only the ids.
    pub fn programmed_with(&mut self, plan: &NetworkPlan) {
        self.programmed = true;
        // Said once every alias address has been asked about.
        self.taken =
            (plan.on_link && !plan.suspended && plan.unprobed == 0).then(|| plan.taken.clone());
        if plan.suspended {
            self.reason = Some(NodeReason::Suspended);
            self.message = "suspended: datapath withdrawn, ids kept".into();
        } else {
            self.reason = Some(NodeReason::Programmed);
            self.message = format!("programmed with backend {}", plan.backend);
        }
    }
}

/// What the loop remembers about checks from one pass to the next.

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    /// Whether at least one full pass has completed since start.
    pub synced: bool,
    pub networks: BTreeMap<String, NetworkReport>,
    /// Networks removed from this node in the last pass.
    pub removed: Vec<String>,
    /// Networks mirrornet holds on the node after the last pass, wanted or not: a removal
    /// that failed leaves its network here, so only a network absent from it is torn down.
    pub held: BTreeSet<String>,
}

/// The condition reason for an error.
pub fn reason_of(e: &AgentError) -> NodeReason {
    match e {
        AgentError::InterfaceMissing { .. } => NodeReason::InterfaceMissing,
        AgentError::InterfaceDown { .. } => NodeReason::InterfaceDown,
        AgentError::AddressTaken { .. }
        | AgentError::InterfaceShared { .. }
        | AgentError::MarkMaskMixed { .. }
        | AgentError::InterfaceEnslaved { .. } => NodeReason::Conflict,
        AgentError::NodeInterface { .. } | AgentError::VrfTakesNodeRoute { .. } => {
            NodeReason::NodeInterface
        }
        AgentError::Allocation { .. } => NodeReason::AllocationFailed,
        AgentError::Plan(_) => NodeReason::BackendUnavailable,
        _ => NodeReason::ApplyFailed,
    }
}
