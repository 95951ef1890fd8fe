//! Report: how each network stands on this node after a pass, what the status writer and
//! `/readyz` publish. Built from a pass's outcome by pure functions.

use std::collections::{BTreeMap, BTreeSet};

use mirrornet_api::BackendKind;
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
    /// CamelCase reason, as in a Kubernetes condition.
    pub reason: String,
    pub message: String,
    /// Whether the last checks of this network (after its last change, or the periodic
    /// probes) passed; `None` before any.
    pub verified: Option<bool>,
    /// The last checks: what passed, or the check that failed and why.
    pub verification: String,
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
            reason: String::new(),
            message: String::new(),
            verified: None,
            verification: String::new(),
        }
    }

    /// The node holds `plan`: the datapath, or, suspended, only the ids.
    pub fn programmed_with(&mut self, plan: &NetworkPlan) {
        self.programmed = true;
        if plan.suspended {
            self.reason = mirrornet_api::conditions::reason::SUSPENDED.into();
            self.message = "suspended: datapath withdrawn, ids kept".into();
        } else {
            self.reason = "Programmed".into();
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
pub fn reason_of(e: &AgentError) -> &'static str {
    use mirrornet_api::conditions::NodeFailure;
    let failure = match e {
        AgentError::InterfaceMissing { .. } => NodeFailure::InterfaceMissing,
        AgentError::InterfaceDown { .. } => NodeFailure::InterfaceDown,
        AgentError::AddressTaken { .. }
        | AgentError::InterfaceShared { .. }
        | AgentError::InterfaceEnslaved { .. } => NodeFailure::Conflict,
        AgentError::NodeInterface { .. } | AgentError::VrfTakesNodeRoute { .. } => {
            NodeFailure::NodeInterface
        }
        AgentError::Allocation { .. } => NodeFailure::AllocationFailed,
        AgentError::Plan(_) => NodeFailure::BackendUnavailable,
        _ => NodeFailure::ApplyFailed,
    };
    failure.as_str()
}
