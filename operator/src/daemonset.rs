//! The agent DaemonSet as it should be: one for all networks, its node affinity the OR of
//! every network's node selector (nodeSelectorTerms are ORed), so agents run exactly where a
//! network needs them — plus, by name, nodes that left a selector but still hold a network's
//! state, so their agent stays to tear it down.
//!
//! Lifetime: the DaemonSet carries an owner reference to every MirrorNetwork. The garbage
//! collector removes it once the last network is gone (and the operator deletes it itself
//! when no network needs agents), so uninstalling leaves no DaemonSet behind — while a
//! network's finalizer keeps the network, and so the agents, until its teardown is done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use mirrornet_api::MirrorNetwork;
use serde_json::Value;

use crate::config::AgentConfig;
use crate::deletion::reported_removed;
use crate::selection::{NodeFacts, selects};

/// Name of the agent DaemonSet in the operator's namespace.
pub const NAME: &str = "mirrornet-agent";

/// Where agents must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// No network selects any node: no DaemonSet.
    Nowhere,
    /// Some network selects every node (`nodeSelector: {}`): no affinity.
    Everywhere,
    /// The union of these terms.
    Terms(Vec<NodeSelectorTerm>),
}

/// A label selector as a node selector term. matchLabels become `In` with one value; the
/// selector operators are a subset of the node selector operators, with the same meaning.
fn term(selector: &LabelSelector) -> NodeSelectorTerm {
    let mut exprs: Vec<NodeSelectorRequirement> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![v.clone()]),
        })
        .collect();
    exprs.extend(
        selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| NodeSelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone(),
            }),
    );
    NodeSelectorTerm {
        match_expressions: Some(exprs),
        match_fields: None,
    }
}

/// True when a network needs agents somewhere: it holds ids, or some node has not yet
/// reported its state removed. Only such networks own the DaemonSet.
pub fn needs_agents(net: &MirrorNetwork) -> bool {
    let allocated = net.status.as_ref().is_some_and(|s| s.allocation.is_some());
    allocated
        || net
            .status
            .iter()
            .flat_map(|s| &s.nodes)
            .any(|e| !reported_removed(net, &e.node_name))
}

/// Where agents must run for `networks`. A network places agents on the nodes it selects
/// once it holds ids (before that, and when its spec is invalid or in conflict, an agent has
/// nothing to do for it), including while it is being deleted (its agents have teardown to
/// do); nodes whose entry does not yet say removed keep their agent in any case.
pub fn placement(networks: &[Arc<MirrorNetwork>], nodes: &[NodeFacts]) -> Placement {
    let mut terms: Vec<NodeSelectorTerm> = Vec::new();
    let mut lingering: BTreeSet<String> = BTreeSet::new();
    let mut sorted: Vec<&MirrorNetwork> = networks.iter().map(Arc::as_ref).collect();
    sorted.sort_by_key(|n| n.name_any());
    for net in sorted {
        let selector = net.spec.node_selector.as_ref();
        let allocated = net.status.as_ref().is_some_and(|s| s.allocation.is_some());
        if let Some(s) = selector.filter(|_| allocated) {
            if s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
            {
                return Placement::Everywhere;
            }
            let t = term(s);
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        for entry in net.status.iter().flat_map(|s| &s.nodes) {
            let still_selected = nodes
                .iter()
                .any(|n| n.name == entry.node_name && selects(selector, &n.labels));
            if !still_selected && !reported_removed(net, &entry.node_name) {
                lingering.insert(entry.node_name.clone());
            }
        }
    }
    if !lingering.is_empty() {
        terms.push(NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(lingering.into_iter().collect()),
            }]),
        });
    }
    if terms.is_empty() {
        Placement::Nowhere
    } else {
        Placement::Terms(terms)
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "mirrornet".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "agent".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::MANAGER.to_string(),
        ),
    ])
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

/// The DaemonSet the operator applies, or `None` when no agent is needed anywhere.
pub fn desired(
    networks: &[Arc<MirrorNetwork>],
    nodes: &[NodeFacts],
    agent: &AgentConfig,
) -> Option<DaemonSet> {
    let affinity = match placement(networks, nodes) {
        Placement::Nowhere => return None,
        Placement::Everywhere => None,
        Placement::Terms(terms) => Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut owners: Vec<OwnerReference> = networks
        .iter()
        .filter(|n| needs_agents(n))
        .filter_map(|n| n.controller_owner_ref(&()))
        .map(|mut o| {
            // Several networks own it; none is "the" controller, and the operator may not
            // block their deletion.
            o.controller = None;
            o.block_owner_deletion = None;
            o
        })
        .collect();
    owners.sort_by(|a, b| a.name.cmp(&b.name));
    let quantity = |q: &str| Quantity(q.to_string());
    Some(DaemonSet {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(agent.namespace.clone()),
            labels: Some(labels()),
            owner_references: Some(owners),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(agent.service_account.clone()),
                    priority_class_name: agent.priority_class.clone(),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    // The agent's memory of original sysctl values and applied specs lives on
                    // the node's tmpfs, so it survives agent restarts but not a reboot, which
                    // resets the sysctls anyway.
                    volumes: Some(vec![Volume {
                        name: "state".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: STATE_DIR.into(),
                            type_: Some("DirectoryOrCreate".into()),
                        }),
                        ..Default::default()
                    }]),
                    // The agent programs the node's own network namespace.
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    tolerations: Some(agent.tolerations.clone()),
                    affinity,
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some(agent.image.clone()),
                        image_pull_policy: Some(agent.image_pull_policy.clone()),
                        // JSON at info, as the operator logs by default: the agent's own
                        // defaults (text, warn) are for a person at a terminal, and left
                        // a DaemonSet's container log empty.
                        args: Some(vec![
                            "run".into(),
                            "--log-format".into(),
                            "json".into(),
                            "--metrics-address".into(),
                            format!("0.0.0.0:{}", agent.metrics_port),
                        ]),
                        ports: Some(vec![ContainerPort {
                            name: Some("metrics".into()),
                            container_port: i32::from(agent.metrics_port),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        liveness_probe: Some(http_probe("/healthz", agent.metrics_port, 10)),
                        readiness_probe: Some(http_probe("/readyz", agent.metrics_port, 5)),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "state".into(),
                            mount_path: STATE_DIR.into(),
                            ..Default::default()
                        }]),
                        env: Some(vec![
                            env_from_field("NODE_NAME", "spec.nodeName"),
                            env_from_field("POD_NAMESPACE", "metadata.namespace"),
                            EnvVar {
                                name: "MIRRORNET_LOG".into(),
                                value: Some("info".into()),
                                ..Default::default()
                            },
                        ]),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_string(), quantity(&agent.cpu_request)),
                                ("memory".to_string(), quantity(&agent.memory_request)),
                            ])),
                            limits: Some(BTreeMap::from([(
                                "memory".to_string(),
                                quantity(&agent.memory_limit),
                            )])),
                            ..Default::default()
                        }),
                        // NET_ADMIN is all netlink and nftables need; per-interface sysctls
                        // (forwarding, rp_filter) are set over netlink too, so no privileged
                        // mode and no writable /proc/sys.
                        security_context: Some(SecurityContext {
                            capabilities: Some(Capabilities {
                                add: Some(vec!["NET_ADMIN".into()]),
                                drop: Some(vec!["ALL".into()]),
                            }),
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Where the agent keeps its state (`MIRRORNET_STATE_DIR`'s default).
const STATE_DIR: &str = "/run/mirrornet";

fn http_probe(path: &str, port: u16, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        // The first pass after start can wait for the API server's first lists.
        initial_delay_seconds: Some(5),
        failure_threshold: Some(6),
        ..Default::default()
    }
}

/// True when `observed` differs from `desired` in anything the operator sets: every field of
/// `desired` must be present with the same value (lists element by element), and an affinity
/// the operator no longer sets must be gone. Fields the API server defaults are ignored.
pub fn drifted(desired: &DaemonSet, observed: Option<&DaemonSet>) -> bool {
    let Some(observed) = observed else {
        return true;
    };
    let affinity = |d: &DaemonSet| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.affinity.clone())
    };
    if affinity(desired).is_none() && affinity(observed).is_some() {
        return true;
    }
    let (Ok(want), Ok(have)) = (
        serde_json::to_value(desired),
        serde_json::to_value(observed),
    ) else {
        return true;
    };
    !contains(&have, &want)
}

fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        _ => have == want,
    }
}

/// The node selector terms of a DaemonSet, for tests and logs.
pub fn terms(ds: &DaemonSet) -> Option<&Vec<NodeSelectorTerm>> {
    ds.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .map(|s| &s.node_selector_terms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrornet_api::fixtures::{NetworkExt, network, node};

    /// One allocated network for the gateways.
    fn gateway_networks() -> Vec<Arc<MirrorNetwork>> {
        vec![Arc::new(
            network("a")
                .created(1)
                .selector(&[("gw", "true")])
                .allocated(),
        )]
    }

    fn facts(nodes: &[(&str, &[(&str, &str)])]) -> Vec<NodeFacts> {
        nodes
            .iter()
            .map(|(n, l)| NodeFacts::of(&node(n, l, true)))
            .collect()
    }

    fn requirement(prefix: &str, r: &NodeSelectorRequirement) -> String {
        let values = r.values.clone().unwrap_or_default();
        format!("{prefix}{} {} {values:?}", r.key, r.operator)
    }

    fn keys(p: &Placement) -> Vec<String> {
        match p {
            Placement::Nowhere => vec!["<nowhere>".into()],
            Placement::Everywhere => vec!["<everywhere>".into()],
            Placement::Terms(t) => t
                .iter()
                .map(|t| {
                    let e = t
                        .match_expressions
                        .iter()
                        .flatten()
                        .map(|r| requirement("", r));
                    let f = t
                        .match_fields
                        .iter()
                        .flatten()
                        .map(|r| requirement("field ", r));
                    e.chain(f).collect::<Vec<_>>().join(" && ")
                })
                .collect(),
        }
    }

    #[test]
    fn placement_is_the_union_of_selectors() {
        let nodes = facts(&[("n1", &[("gw", "true")]), ("n2", &[("lab", "x")])]);
        let gw = network("a")
            .created(1)
            .selector(&[("gw", "true")])
            .allocated();
        let lab = network("b")
            .created(2)
            .selector(&[("lab", "x")])
            .allocated();
        let gw_again = network("c")
            .created(3)
            .selector(&[("gw", "true")])
            .allocated();
        let everything = network("d").created(4).selector(&[]).allocated();
        let none = network("e").created(5).no_selector().allocated();
        let without_ids = network("h").created(8).selector(&[("lab", "z")]);
        let moved_away = network("f")
            .created(6)
            .selector(&[("lab", "y")])
            .allocated()
            .node_entry("n2", mirrornet_api::conditions::PROGRAMMED, "True");
        let moved_and_removed = network("g")
            .created(7)
            .selector(&[("lab", "y")])
            .allocated()
            .node_entry("n2", mirrornet_api::conditions::REMOVED, "True");
        let table: Vec<(&str, Vec<MirrorNetwork>, Vec<&str>)> = vec![
            ("no networks", vec![], vec!["<nowhere>"]),
            ("no selector", vec![none.clone()], vec!["<nowhere>"]),
            (
                "no ids yet (invalid, conflict)",
                vec![without_ids],
                vec!["<nowhere>"],
            ),
            ("one", vec![gw.clone()], vec![r#"gw In ["true"]"#]),
            (
                "two ORed",
                vec![lab.clone(), gw.clone()],
                vec![r#"gw In ["true"]"#, r#"lab In ["x"]"#],
            ),
            (
                "duplicates merged",
                vec![gw.clone(), gw_again],
                vec![r#"gw In ["true"]"#],
            ),
            (
                "empty selector wins",
                vec![gw.clone(), everything],
                vec!["<everywhere>"],
            ),
            (
                "node that left the selector keeps its agent until removed",
                vec![moved_away],
                vec![r#"lab In ["y"]"#, r#"field metadata.name In ["n2"]"#],
            ),
            (
                "removed: agent may go",
                vec![moved_and_removed],
                vec![r#"lab In ["y"]"#],
            ),
        ];
        for (name, nets, expected) in table {
            let nets: Vec<_> = nets.into_iter().map(Arc::new).collect();
            assert_eq!(keys(&placement(&nets, &nodes)), expected, "{name}");
        }
    }

    #[test]
    fn desired_shape() {
        let nets = gateway_networks();
        let ds = desired(&nets, &[], &AgentConfig::default()).unwrap();
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true));
        let c = &pod.containers[0];
        assert_eq!(
            c.args.clone().unwrap(),
            [
                "run",
                "--log-format",
                "json",
                "--metrics-address",
                "0.0.0.0:9090"
            ]
        );
        let probe = |p: &Option<Probe>| p.as_ref().and_then(|p| p.http_get.clone()).unwrap();
        assert_eq!(probe(&c.liveness_probe).path.as_deref(), Some("/healthz"));
        assert_eq!(probe(&c.readiness_probe).path.as_deref(), Some("/readyz"));
        assert_eq!(
            c.volume_mounts.as_ref().unwrap()[0].mount_path,
            "/run/mirrornet",
            "the state directory survives restarts on the node's tmpfs"
        );
        assert_eq!(c.image.as_deref(), Some("mirrornet/mirrornet-agent:0.1.0"));
        let caps = c
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
        let owners = ds.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "MirrorNetwork");
        assert_eq!(owners[0].name, "a");
        assert!(desired(&[], &[], &AgentConfig::default()).is_none());
    }

    #[test]
    fn drift_detection() {
        let nets = gateway_networks();
        let want = desired(&nets, &[], &AgentConfig::default()).unwrap();
        assert!(drifted(&want, None));
        // The server adds defaults and status: not drift.
        let mut have = want.clone();
        have.metadata.resource_version = Some("7".into());
        have.spec.as_mut().unwrap().revision_history_limit = Some(10);
        have.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("Always".into());
        assert!(!drifted(&want, Some(&have)));
        // Somebody changed the image: drift.
        let mut edited = have.clone();
        edited
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("other:1".into());
        assert!(drifted(&want, Some(&edited)));
        // A network was added: drift (owners and terms differ).
        let more = vec![
            nets[0].clone(),
            Arc::new(
                network("b")
                    .created(2)
                    .selector(&[("lab", "x")])
                    .allocated(),
            ),
        ];
        let want_more = desired(&more, &[], &AgentConfig::default()).unwrap();
        assert!(drifted(&want_more, Some(&have)));
        // Everywhere after a selector: the old affinity must go.
        let all = vec![Arc::new(network("c").created(3).selector(&[]).allocated())];
        let want_all = desired(&all, &[], &AgentConfig::default()).unwrap();
        let mut have_all = have.clone();
        have_all.metadata.owner_references = want_all.metadata.owner_references.clone();
        assert!(drifted(&want_all, Some(&have_all)));
    }
}
