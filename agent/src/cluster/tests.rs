//! The watches against a mocked API server: the loop gets nothing before both first lists are
//! in, and a change of this node's labels changes the desired set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::SendResponse;

use super::*;
use mirrornet_api::fixtures::{NetworkExt, network};
use mirrornet_api::mock_api;

/// Watch requests not answered yet, with their URIs.
type Pending = Arc<Mutex<Vec<(String, SendResponse<Response<Body>>)>>>;

fn node(labels: Value, resource_version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "node-a", "labels": labels, "resourceVersion": resource_version}})
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": api_version, "kind": kind,
                               "metadata": {"resourceVersion": "10"}, "items": items}))
    .unwrap()
}

/// Answers the two lists; parks every watch request in `watches` (answered by the test, or
/// never: a watch that is never answered is a quiet API server).
async fn api_server(mut handle: mock_api::Handle, networks: Vec<Value>, watches: Pending) {
    while let Some((request, send)) = handle.next_request().await {
        let request: Request<Body> = request;
        let uri = request.uri().to_string();
        let body = if uri.contains("watch=true") {
            watches.lock().unwrap().push((uri, send));
            continue;
        } else if uri.starts_with("/apis/mirrornet.io/v1alpha1/mirrornetworks?") {
            list(
                "MirrorNetworkList",
                "mirrornet.io/v1alpha1",
                networks.clone(),
            )
        } else if uri.starts_with("/api/v1/nodes?") {
            assert!(
                uri.contains("fieldSelector=metadata.name%3Dnode-a"),
                "only this node is watched: {uri}"
            );
            list("NodeList", "v1", vec![node(json!({"gw": "true"}), "5")])
        } else {
            panic!("unexpected request {uri}");
        };
        send.send_response(Response::builder().body(Body::from(body)).unwrap());
    }
}

fn names(desired: &[DesiredNetwork]) -> Vec<String> {
    desired.iter().map(|d| d.loaded.name().to_owned()).collect()
}

#[tokio::test]
async fn desired_set_follows_the_node_labels() {
    let (client, handle) = mock_api::client();
    let networks = vec![
        serde_json::to_value(network("a").selector(&[("gw", "true")]).allocated()).unwrap(),
        serde_json::to_value(network("b").selector(&[("lab", "x")]).allocated()).unwrap(),
        serde_json::to_value(network("c").selector(&[("gw", "true")])).unwrap(),
    ];
    let watches: Pending = Arc::default();
    tokio::spawn(api_server(handle, networks, watches.clone()));
    let mut cluster =
        tokio::time::timeout(Duration::from_secs(5), Cluster::start(client, "node-a"))
            .await
            .expect("the first lists never made a desired set")
            .unwrap();
    // c has no ids yet: it waits.
    assert_eq!(names(&cluster.desired.borrow_and_update()), ["a"]);

    // The node's watch opens; the node gets relabelled.
    let node_watch = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let found = {
                let mut parked = watches.lock().unwrap();
                let at = parked
                    .iter()
                    .position(|(uri, _)| uri.starts_with("/api/v1/nodes?"));
                at.map(|at| parked.remove(at).1)
            };
            if let Some(found) = found {
                return found;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the node watch was never opened");
    let event = json!({"type": "MODIFIED", "object": node(json!({"lab": "x"}), "11")});
    node_watch.send_response(
        Response::builder()
            .body(Body::from(format!("{event}\n").into_bytes()))
            .unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            cluster.desired.changed().await.unwrap();
            if names(&cluster.desired.borrow_and_update()) == ["b"] {
                break;
            }
        }
    })
    .await
    .expect("the relabelled node never got network b alone");
}

#[tokio::test]
async fn nothing_is_desired_before_the_first_lists() {
    // An API server that never answers: the loop must not start with an empty set, which
    // would tear down every network the node holds.
    let (client, mut handle) = mock_api::client();
    let parked = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(request) = handle.next_request().await {
            held.push(request);
        }
    });
    let started =
        tokio::time::timeout(Duration::from_millis(200), Cluster::start(client, "node-a")).await;
    assert!(started.is_err(), "start returned without any list");
    parked.abort();
}
