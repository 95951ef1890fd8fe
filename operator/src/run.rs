//! Wiring: the watches that feed the caches, the controller that drives reconcile, and the
//! triggers that re-run it when nodes or the agent DaemonSet change.
//!
//! ```text
//! watch MirrorNetworks ──> Controller ──> reconcile(network)
//! watch Nodes (cache) ──── labels / Ready / add / delete ──> reconcile all networks
//! watch DaemonSet (cache) ─ any change ──> reconcile all (each checks the DaemonSet's shape)
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use mirrornet_api::MirrorNetwork;
use tracing::{debug, warn};

use crate::config::Config;
use crate::daemonset;
use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};

/// The node facts reconcile depends on (labels, Ready); a change in anything else (heartbeats,
/// images, capacity) does not re-run reconcile.
fn node_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.labels().hash(&mut h);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    ready.hash(&mut h);
    h.finish()
}

/// Drops what reconcile never reads, to keep the node cache small on large clusters.
fn slim(node: &mut Node) {
    node.managed_fields_mut().clear();
    node.annotations_mut().clear();
    node.spec = None;
    if let Some(s) = node.status.as_mut() {
        s.images = None;
        s.volumes_attached = None;
        s.volumes_in_use = None;
        s.capacity = None;
        s.allocatable = None;
        s.node_info = None;
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn controller(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    identity: String,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(node_writer)
        .filter_map(move |event| {
            let relevant = match event {
                Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                    let print = node_fingerprint(&n);
                    seen.insert(n.name_any(), print) != Some(print)
                }
                Ok(watcher::Event::Delete(n)) => {
                    seen.remove(&n.name_any());
                    true
                }
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init) | Err(_) => false,
            };
            std::future::ready(relevant.then_some(()))
        });

    let namespace = config.agent.namespace.clone();
    let (daemonsets, ds_writer) = reflector::store::<DaemonSet>();
    let ds_changes = watcher(
        Api::<DaemonSet>::namespaced(client.clone(), &namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", daemonset::NAME)),
    )
    .default_backoff()
    .reflect(ds_writer)
    .touched_objects()
    .map(|_| ());

    let networks = Api::<MirrorNetwork>::all(client.clone());
    let controller = Controller::new(networks, watcher::Config::default().any_semantic());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: crate::MANAGER.into(),
            instance: Some(identity),
        },
    );
    let context = Arc::new(Context::new(
        client,
        config,
        controller.store(),
        nodes,
        daemonsets,
        recorder,
        metrics,
    ));
    controller
        .reconcile_all_on(node_changes)
        .reconcile_all_on(ds_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(network = %object.name, "reconciled"),
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
}
