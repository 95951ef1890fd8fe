//! Reconcile against a mocked API server (tower-test on `kube::Client`): each scenario lists
//! the exact requests it expects, in order, with their bodies; an unexpected extra request
//! hangs without an answer and fails the scenario by timeout.

use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use mirrornet_api::conditions::{self as c, reason};
use serde_json::{Value, json};

use super::*;
use crate::config::Config;
use crate::error::Class;
use mirrornet_api::fixtures::{NetworkExt, first_allocation, network, node};

use mirrornet_api::mock_api::{Exchange, Handle, expect, fail, serve};

const NETWORKS: &str = "/apis/mirrornet.io/v1alpha1/mirrornetworks";
const DAEMONSET: &str = "/apis/apps/v1/namespaces/mirrornet-system/daemonsets/mirrornet-agent";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const SSA: &str = "?&force=true&fieldManager=mirrornet-operator";

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// The cluster as the caches see it.
struct World {
    networks: Vec<MirrorNetwork>,
    nodes: Vec<Node>,
    daemonset: Option<DaemonSet>,
}

impl World {
    fn gateways() -> Self {
        Self {
            networks: vec![],
            nodes: vec![
                node("n1", &[("gw", "true")], true),
                node("n2", &[("lab", "x")], true),
            ],
            daemonset: None,
        }
    }

    fn context(self) -> (Arc<Context>, Handle) {
        let (client, handle) = mirrornet_api::mock_api::client();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::MANAGER.into(),
                instance: None,
            },
        );
        let ctx = Context::new(
            client,
            Config::default(),
            store(self.networks),
            store(self.nodes),
            store(self.daemonset.into_iter().collect()),
            recorder,
            Arc::new(Metrics::default()),
        );
        (Arc::new(ctx), handle)
    }
}

/// An event publication with this reason and type; answers with the event itself.
fn event(reason: &'static str, type_: &'static str) -> Exchange {
    expect(Method::POST, format!("{EVENTS}?"), move |body| {
        assert_eq!(body["reason"], reason, "event: {body}");
        assert_eq!(body["type"], type_, "event: {body}");
        assert_eq!(body["regarding"]["kind"], "MirrorNetwork");
        body.clone()
    })
}

/// Runs one reconcile against `script`; fails if a request is missing or one too many.
async fn scenario(
    world: World,
    net: MirrorNetwork,
    script: Vec<Exchange>,
) -> (Result<Action>, Arc<Context>) {
    let (ctx, handle) = world.context();
    let server = tokio::spawn(async move {
        let mut handle = handle;
        serve(&mut handle, script).await
    });
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(net), ctx.clone()),
    )
    .await
    .expect("reconcile hung: it made a request the scenario does not expect");
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("the scenario expects more requests than reconcile made")
        .expect("a request did not match the scenario");
    (result, ctx)
}

fn ready_condition(status: &Value) -> (String, String, String) {
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == c::READY)
        .unwrap();
    (
        ready["status"].as_str().unwrap().into(),
        ready["reason"].as_str().unwrap().into(),
        ready["message"].as_str().unwrap().into(),
    )
}

/// Asserts an SSA status patch: apiVersion and kind set, no node entries, and returns status.
fn status_patch(body: &Value) -> Value {
    assert_eq!(body["apiVersion"], "mirrornet.io/v1alpha1");
    assert_eq!(body["kind"], "MirrorNetwork");
    assert!(
        body["status"].get("nodes").is_none(),
        "the operator never writes node entries"
    );
    body["status"].clone()
}

/// The node selector terms of an applied DaemonSet as readable strings.
fn terms(body: &Value) -> Vec<String> {
    body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect()
}

fn owners(body: &Value) -> Vec<String> {
    body["metadata"]["ownerReferences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect()
}

/// A network for the gateways, created first, already carrying the finalizer: the state every
/// scenario past the first reconcile starts from.
fn gateway_network(name: &str) -> MirrorNetwork {
    network(name)
        .created(1)
        .selector(&[("gw", "true")])
        .finalized()
}

/// A network as it looks once the operator settled it: ids and the status it would write.
fn settled(net: MirrorNetwork, world: &World) -> MirrorNetwork {
    let networks: Vec<_> = world.networks.iter().cloned().map(Arc::new).collect();
    let nodes: Vec<_> = world.nodes.iter().map(NodeFacts::of).collect();
    let mut allocator = Allocator::from_existing(
        Config::default().ranges,
        world.networks.iter().filter_map(|n| {
            Some((
                n.metadata.name.as_deref()?,
                n.status.as_ref()?.allocation.as_ref()?,
            ))
        }),
    );
    let d = decision::decide_live(
        Observed {
            network: &net,
            networks: &networks,
            nodes: &nodes,
            now: Timestamp::now(),
        },
        &mut allocator,
    );
    let entries = net.status.clone().unwrap_or_default().nodes;
    net.with_status(MirrorNetworkStatus {
        nodes: entries,
        ..d.status
    })
}

fn daemonset_for(networks: &[MirrorNetwork], world: &World) -> DaemonSet {
    let nets: Vec<_> = networks.iter().cloned().map(Arc::new).collect();
    let nodes: Vec<_> = world.nodes.iter().map(NodeFacts::of).collect();
    let mut ds = daemonset::desired(&nets, &nodes, &Config::default().agent).unwrap();
    ds.metadata.resource_version = Some("10".into());
    ds
}

#[tokio::test]
async fn a_new_network_first_gets_the_finalizer() {
    let net = network("a").created(1).selector(&[("gw", "true")]);
    let answer = net.clone().finalized();
    let (result, _) = scenario(
        World::gateways(),
        net,
        vec![expect(
            Method::PATCH,
            format!("{NETWORKS}/a?"),
            move |body| {
                assert_eq!(
                    body,
                    &json!([
                        {"op": "test", "path": "/metadata/finalizers", "value": null},
                        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                    ])
                );
                serde_json::to_value(&answer).unwrap()
            },
        )],
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_valid_network_gets_ids_status_and_agents() {
    let net = gateway_network("a");
    let answer = net.clone();
    let (result, ctx) = scenario(
        World::gateways(),
        net,
        vec![
            expect(
                Method::PATCH,
                format!("{NETWORKS}/a/status{SSA}"),
                move |body| {
                    let status = status_patch(body);
                    assert_eq!(
                        status["allocation"],
                        serde_json::to_value(first_allocation()).unwrap()
                    );
                    assert_eq!(status["observedGeneration"], 1);
                    assert_eq!(status["desiredNodes"], 1);
                    assert_eq!(status["readyNodes"], 0);
                    let (s, r, m) = ready_condition(&status);
                    assert_eq!(
                        (s.as_str(), r.as_str()),
                        ("False", reason::WAITING_FOR_NODES)
                    );
                    assert!(m.contains("waiting for n1"), "{m}");
                    let types: Vec<_> = status["conditions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c["type"].as_str().unwrap().to_string())
                        .collect();
                    assert_eq!(types, [c::READY, c::PROGRESSING, c::DEGRADED]);
                    serde_json::to_value(&answer).unwrap()
                },
            ),
            expect(Method::PATCH, format!("{DAEMONSET}{SSA}"), |body| {
                assert_eq!(body["kind"], "DaemonSet");
                assert_eq!(
                    terms(body),
                    [r#"{"matchExpressions":[{"key":"gw","operator":"In","values":["true"]}]}"#]
                );
                assert_eq!(owners(body), ["a"]);
                let pod = &body["spec"]["template"]["spec"];
                assert_eq!(pod["hostNetwork"], true);
                assert_eq!(
                    pod["containers"][0]["args"],
                    json!([
                        "run",
                        "--log-format",
                        "json",
                        "--metrics-address",
                        "0.0.0.0:9090"
                    ])
                );
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"],
                    "RuntimeDefault"
                );
                assert_eq!(
                    pod["containers"][0]["securityContext"]["capabilities"]["add"],
                    json!(["NET_ADMIN"])
                );
                body.clone()
            }),
            event(reason::ALLOCATED, "Normal"),
            event(reason::WAITING_FOR_NODES, "Normal"),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(decision::RESYNC));
    assert_eq!(
        ctx.allocator.lock().unwrap().as_ref().unwrap().get("a"),
        Some(&first_allocation())
    );
}

#[tokio::test]
async fn an_unchanged_network_makes_no_request() {
    let mut world = World::gateways();
    let net = settled(gateway_network("a"), &world);
    world.daemonset = Some(daemonset_for(std::slice::from_ref(&net), &world));
    world.networks = vec![net.clone()];
    for _ in 0..3 {
        let world = World {
            networks: world.networks.clone(),
            nodes: world.nodes.clone(),
            daemonset: world.daemonset.clone(),
        };
        let (result, _) = scenario(world, net.clone(), vec![]).await;
        assert_eq!(result.unwrap(), Action::requeue(decision::RESYNC));
    }
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_touches_no_node() {
    let net = network("bad")
        .created(1)
        .selector(&[("gw", "true")])
        .subnet("192.168.2.7/24")
        .finalized();
    let answer = net.clone();
    let (result, ctx) = scenario(
        World::gateways(),
        net,
        vec![
            expect(
                Method::PATCH,
                format!("{NETWORKS}/bad/status{SSA}"),
                move |body| {
                    let status = status_patch(body);
                    assert!(
                        status.get("allocation").is_none(),
                        "no ids for an invalid spec"
                    );
                    let (s, r, m) = ready_condition(&status);
                    assert_eq!((s.as_str(), r.as_str()), ("False", reason::INVALID_SPEC));
                    assert!(m.contains("spec.subnet"), "{m}");
                    serde_json::to_value(&answer).unwrap()
                },
            ),
            // No DaemonSet request: no agent is needed for a network without ids.
            event(reason::INVALID_SPEC, "Warning"),
        ],
    )
    .await;
    // Not an error: the spec is wrong, retrying cannot help; the next edit triggers anew.
    assert_eq!(result.unwrap(), Action::requeue(decision::RESYNC));
    assert!(
        ctx.allocator
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .get("bad")
            .is_none()
    );
}

#[tokio::test]
async fn a_newer_network_on_the_same_interface_is_refused() {
    let mut world = World::gateways();
    let older = settled(
        network("older")
            .created(1)
            .selector(&[("gw", "true")])
            .finalized(),
        &world,
    );
    world.networks = vec![older.clone()];
    world.daemonset = Some(daemonset_for(std::slice::from_ref(&older), &world));
    let newer = network("newer")
        .created(2)
        .selector(&[("gw", "true")])
        .finalized();
    let answer = newer.clone();
    let (result, ctx) = scenario(
        world,
        newer,
        vec![
            expect(
                Method::PATCH,
                format!("{NETWORKS}/newer/status{SSA}"),
                move |body| {
                    let status = status_patch(body);
                    assert!(status.get("allocation").is_none());
                    let (s, r, m) = ready_condition(&status);
                    assert_eq!((s.as_str(), r.as_str()), ("False", reason::CONFLICT));
                    assert!(m.contains("network older") && m.contains("eth1"), "{m}");
                    serde_json::to_value(&answer).unwrap()
                },
            ),
            event(reason::CONFLICT, "Warning"),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(decision::CONFLICT_RECHECK));
    let allocator = ctx.allocator.lock().unwrap();
    assert_eq!(
        allocator.as_ref().unwrap().get("older"),
        Some(&first_allocation())
    );
}

#[tokio::test]
async fn the_daemonset_follows_networks_added_and_removed() {
    let mut world = World::gateways();
    let a = settled(gateway_network("a"), &world);
    world.networks = vec![a.clone()];
    world.daemonset = Some(daemonset_for(std::slice::from_ref(&a), &world));
    let gw_term = r#"{"matchExpressions":[{"key":"gw","operator":"In","values":["true"]}]}"#;
    let lab_term = r#"{"matchExpressions":[{"key":"lab","operator":"In","values":["x"]}]}"#;

    // Adding b (another interface, other nodes): the affinity becomes gw OR lab.
    let b = network("b")
        .created(2)
        .selector(&[("lab", "x")])
        .interfaces("eth5", "eth6")
        .finalized();
    let answer = b.clone();
    let (result, _) = scenario(
        World {
            networks: world.networks.clone(),
            nodes: world.nodes.clone(),
            daemonset: world.daemonset.clone(),
        },
        b.clone(),
        vec![
            expect(
                Method::PATCH,
                format!("{NETWORKS}/b/status{SSA}"),
                move |_| serde_json::to_value(&answer).unwrap(),
            ),
            expect(Method::PATCH, format!("{DAEMONSET}{SSA}"), move |body| {
                assert_eq!(terms(body), [gw_term, lab_term]);
                assert_eq!(owners(body), ["a", "b"]);
                body.clone()
            }),
            event(reason::ALLOCATED, "Normal"),
            event(reason::WAITING_FOR_NODES, "Normal"),
        ],
    )
    .await;
    result.unwrap();

    // Removing b once its node reported removal: back to gw only, then the finalizer goes.
    let b_settled = settled(b, &world)
        .generation(2)
        .node_entry("n2", c::REMOVED, "True")
        .deleting();
    world.networks.push(b_settled.clone());
    world.daemonset = Some(daemonset_for(&[a.clone(), b_settled.clone()], &world));
    let answer = b_settled.clone();
    let (result, ctx) = scenario(
        world,
        b_settled,
        vec![
            expect(Method::PATCH, format!("{DAEMONSET}{SSA}"), move |body| {
                assert_eq!(terms(body), [gw_term]);
                assert_eq!(owners(body), ["a"]);
                body.clone()
            }),
            event(reason::TEARDOWN_COMPLETE, "Normal"),
            expect(Method::PATCH, format!("{NETWORKS}/b?"), move |body| {
                assert_eq!(
                    body,
                    &json!([
                        {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                        {"op": "remove", "path": "/metadata/finalizers/0"},
                    ])
                );
                serde_json::to_value(&answer).unwrap()
            }),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let allocator = ctx.allocator.lock().unwrap();
    assert!(allocator.as_ref().unwrap().get("b").is_none(), "ids freed");
}

#[tokio::test]
async fn deletion_waits_for_every_node_to_report_removal() {
    let mut world = World::gateways();
    let net = settled(gateway_network("a"), &world)
        .generation(2)
        .deleting();
    world.networks = vec![net.clone()];
    world.daemonset = Some(daemonset_for(std::slice::from_ref(&net), &world));
    let answer = net.clone();
    let (result, ctx) = scenario(
        world,
        net.clone(),
        vec![
            expect(
                Method::PATCH,
                format!("{NETWORKS}/a/status{SSA}"),
                move |body| {
                    let status = status_patch(body);
                    let (s, r, m) = ready_condition(&status);
                    assert_eq!((s.as_str(), r.as_str()), ("False", reason::DELETING));
                    assert!(m.contains("n1"), "{m}");
                    assert_eq!(status["observedGeneration"], 2);
                    // Ids stay held until the nodes are clean.
                    assert_eq!(
                        status["allocation"],
                        serde_json::to_value(first_allocation()).unwrap()
                    );
                    serde_json::to_value(&answer).unwrap()
                },
            ),
            event(reason::DELETING, "Normal"),
        ],
    )
    .await;
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::TeardownPending { nodes } if nodes == &["n1"]),
        "{error}"
    );
    assert_eq!(error.class(), Class::Waiting);
    assert_eq!(
        error_policy(Arc::new(net), &error, ctx),
        Action::requeue(Backoff::default().waiting)
    );
}

#[tokio::test]
async fn deletion_releases_a_vanished_node_with_a_warning() {
    let mut world = World::gateways();
    let net = settled(gateway_network("a"), &world)
        .node_entry("n1", c::REMOVED, "True")
        .node_entry("gone", c::PROGRAMMED, "True")
        .deleting();
    world.networks = vec![net.clone()];
    world.daemonset = Some(daemonset_for(std::slice::from_ref(&net), &world));
    let answer = net.clone();
    let (result, _) = scenario(
        world,
        net,
        vec![
            // The last network is gone: no agent is needed anywhere.
            expect(Method::DELETE, format!("{DAEMONSET}?"), |body| {
                assert_eq!(body["propagationPolicy"], "Background");
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
            }),
            event(reason::NODE_RELEASED, "Warning"),
            event(reason::TEARDOWN_COMPLETE, "Normal"),
            expect(Method::PATCH, format!("{NETWORKS}/a?"), move |_| {
                serde_json::to_value(&answer).unwrap()
            }),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_409_on_status_is_retried_with_backoff() {
    let net = gateway_network("a");
    let (result, ctx) = scenario(
        World::gateways(),
        net.clone(),
        vec![fail(
            Method::PATCH,
            format!("{NETWORKS}/a/status{SSA}"),
            409,
        )],
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.class(), Class::Transient, "{error}");
    assert_eq!(error.metric_label(), "api_conflict");
    let net = Arc::new(net);
    let first = error_policy(net.clone(), &error, ctx.clone());
    let second = error_policy(net, &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_millis(500)));
    assert_eq!(second, Action::requeue(Duration::from_secs(1)));
    // The ids stay held in memory, so the retry hands out the same ones.
    assert_eq!(
        ctx.allocator.lock().unwrap().as_ref().unwrap().get("a"),
        Some(&first_allocation())
    );
    assert!(ctx.metrics.render().contains("error=\"api_conflict\"} 2"));
}

#[tokio::test]
async fn a_5xx_on_the_daemonset_is_retried_and_recovers() {
    let net = gateway_network("a");
    let answer = net.clone();
    let (result, ctx) = scenario(
        World::gateways(),
        net.clone(),
        vec![
            expect(
                Method::PATCH,
                format!("{NETWORKS}/a/status{SSA}"),
                move |_| serde_json::to_value(&answer).unwrap(),
            ),
            fail(Method::PATCH, format!("{DAEMONSET}{SSA}"), 503),
        ],
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.class(), Class::Transient);
    assert_eq!(error.metric_label(), "api_server_error");
    assert_eq!(
        error_policy(Arc::new(net), &error, ctx),
        Action::requeue(Duration::from_millis(500))
    );
}
