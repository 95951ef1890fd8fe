//! The status writer against a mocked API server (tower-test on `kube::Client`): each scenario
//! lists the exact requests a sync must make, in order, with their bodies; a sync that should
//! write nothing is checked to leave no request behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::cluster::fixtures::{interface_missing, programmed, report};
use crate::cluster::index::Index;
use mirrornet_api::fixtures::{NetworkExt, labels, network, now};
use mirrornet_api::mock_api::{self, Exchange, Handle, assert_idle, expect, fail, serve};

const NODE: &str = "node-a";
const STATUS_A: &str = "/apis/mirrornet.io/v1alpha1/mirrornetworks/a/status?&force=true&fieldManager=mirrornet-agent%2Fnode-a";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events?";

fn gw() -> BTreeMap<String, String> {
    labels(&[("gw", "true")])
}

fn placements(nets: Vec<MirrorNetwork>, labels: &BTreeMap<String, String>) -> Vec<Placement> {
    let nets: Vec<_> = nets.into_iter().map(Arc::new).collect();
    Index::new(NODE).view(&nets, labels).placements
}

/// Network `a` for the gateways, with its ids.
fn gateway_network() -> MirrorNetwork {
    network("a").selector(&[("gw", "true")]).allocated()
}

/// Network `a` as a gateway node places it.
fn placed() -> Vec<Placement> {
    placements(vec![gateway_network()], &gw())
}

/// Network `a` placed, its cached entry exactly what `report` renders: as after a restart.
fn placed_as_reported(report: &NodeReport) -> Vec<Placement> {
    let cached = status::entry(NODE, &placed()[0], report, None, Timestamp::UNIX_EPOCH).unwrap();
    placements(vec![gateway_network().with_entry(cached)], &gw())
}

/// What the API server answers a status patch with: the object, carrying the patched status.
fn patched(body: &Value) -> Value {
    let mut object = serde_json::to_value(network("a")).unwrap();
    object["status"] = body["status"].clone();
    object
}

/// A status patch of network `a` whose body must equal `want`.
fn status_patch(want: Value) -> Exchange {
    expect(Method::PATCH, STATUS_A, move |body| {
        assert_eq!(body, &want, "SSA body");
        patched(body)
    })
}

/// An event publication with this reason and type; answers with the event itself.
fn event(reason: &'static str, type_: &'static str) -> Exchange {
    expect(Method::POST, EVENTS, move |body| {
        assert_eq!(body["reason"], reason, "event: {body}");
        assert_eq!(body["type"], type_, "event: {body}");
        assert_eq!(body["regarding"]["kind"], "MirrorNetwork");
        assert_eq!(body["regarding"]["name"], "a");
        assert_eq!(body["reportingController"], "mirrornet-agent");
        assert_eq!(body["reportingInstance"], NODE);
        body.clone()
    })
}

/// One sync against `script`; fails if a request is missing, wrong, or one too many.
async fn sync(
    writer: &mut StatusWriter,
    handle: &mut Handle,
    placements: &[Placement],
    report: &NodeReport,
    repairs: u64,
    script: Vec<Exchange>,
) -> Synced {
    let (done, ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(
            writer.sync(placements, report, repairs, now()),
            serve(handle, script)
        )
    })
    .await
    .expect("sync hung: it made a request the scenario does not expect");
    assert_idle(handle);
    done
}

fn time(t: Timestamp) -> String {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn programmed_network_is_reported_by_server_side_apply() {
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let nets = placed();
    let t = time(now());
    let done = sync(
        &mut writer,
        &mut handle,
        &nets,
        &report(vec![programmed("a", 1)], &["a"]),
        0,
        vec![
            status_patch(json!({
                "apiVersion": "mirrornet.io/v1alpha1",
                "kind": "MirrorNetwork",
                "status": {"nodes": [{
                    "nodeName": "node-a",
                    "backend": "PolicyRouting",
                    "observedGeneration": 1,
                    "conditions": [
                        {"type": "Programmed", "status": "True", "reason": "Applied",
                         "message": "programmed with backend PolicyRouting",
                         "observedGeneration": 1, "lastTransitionTime": t},
                        {"type": "InterfacesPresent", "status": "True", "reason": "AllPresent",
                         "message": "every side's interface is present and up",
                         "observedGeneration": 1, "lastTransitionTime": t},
                    ],
                }]},
            })),
            event("Applied", "Normal"),
        ],
    )
    .await;
    assert_eq!(
        done,
        Synced {
            written: 1,
            failed: 0
        }
    );
    // The same report again, the cache not caught up yet: nothing is written twice.
    let done = sync(
        &mut writer,
        &mut handle,
        &nets,
        &report(vec![programmed("a", 1)], &["a"]),
        0,
        vec![],
    )
    .await;
    assert_eq!(done, Synced::default());
}

#[tokio::test]
async fn an_entry_already_in_the_cache_is_not_rewritten() {
    // As after a restart: the cache holds exactly what this report renders.
    let report = report(vec![programmed("a", 1)], &["a"]);
    let nets = placed_as_reported(&report);
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let done = sync(&mut writer, &mut handle, &nets, &report, 0, vec![]).await;
    assert_eq!(done, Synced::default());
}

#[tokio::test]
async fn failure_is_reported_with_a_warning_once() {
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let nets = placed();
    let missing = report(vec![interface_missing("a", 1)], &[]);
    sync(
        &mut writer,
        &mut handle,
        &nets,
        &missing,
        0,
        vec![
            expect(Method::PATCH, STATUS_A, |body| {
                let entry = &body["status"]["nodes"][0];
                assert_eq!(entry["conditions"][0]["status"], "False");
                assert_eq!(entry["conditions"][0]["reason"], "InterfaceMissing");
                assert!(
                    entry.get("backend").is_none(),
                    "no backend programmed: {entry}"
                );
                patched(body)
            }),
            event("InterfaceMissing", "Warning"),
        ],
    )
    .await;
    // The message changes (another interface), the reason does not: a write, no new event.
    let mut worse = interface_missing("a", 1);
    worse.message = "interface(s) eth1 (side inner, absent), eth2 (side outer, absent)".into();
    sync(
        &mut writer,
        &mut handle,
        &nets,
        &report(vec![worse], &[]),
        0,
        vec![expect(Method::PATCH, STATUS_A, patched)],
    )
    .await;
}

#[tokio::test]
async fn deletion_reports_removed_only_after_teardown() {
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let selected = gateway_network();
    let programmed_entry = status::entry(
        NODE,
        &placements(vec![selected.clone()], &gw())[0],
        &report(vec![programmed("a", 1)], &["a"]),
        None,
        Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    let deleting = placements(
        vec![selected.with_entry(programmed_entry).deleting()],
        &gw(),
    );
    // The loop has not run since: it still reports the network programmed.
    let pending = report(vec![programmed("a", 1)], &["a"]);
    let done = sync(&mut writer, &mut handle, &deleting, &pending, 0, vec![]).await;
    assert_eq!(done, Synced::default());
    // A pass dropped it from the desired set but the removal failed: still held.
    let failed = report(vec![], &["a"]);
    sync(&mut writer, &mut handle, &deleting, &failed, 0, vec![]).await;
    // Torn down.
    let t = time(now());
    let epoch = time(Timestamp::UNIX_EPOCH);
    let message = "removed from this node: the network is being deleted";
    let done = sync(
        &mut writer,
        &mut handle,
        &deleting,
        &report(vec![], &[]),
        0,
        vec![
            status_patch(json!({
                "apiVersion": "mirrornet.io/v1alpha1",
                "kind": "MirrorNetwork",
                "status": {"nodes": [{
                    "nodeName": "node-a",
                    "observedGeneration": 1,
                    "conditions": [
                        {"type": "Programmed", "status": "False", "reason": "TornDown",
                         "message": message, "observedGeneration": 1, "lastTransitionTime": t},
                        {"type": "Removed", "status": "True", "reason": "TornDown",
                         "message": message, "observedGeneration": 1, "lastTransitionTime": t},
                    ],
                }]},
            })),
            event("TornDown", "Normal"),
        ],
    )
    .await;
    assert_eq!(done.written, 1);
    assert_ne!(t, epoch);
    sync(
        &mut writer,
        &mut handle,
        &deleting,
        &report(vec![], &[]),
        0,
        vec![],
    )
    .await;
}

#[tokio::test]
async fn leaving_the_selector_reports_removed_and_a_node_never_selected_writes_nothing() {
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let plain: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
    let left = placements(
        vec![gateway_network().node_entry(NODE, "Programmed", "True")],
        &plain,
    );
    sync(
        &mut writer,
        &mut handle,
        &left,
        &report(vec![], &[]),
        0,
        vec![
            expect(Method::PATCH, STATUS_A, |body| {
                let conditions = &body["status"]["nodes"][0]["conditions"];
                assert_eq!(conditions[1]["type"], "Removed");
                assert_eq!(conditions[1]["status"], "True");
                assert_eq!(
                    conditions[1]["message"],
                    "removed from this node: the node selector does not match this node"
                );
                patched(body)
            }),
            event("TornDown", "Normal"),
        ],
    )
    .await;
    let never = placements(vec![gateway_network()], &plain);
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    sync(
        &mut writer,
        &mut handle,
        &never,
        &report(vec![], &[]),
        0,
        vec![],
    )
    .await;
}

#[tokio::test]
async fn a_failed_write_is_retried_and_its_event_sent_once() {
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let nets = placed();
    let ok = report(vec![programmed("a", 1)], &["a"]);
    let done = sync(
        &mut writer,
        &mut handle,
        &nets,
        &ok,
        0,
        vec![fail(Method::PATCH, STATUS_A, 503)],
    )
    .await;
    assert_eq!(
        done,
        Synced {
            written: 0,
            failed: 1
        }
    );
    let done = sync(
        &mut writer,
        &mut handle,
        &nets,
        &ok,
        0,
        vec![
            expect(Method::PATCH, STATUS_A, patched),
            event("Applied", "Normal"),
        ],
    )
    .await;
    assert_eq!(done.written, 1);
}

#[tokio::test]
async fn a_network_gone_before_its_write_is_dropped_quietly() {
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    let nets = placed();
    let done = sync(
        &mut writer,
        &mut handle,
        &nets,
        &report(vec![programmed("a", 1)], &["a"]),
        0,
        vec![fail(Method::PATCH, STATUS_A, 404)],
    )
    .await;
    assert_eq!(done, Synced::default());
}

#[tokio::test]
async fn repairs_are_announced_on_programmed_networks() {
    let report = report(vec![programmed("a", 1)], &["a"]);
    let nets = placed_as_reported(&report);
    let (client, mut handle) = mock_api::client();
    let mut writer = StatusWriter::new(client, NODE);
    sync(
        &mut writer,
        &mut handle,
        &nets,
        &report,
        1,
        vec![event("Repaired", "Normal")],
    )
    .await;
    // No new repair: no event.
    sync(&mut writer, &mut handle, &nets, &report, 1, vec![]).await;
}
