//! The one writer of this node's status entries: turns each new [`NodeReport`] and each new
//! look at the caches into server-side apply patches of `status.nodes[nodeName=<node>]`, and
//! Events for what changed. Writes only what differs from what the entry already says.
//!
//! ```text
//! NodeReport (loop) ──┐
//! placements (index) ─┼─> sync() ─> status::entry ─> changed? ─> PATCH .../status (SSA) ─> Events
//! repairs (metrics) ──┘         (previous: what we wrote this run, else the cache)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use mirrornet_api::events::{self, Notice};
use mirrornet_api::{MirrorNetwork, NodeStatus};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::ClusterError;
use super::index::{Placement, Role};
use super::status;
use crate::reconciler::{Metrics, NodeReport};

/// How often the writer looks at the repair counter, which raises no wake-up of its own.
const REPAIR_POLL: Duration = Duration::from_secs(2);
/// How long what this run wrote is trusted over the cache: past it, the cache is the reference
/// again, so an entry someone else overwrote is put back.
const FORGET_SENT: Duration = Duration::from_secs(300);
/// Retry delays after a failed write: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Writes this node's status entries.
pub struct StatusWriter {
    api: Api<MirrorNetwork>,
    node: String,
    params: PatchParams,
    recorder: Recorder,
    /// The entries written in this run, by network uid: right after a write they are fresher
    /// than the cache, which has not seen the write's echo yet.
    sent: HashMap<String, NodeStatus>,
    /// The loop's repair counter when repairs were last announced.
    repairs_seen: u64,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("node", &self.node)
            .field("sent", &self.sent.len())
            .finish_non_exhaustive()
    }
}

/// What one [`StatusWriter::sync`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub written: usize,
    pub failed: usize,
}

impl StatusWriter {
    pub fn new(client: Client, node: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "mirrornet-agent".into(),
                instance: Some(node.into()),
            },
        );
        Self {
            api: Api::all(client),
            node: node.into(),
            params: PatchParams::apply(&status::field_manager(node)).force(),
            recorder,
            sent: HashMap::new(),
            repairs_seen: 0,
        }
    }

    /// Writes every entry that differs from what it already says, and announces repairs the
    /// loop counted since the last call (`repairs`, the loop's running total).
    pub async fn sync(
        &mut self,
        placements: &[Placement],
        report: &NodeReport,
        repairs: u64,
        now: Timestamp,
    ) -> Synced {
        let mut done = Synced::default();
        let repaired = repairs > self.repairs_seen;
        self.repairs_seen = repairs;
        for p in placements {
            let span = info_span!("network", network = %p.name);
            let key = p.uid.clone().unwrap_or_else(|| p.name.clone());
            let previous = self.sent.get(&key).or(p.entry.as_ref()).cloned();
            let mut notices = Vec::new();
            if repaired
                && p.role == Role::Program
                && report.networks.get(&p.name).is_some_and(|n| n.programmed)
            {
                notices.push(status::repair_notice(&self.node, repairs));
            }
            let new = status::entry(&self.node, p, report, previous.as_ref(), now)
                .filter(|new| status::changed(previous.as_ref(), new));
            if let Some(new) = new {
                match self.write(&p.name, &new).instrument(span.clone()).await {
                    Ok(()) => {
                        done.written += 1;
                        notices.extend(status::notices(&self.node, previous.as_ref(), &new));
                        self.sent.insert(key, new);
                    }
                    // Gone meanwhile: nothing left to report on.
                    Err(ClusterError::WriteStatus { source, .. }) if is_not_found(&source) => {
                        debug!(parent: &span, "network gone before its status was written");
                    }
                    Err(e) => {
                        done.failed += 1;
                        warn!(parent: &span, error = %e, "status not written; retrying");
                    }
                }
            }
            self.publish(p, &notices).instrument(span).await;
        }
        self.sent.retain(|key, _| {
            placements
                .iter()
                .any(|p| p.uid.as_deref().unwrap_or(&p.name) == key)
        });
        done
    }

    async fn write(&self, network: &str, entry: &NodeStatus) -> Result<(), ClusterError> {
        let programmed = entry
            .conditions
            .iter()
            .map(|c| format!("{}={}", c.type_, c.status))
            .collect::<Vec<_>>()
            .join(",");
        info!(conditions = %programmed, "writing this node's status entry");
        self.api
            .patch_status(
                network,
                &self.params,
                &Patch::Apply(&status::patch_body(entry)),
            )
            .await
            .map_err(|source| ClusterError::WriteStatus {
                network: network.into(),
                node: self.node.clone(),
                source,
            })?;
        Ok(())
    }

    async fn publish(&self, p: &Placement, notices: &[Notice]) {
        let reference = ObjectReference {
            api_version: Some(MirrorNetwork::api_version(&()).into()),
            kind: Some(MirrorNetwork::kind(&()).into()),
            name: Some(p.name.clone()),
            uid: p.uid.clone(),
            ..Default::default()
        };
        events::publish(&self.recorder, &reference, notices).await;
    }

    /// Forgets what this run wrote, so the next sync compares with the cache again.
    fn forget_sent(&mut self) {
        self.sent.clear();
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Runs the writer until the loop's report channel closes: a sync on every new report or
/// placement, on a failed write's retry, and on a short poll for repairs.
pub async fn run(
    mut writer: StatusWriter,
    mut placements: watch::Receiver<Arc<Vec<Placement>>>,
    mut report: watch::Receiver<NodeReport>,
    metrics: Arc<Metrics>,
) {
    let mut failures: u32 = 0;
    let mut forget = tokio::time::interval(FORGET_SENT);
    forget.tick().await;
    loop {
        let wait = if failures == 0 {
            REPAIR_POLL
        } else {
            RETRY_FIRST
                .saturating_mul(1 << failures.min(6))
                .min(RETRY_MAX)
        };
        tokio::select! {
            changed = report.changed() => if changed.is_err() { break },
            changed = placements.changed() => if changed.is_err() { break },
            _ = forget.tick() => writer.forget_sent(),
            _ = tokio::time::sleep(wait) => {}
        }
        let current = placements.borrow_and_update().clone();
        let now_report = report.borrow_and_update().clone();
        let repairs = metrics.repairs.get();
        let done = writer
            .sync(&current, &now_report, repairs, Timestamp::now())
            .await;
        failures = if done.failed > 0 {
            failures.saturating_add(1)
        } else {
            0
        };
    }
    debug!("the reconcile loop stopped; so does the status writer");
}

#[cfg(test)]
mod tests;
