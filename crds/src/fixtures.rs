//! Test fixtures for the operator's, the agent's and this crate's tests (feature `testing`):
//! networks and nodes that read as the scenario they set up
//! (`network("a").created(1).selector(&gw).allocated().deleting()`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus as K8sNodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use crate::{
    Allocation, BackendKind, FINALIZER, MirrorNetwork, MirrorNetworkSpec, MirrorNetworkStatus,
    NodeStatus, Side, SideAllocation,
};

/// The time tests call "now".
pub fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

/// Labels (of a node, or for a selector) from `(key, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A side on `interface` with the seed's alias prefix and no explicit ids.
pub fn side(name: &str, interface: &str) -> Side {
    Side {
        name: name.into(),
        interface: interface.into(),
        alias_prefix: "192.168.3.0/24".into(),
        kernel_ids: None,
        take_over_node_interface: false,
    }
}

/// A valid spec with `sides` on the seed's subnet, selecting every node, all else default.
pub fn spec(sides: Vec<Side>) -> MirrorNetworkSpec {
    MirrorNetworkSpec {
        node_selector: Some(LabelSelector::default()),
        subnet: "192.168.2.0/24".into(),
        gateway_address: "192.168.2.1".into(),
        host_prefix: None,
        sides,
        backend: Default::default(),
        direction: Default::default(),
        answer_only: Vec::new(),
        allow: Vec::new(),
        suspend: false,
        verify: None,
    }
}

/// A valid two-sided network (inner eth1 / outer eth2, the seed's addresses), generation 1,
/// with a uid and a resource version.
pub fn network(name: &str) -> MirrorNetwork {
    let mut net = MirrorNetwork::new(
        name,
        spec(vec![side("inner", "eth1"), side("outer", "eth2")]),
    );
    net.metadata.uid = Some(format!("uid-{name}"));
    net.metadata.generation = Some(1);
    net.metadata.resource_version = Some("1".into());
    net
}

/// Chainable changes to a fixture network.
pub trait NetworkExt: Sized {
    fn selector(self, labels: &[(&str, &str)]) -> Self;
    fn no_selector(self) -> Self;
    fn interfaces(self, a: &str, b: &str) -> Self;
    fn subnet(self, subnet: &str) -> Self;
    /// Created `seconds` after the epoch (older networks win conflicts).
    fn created(self, seconds: i64) -> Self;
    /// Carries the operator's finalizer.
    fn finalized(self) -> Self;
    /// Being deleted. The API server deletes an object without finalizers at once, so a
    /// deleting network always carries the operator's finalizer.
    fn deleting(self) -> Self;
    fn generation(self, g: i64) -> Self;
    /// Gives it the ids the default ranges hand the first network.
    fn allocated(self) -> Self;
    fn with_status(self, status: MirrorNetworkStatus) -> Self;
    /// Adds (or extends) the agent entry of `node` with one condition, as its agent wrote it.
    fn node_entry(self, node: &str, type_: &str, status: &str) -> Self;
    /// Replaces the agent entry of `node`.
    fn with_entry(self, entry: NodeStatus) -> Self;
}

impl NetworkExt for MirrorNetwork {
    fn selector(mut self, labels: &[(&str, &str)]) -> Self {
        self.spec.node_selector = Some(LabelSelector {
            match_labels: (!labels.is_empty()).then(|| self::labels(labels)),
            match_expressions: None,
        });
        self
    }
    fn no_selector(mut self) -> Self {
        self.spec.node_selector = None;
        self
    }
    fn interfaces(mut self, a: &str, b: &str) -> Self {
        self.spec.sides[0].interface = a.into();
        self.spec.sides[1].interface = b.into();
        self
    }
    fn subnet(mut self, subnet: &str) -> Self {
        self.spec.subnet = subnet.into();
        self
    }
    fn created(mut self, seconds: i64) -> Self {
        self.metadata.creation_timestamp = Some(Time(Timestamp::from_second(seconds).unwrap()));
        self
    }
    fn finalized(mut self) -> Self {
        let finalizers = self.metadata.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == FINALIZER) {
            finalizers.push(FINALIZER.into());
        }
        self
    }
    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5000).unwrap()));
        self.finalized()
    }
    fn generation(mut self, g: i64) -> Self {
        self.metadata.generation = Some(g);
        self
    }
    fn allocated(mut self) -> Self {
        self.status.get_or_insert_with(Default::default).allocation = Some(first_allocation());
        self
    }
    fn with_status(mut self, status: MirrorNetworkStatus) -> Self {
        self.status = Some(status);
        self
    }
    fn node_entry(mut self, node: &str, type_: &str, status: &str) -> Self {
        let generation = self.metadata.generation;
        let nodes = &mut self.status.get_or_insert_with(Default::default).nodes;
        let pos = match nodes.iter().position(|e| e.node_name == node) {
            Some(p) => p,
            None => {
                nodes.push(NodeStatus {
                    node_name: node.into(),
                    backend: Some(BackendKind::PolicyRouting),
                    observed_generation: generation,
                    conditions: vec![],
                });
                nodes.len() - 1
            }
        };
        nodes[pos].conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Test".into(),
            message: String::new(),
            observed_generation: generation,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        });
        self
    }
    fn with_entry(mut self, entry: NodeStatus) -> Self {
        let nodes = &mut self.status.get_or_insert_with(Default::default).nodes;
        nodes.retain(|e| e.node_name != entry.node_name);
        nodes.push(entry);
        self
    }
}

/// What the default ranges give the first network with sides inner and outer.
pub fn first_allocation() -> Allocation {
    let side = |side: &str, i: u32| SideAllocation {
        side: side.into(),
        table: 20000 + i,
        mark: (i + 1) << 24,
        zone: 40000 + i as u16,
        rule_priority: 500 + i,
    };
    Allocation {
        mark_mask: 0xff00_0000,
        sides: vec![side("inner", 0), side("outer", 1)],
    }
}

fn node_with(name: &str, labels: &[(&str, &str)], ready: &str, since: i64) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(self::labels(labels)),
            ..Default::default()
        },
        spec: None,
        status: Some(K8sNodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.into(),
                last_transition_time: Some(Time(Timestamp::from_second(since).unwrap())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A node with `labels` whose kubelet is Ready (or not, since the epoch).
pub fn node(name: &str, labels: &[(&str, &str)], ready: bool) -> Node {
    node_with(name, labels, if ready { "True" } else { "False" }, 0)
}

/// A node whose kubelet has been NotReady since `since` seconds after the epoch.
pub fn node_not_ready_since(name: &str, labels: &[(&str, &str)], since: i64) -> Node {
    node_with(name, labels, "False", since)
}
