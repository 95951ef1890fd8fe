//! Events about a network, as operator and agent tell them to people: decided as [`Notice`]s
//! (pure values the tests compare), then published through kube's [`Recorder`].

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

/// The API server refuses an Event note longer than this (in characters we keep).
const NOTE_LIMIT: usize = 1000;

/// An event to publish about a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    /// What the publisher was doing, as Events ask (`action`).
    pub action: &'static str,
}

impl Notice {
    fn event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.clone(),
            note: Some(self.note.chars().take(NOTE_LIMIT).collect()),
            action: self.action.into(),
            secondary: None,
        }
    }
}

/// Publishes `notices` as Events on `reference`. Events are for people: failing to publish
/// one is logged and must hold up neither a reconcile nor a status write.
pub async fn publish(recorder: &Recorder, reference: &ObjectReference, notices: &[Notice]) {
    for n in notices {
        if let Err(e) = recorder.publish(&n.event(), reference).await {
            warn!(reason = %n.reason, error = %e, "could not publish event");
        }
    }
}
