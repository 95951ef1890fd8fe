//! Test fixtures of the agent's own types: reports from the reconcile loop. Networks, nodes
//! and the rest come from [`mirrornet_api::fixtures`].

use mirrornet_api::BackendKind;
use mirrornet_api::conditions::NodeReason;

use crate::reconciler::{NetworkReport, NodeReport};

/// The loop's report of a network programmed with policy routing.
pub fn programmed(name: &str, generation: i64) -> NetworkReport {
    NetworkReport {
        name: name.into(),
        generation: Some(generation),
        backend: Some(BackendKind::PolicyRouting),
        programmed: true,
        interfaces_present: true,
        reason: Some(NodeReason::Programmed),
        message: "programmed with backend PolicyRouting".into(),
        verified: None,
        verification: String::new(),
        taken: None,
    }
}

/// The loop's report of a network whose interface `eth2` is absent.
pub fn interface_missing(name: &str, generation: i64) -> NetworkReport {
    NetworkReport {
        name: name.into(),
        generation: Some(generation),
        backend: None,
        programmed: false,
        interfaces_present: false,
        reason: Some(NodeReason::InterfaceMissing),
        message: "interface(s) eth2 (side outer, absent) on this node; programming resumes when they are present and up".into(),
        verified: None,
        verification: String::new(),
        taken: None,
    }
}

/// A synced report of `networks`, the loop holding kernel state of the networks in `held`.
pub fn report(networks: Vec<NetworkReport>, held: &[&str]) -> NodeReport {
    NodeReport {
        synced: true,
        networks: networks.into_iter().map(|n| (n.name.clone(), n)).collect(),
        removed: vec![],
        held: held.iter().map(|s| s.to_string()).collect(),
    }
}
