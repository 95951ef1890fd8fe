//! Which nodes a network selects: its `nodeSelector` evaluated against node labels, as the
//! API server would, and the node facts (exists, kubelet Ready since when) the decisions need.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// The selector semantics live with the API types, shared with the agent.
pub use mirrornet_api::selection::selects;

/// What the operator knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `None` while the kubelet reports Ready; otherwise since when it has not (the Ready
    /// condition's last transition, or `None` inside when unknown).
    pub not_ready_since: Option<Option<Timestamp>>,
}

impl NodeFacts {
    /// Reads the facts from a Node object.
    pub fn of(node: &Node) -> Self {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let not_ready_since = match ready {
            Some(c) if c.status == "True" => None,
            Some(c) => Some(c.last_transition_time.as_ref().map(|t| t.0)),
            None => Some(None),
        };
        Self {
            name: node.name_any(),
            labels: node.labels().clone(),
            not_ready_since,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_since.is_none()
    }
}

/// The nodes `selector` selects, by name.
pub fn selected<'a>(
    selector: Option<&LabelSelector>,
    nodes: &'a [NodeFacts],
) -> impl Iterator<Item = &'a NodeFacts> {
    nodes.iter().filter(move |n| selects(selector, &n.labels))
}
