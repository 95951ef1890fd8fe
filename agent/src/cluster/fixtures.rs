//! Test fixtures: networks that read as the scenario they set up
//! (`network("a").selector(&gw).allocated().deleting()`), and reports from the loop.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use mirrornet_api::{
    Allocation, BackendKind, MirrorNetwork, MirrorNetworkSpec, NodeStatus, Side, SideAllocation,
};

use crate::reconciler::NetworkReport;

/// A valid two-sided network (inner eth1 / outer eth2), generation 1, with a uid.
pub fn network(name: &str) -> MirrorNetwork {
    let side = |name: &str, interface: &str| Side {
        name: name.into(),
        interface: interface.into(),
        alias_prefix: "192.168.3.0/24".into(),
        kernel_ids: None,
        take_over_node_interface: false,
    };
    let mut net = MirrorNetwork::new(
        name,
        MirrorNetworkSpec {
            node_selector: Some(LabelSelector::default()),
            subnet: "192.168.2.0/24".into(),
            gateway_address: "192.168.2.1".into(),
            sides: vec![side("inner", "eth1"), side("outer", "eth2")],
            backend: Default::default(),
            direction: Default::default(),
            answer_only: Vec::new(),
            allow: Vec::new(),
            suspend: false,
            verify: None,
        },
    );
    net.metadata.uid = Some(format!("uid-{name}"));
    net.metadata.generation = Some(1);
    net.metadata.resource_version = Some("1".into());
    net
}

pub trait NetworkExt: Sized {
    fn selector(self, labels: &[(&str, &str)]) -> Self;
    fn no_selector(self) -> Self;
    fn subnet(self, subnet: &str) -> Self;
    fn generation(self, g: i64) -> Self;
    fn deleting(self) -> Self;
    fn allocated(self) -> Self;
    /// Adds (or extends) the entry of `node` with one condition, as its agent wrote it.
    fn entry(self, node: &str, type_: &str, status: &str) -> Self;
    /// Replaces the entry of `node`.
    fn with_entry(self, entry: NodeStatus) -> Self;
}

impl NetworkExt for MirrorNetwork {
    fn selector(mut self, labels: &[(&str, &str)]) -> Self {
        self.spec.node_selector = Some(LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        });
        self
    }
    fn no_selector(mut self) -> Self {
        self.spec.node_selector = None;
        self
    }
    fn subnet(mut self, subnet: &str) -> Self {
        self.spec.subnet = subnet.into();
        self
    }
    fn generation(mut self, g: i64) -> Self {
        self.metadata.generation = Some(g);
        self
    }
    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5000).unwrap()));
        self.metadata.finalizers = Some(vec!["mirrornet.io/teardown".into()]);
        self
    }
    fn allocated(mut self) -> Self {
        self.status.get_or_insert_with(Default::default).allocation = Some(allocation());
        self
    }
    fn entry(mut self, node: &str, type_: &str, status: &str) -> Self {
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

/// Ids as the operator's default ranges give the first network.
pub fn allocation() -> Allocation {
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

/// The loop's report of a network programmed with policy routing.
pub fn programmed(name: &str, generation: i64) -> NetworkReport {
    NetworkReport {
        name: name.into(),
        generation: Some(generation),
        backend: Some(BackendKind::PolicyRouting),
        programmed: true,
        interfaces_present: true,
        reason: "Programmed".into(),
        message: "programmed with backend PolicyRouting".into(),
        verified: None,
        verification: String::new(),
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
        reason: "InterfaceMissing".into(),
        message: "interface(s) eth2 (side outer, absent) on this node; programming resumes when they are present and up".into(),
        verified: None,
        verification: String::new(),
    }
}

/// The time tests call "now".
pub fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}
