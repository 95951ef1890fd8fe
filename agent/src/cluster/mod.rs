//! In-cluster mode: the desired networks of `run` come from the MirrorNetworks that select this
//! node, and this node's `status.nodes` entry of each says how it stands.
//!
//! ```text
//! watch MirrorNetworks (reflector) ─┐
//! watch Node <node> (labels) ───────┼─> index (pure) ─┬─> desired ──> reconciler::run ─> NodeReport
//!                                   │                 └─> placements ─┐                      │
//!                                   │                                 └──> writer (SSA, Events) <┘
//! ```
//!
//! Fail static: the loop starts only once both watches have delivered a complete first list
//! (an empty list before that would tear everything down), and when the API server goes away
//! the watchers retry with backoff while the loop keeps the last desired set in place.
//!
//! `Removed=True` is written once the loop's report neither lists the network nor holds it in
//! the kernel ([`NodeReport::held`]). Known limits: a network added and dropped again within
//! one pass can be reported removed a pass before the loop removes what it just programmed
//! (the next pass removes it, so no residue stays); repairs are counted per node, so a
//! `Repaired` event goes to every network programmed on the node.

pub mod index;
pub mod rbac;
pub mod status;
pub mod writer;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use mirrornet_api::MirrorNetwork;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::reconciler::{DesiredNetwork, Metrics, NodeReport};
use index::{Index, Placement};

/// What can go wrong in cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "connecting to the Kubernetes API server (in a pod: the service account; elsewhere: KUBECONFIG)"
    )]
    Connect(#[source] kube::Error),
    #[error("the watches of MirrorNetworks and of node {node} stopped before their first list")]
    WatchesStopped { node: String },
    #[error("writing node {node}'s entry in the status of MirrorNetwork {network}: {source}")]
    WriteStatus {
        network: String,
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// The running watches of one node.
pub struct Cluster {
    client: Client,
    node: String,
    /// What the reconcile loop should hold.
    pub desired: watch::Receiver<Vec<DesiredNetwork>>,
    placements: watch::Receiver<Arc<Vec<Placement>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects with the ambient configuration (service account in a pod, else KUBECONFIG).
    pub async fn connect(node: &str) -> Result<Self, ClusterError> {
        let client = Client::try_default().await.map_err(ClusterError::Connect)?;
        Self::start(client, node).await
    }

    /// Starts the watches and returns once they have produced the node's first desired set,
    /// retrying (with backoff) for as long as the API server cannot be reached.
    pub async fn start(client: Client, node: &str) -> Result<Self, ClusterError> {
        let (desired_tx, mut desired) = watch::channel(Vec::new());
        let (placements_tx, placements) = watch::channel(Arc::new(Vec::new()));
        let span = info_span!("cluster", node = %node);
        tokio::spawn(
            watch_cluster(client.clone(), node.to_owned(), desired_tx, placements_tx)
                .instrument(span),
        );
        info!(
            node,
            "waiting for the first list of MirrorNetworks and of this Node"
        );
        desired
            .changed()
            .await
            .map_err(|_| ClusterError::WatchesStopped { node: node.into() })?;
        info!(
            node,
            networks = desired.borrow().len(),
            "first desired set known"
        );
        Ok(Self {
            client,
            node: node.into(),
            desired,
            placements,
        })
    }

    /// Starts the single writer of this node's status entries, fed by the loop's reports.
    pub fn spawn_status_writer(
        &self,
        report: watch::Receiver<NodeReport>,
        metrics: Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        let writer = writer::StatusWriter::new(self.client.clone(), &self.node);
        let span = info_span!("status", node = %self.node);
        tokio::spawn(writer::run(writer, self.placements.clone(), report, metrics).instrument(span))
    }
}

/// Keeps only what the index reads: managed fields grow with every agent that writes an
/// entry, and other nodes' entries are not this node's business.
fn slim(node: &str) -> impl FnMut(&mut MirrorNetwork) + use<> {
    let node = node.to_owned();
    move |net| {
        net.managed_fields_mut().clear();
        net.annotations_mut().clear();
        if let Some(s) = net.status.as_mut() {
            s.nodes.retain(|e| e.node_name == node);
            s.conditions.clear();
        }
    }
}

/// Feeds the index from both watches and publishes its decisions: desired only when the loop
/// would see a difference, placements whenever they change.
async fn watch_cluster(
    client: Client,
    node: String,
    desired: watch::Sender<Vec<DesiredNetwork>>,
    placements: watch::Sender<Arc<Vec<Placement>>>,
) {
    let (store, store_writer) = reflector::store::<MirrorNetwork>();
    let networks = watcher(
        Api::<MirrorNetwork>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim(&node))
    .reflect(store_writer);
    let nodes = watcher(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
    )
    .default_backoff();
    let mut networks = std::pin::pin!(networks);
    let mut nodes = std::pin::pin!(nodes);
    let mut index = Index::new(node.clone());
    let mut labels: Option<BTreeMap<String, String>> = None;
    let mut listed = false;
    let mut last_key = None;
    loop {
        tokio::select! {
            event = networks.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => listed = true,
                // The store swaps in a re-list whole at InitDone; nothing to decide before.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!(error = %e, "watching MirrorNetworks; retrying, the datapath stays");
                    continue;
                }
                None => break,
            },
            event = nodes.next() => match event {
                Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => {
                    if labels.as_ref() == Some(n.labels()) {
                        continue;
                    }
                    debug!(labels = ?n.labels(), "node labels");
                    labels = Some(n.labels().clone());
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    // A deleted Node is leaving the cluster; its datapath goes with the
                    // machine, not with the object (fail static).
                    warn!("this node's Node object was deleted; keeping its networks as they are");
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) if labels.is_none() => {
                    warn!("no Node object named {node}: check --node-name / NODE_NAME");
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    warn!(error = %e, "watching this node; retrying, the datapath stays");
                    continue;
                }
                None => break,
            },
        }
        let Some(labels) = labels.as_ref().filter(|_| listed) else {
            continue;
        };
        let view = index.view(&store.state(), labels);
        let key = view.desired_key();
        if last_key.as_ref() != Some(&key) {
            info!(
                networks = ?key.iter().map(|k| k.name()).collect::<Vec<_>>(),
                "desired networks changed"
            );
            last_key = Some(key);
            if desired.send(view.desired).is_err() {
                break;
            }
        }
        placements.send_if_modified(|current| {
            if **current == view.placements {
                false
            } else {
                *current = Arc::new(view.placements);
                true
            }
        });
    }
    warn!("the cluster watches ended");
}
