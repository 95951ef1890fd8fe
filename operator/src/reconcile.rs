//! The thin shell around the decisions: read the watch caches, decide (no client), then act —
//! write status by server-side apply, keep the agent DaemonSet in shape, publish events — and
//! tell the controller when to look again.
//!
//! ```text
//! Controller ─> reconcile ─> finalizer ─┬─ Apply   ─> decide_live ─> status, DaemonSet, events
//!                                       └─ Cleanup ─> decide_teardown ─┬─ waiting: status, retry
//!                                                                      └─ done: free ids, DaemonSet
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use mirrornet_api::allocation::Allocator;
use mirrornet_api::conditions as c;
use mirrornet_api::events::{self, Notice};
use mirrornet_api::{MirrorNetwork, MirrorNetworkStatus};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::daemonset;
use crate::decision::{self, Observed};
use crate::error::{Backoff, Error, Result};
use crate::metrics::Metrics;
use crate::selection::NodeFacts;

pub use mirrornet_api::FINALIZER;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    /// The controller's cache of every MirrorNetwork.
    pub networks: Store<MirrorNetwork>,
    pub nodes: Store<Node>,
    /// The cache of the agent DaemonSet (one object, at most).
    pub daemonsets: Store<DaemonSet>,
    /// Every network's ids; built from recorded status on first use in a leadership term.
    pub allocator: Mutex<Option<Allocator>>,
    /// Serialises DaemonSet writes, which every network's reconcile may want.
    pub daemonset_lock: tokio::sync::Mutex<()>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// Consecutive failures per network, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        networks: Store<MirrorNetwork>,
        nodes: Store<Node>,
        daemonsets: Store<DaemonSet>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            config,
            networks,
            nodes,
            daemonsets,
            allocator: Mutex::new(None),
            daemonset_lock: tokio::sync::Mutex::new(()),
            recorder,
            metrics,
            backoff: Backoff::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn node_facts(&self) -> Vec<NodeFacts> {
        self.nodes
            .state()
            .iter()
            .map(|n| NodeFacts::of(n))
            .collect()
    }

    /// Every known network, with `current` in place of its (possibly older) cached copy.
    fn networks_with(&self, current: &Arc<MirrorNetwork>) -> Vec<Arc<MirrorNetwork>> {
        let name = current.name_any();
        let mut all: Vec<_> = self
            .networks
            .state()
            .into_iter()
            .filter(|n| n.name_any() != name)
            .collect();
        all.push(current.clone());
        all
    }

    /// Runs `f` on the allocator, building it from recorded status first if needed, and
    /// forgetting networks that no longer exist (deleted while this replica was not leader).
    fn with_allocator<T>(&self, f: impl FnOnce(&mut Allocator) -> T) -> T {
        let mut guard = self.allocator.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.networks.state();
        let allocator = guard.get_or_insert_with(|| {
            Allocator::from_existing(
                self.config.ranges.clone(),
                known.iter().filter_map(|n| {
                    Some((
                        n.metadata.name.as_deref()?,
                        n.status.as_ref()?.allocation.as_ref()?,
                    ))
                }),
            )
        });
        let gone: Vec<String> = allocator
            .networks()
            .filter(|held| !known.iter().any(|n| n.name_any() == *held))
            .map(String::from)
            .collect();
        for name in gone {
            allocator.release(&name);
        }
        let out = f(allocator);
        self.metrics.id_usage(&allocator.usage());
        out
    }

    async fn publish(&self, net: &MirrorNetwork, notices: &[Notice]) {
        events::publish(&self.recorder, &net.object_ref(&()), notices).await;
    }

    /// Writes the summary status by server-side apply under the operator's field manager.
    /// `nodes` is never part of the patch: each agent owns its own entry.
    async fn write_status(&self, name: &str, status: &MirrorNetworkStatus) -> Result<()> {
        let api: Api<MirrorNetwork> = Api::all(self.client.clone());
        let patch = serde_json::json!({
            "apiVersion": MirrorNetwork::api_version(&()),
            "kind": MirrorNetwork::kind(&()),
            "status": MirrorNetworkStatus {
                nodes: Vec::new(),
                ..status.clone()
            },
        });
        api.patch_status(
            name,
            &PatchParams::apply(crate::MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    /// Applies the agent DaemonSet when it is missing or drifted from what `networks` need,
    /// deletes it when no network needs agents, and does nothing otherwise.
    pub async fn ensure_daemonset(&self, networks: &[Arc<MirrorNetwork>]) -> Result<()> {
        let _one_writer = self.daemonset_lock.lock().await;
        let namespace = &self.config.agent.namespace;
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), namespace);
        let key = ObjectRef::new(daemonset::NAME).within(namespace);
        let observed = self.daemonsets.get(&key);
        match daemonset::desired(networks, &self.node_facts(), &self.config.agent) {
            None => {
                if observed.is_some() {
                    info!("no network needs agents; deleting the agent DaemonSet");
                    match api
                        .delete(daemonset::NAME, &DeleteParams::background())
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Some(want) => {
                if daemonset::drifted(&want, observed.as_deref()) {
                    info!(
                        terms = daemonset::terms(&want).map_or(0, Vec::len),
                        "applying the agent DaemonSet"
                    );
                    api.patch(
                        daemonset::NAME,
                        &PatchParams::apply(crate::MANAGER).force(),
                        &Patch::Apply(&want),
                    )
                    .await?;
                } else {
                    debug!("agent DaemonSet in shape");
                }
            }
        }
        Ok(())
    }
}

fn ready_state(status: &MirrorNetworkStatus) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|x| x.type_ == c::READY)
        .map(|x| (x.status.clone(), x.reason.clone()))
}

/// A network that is not being deleted: decide, then write what changed.
async fn apply_live(net: Arc<MirrorNetwork>, ctx: &Context) -> Result<Action> {
    let name = net.name_any();
    let networks = ctx.networks_with(&net);
    let nodes = ctx.node_facts();
    let decision = ctx.with_allocator(|allocator| {
        decision::decide_live(
            Observed {
                network: &net,
                networks: &networks,
                nodes: &nodes,
                now: Timestamp::now(),
            },
            allocator,
        )
    });
    // Status first: ids are recorded before any agent is scheduled to use them.
    if decision.status_changed {
        info!(ready = ?ready_state(&decision.status), "writing status");
        ctx.write_status(&name, &decision.status).await?;
    }
    // The DaemonSet follows the ids just decided, not the status still in the cache.
    let mut decided = (*net).clone();
    decided.status = Some(MirrorNetworkStatus {
        nodes: net.status.iter().flat_map(|s| s.nodes.clone()).collect(),
        ..decision.status.clone()
    });
    ctx.ensure_daemonset(&ctx.networks_with(&Arc::new(decided)))
        .await?;
    ctx.publish(&net, &decision.notices).await;
    ctx.metrics
        .network_state(&name, ready_state(&decision.status));
    Ok(Action::requeue(decision.requeue))
}

/// A network being deleted: wait for the nodes, then free its ids and let it go.
async fn teardown(net: Arc<MirrorNetwork>, ctx: &Context) -> Result<Action> {
    let name = net.name_any();
    let nodes = ctx.node_facts();
    let verdict = decision::decide_teardown(
        Observed {
            network: &net,
            networks: &[],
            nodes: &nodes,
            now: Timestamp::now(),
        },
        ctx.config.node_grace,
    );
    // Once the gate opens the object is about to vanish: a last status write (and the event
    // announcing it) is wasted.
    if verdict.status_changed && !verdict.gate.is_open() {
        ctx.write_status(&name, &verdict.status).await?;
        ctx.publish(&net, &verdict.notices).await;
    }
    if !verdict.gate.is_open() {
        return Err(Error::TeardownPending {
            nodes: verdict.gate.waiting,
        });
    }
    // Agents are no longer needed for this network once every node is done with it.
    let others: Vec<_> = ctx
        .networks
        .state()
        .into_iter()
        .filter(|n| n.name_any() != name)
        .collect();
    ctx.ensure_daemonset(&others).await?;
    ctx.with_allocator(|allocator| allocator.release(&name));
    ctx.publish(&net, &verdict.final_notices).await;
    ctx.metrics.network_state(&name, None);
    info!("teardown complete; lifting the finalizer");
    Ok(Action::await_change())
}

/// The controller's reconcile: everything about one network, in a span named after it.
pub async fn reconcile(net: Arc<MirrorNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let name = net.metadata.name.clone().ok_or(Error::MissingName)?;
    let span = info_span!("reconcile", network = %name);
    async {
        let api: Api<MirrorNetwork> = Api::all(ctx.client.clone());
        let action = finalizer(&api, FINALIZER, net, |event| async {
            match event {
                Finalizer::Apply(n) => apply_live(n, &ctx).await,
                Finalizer::Cleanup(n) => teardown(n, &ctx).await,
            }
        })
        .await
        .map_err(Error::from)?;
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        Ok(action)
    }
    .instrument(span)
    .await
}

/// What the controller does after a failed reconcile: transient errors back off
/// exponentially per network, waiting and permanent ones come back at a calm fixed pace.
pub fn error_policy(net: Arc<MirrorNetwork>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = net.name_any();
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(name.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let class = error.class();
    let delay = ctx.backoff.delay(class, failures);
    ctx.metrics.reconcile_failed(error.metric_label());
    match class {
        crate::error::Class::Waiting => {
            info!(network = %name, retry_in = ?delay, "{error}")
        }
        _ => {
            warn!(network = %name, ?class, failures, retry_in = ?delay, error = %error, "reconcile failed")
        }
    }
    Action::requeue(delay)
}

#[cfg(test)]
mod tests;
