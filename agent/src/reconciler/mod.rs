//! The long-running side of the agent: keep every desired network converged on this node,
//! whatever changes it — a new spec, a tampered rule, an interface that comes and goes.
//!
//! ```text
//!  desired (file or cluster) ──┐                   scope: the networks
//!  rtnetlink events ───────────┤  kick ──debounce──> that own what changed ──> pass: one Session
//!  nftables events (nfnetlink) ┤   (triggers)        (or the whole node)       observe, plan,
//!  drifted sysctls, resync ────┘                                               converge, verify
//!                                                                              ─> NodeReport
//! ```
//!
//! * [`triggers`]: what kicks a pass, and why ([`Cause`]), with the event decoded.
//! * [`scope`]: which networks an event or a spec change concerns ([`Scope`]).
//! * [`pass`]: one pass over those networks (every desired one for a full pass).
//! * [`verdicts`], [`report`]: the pure decisions a pass makes from what happened (a rejected
//!   spec kept, the report built from the outcome).
//! * [`metrics`]: what a pass counts.
//!
//! The reconciler adopts what it finds: starting on a converged node performs zero writes and
//! never tears the datapath down; stopping leaves it in place. A network whose interface is
//! missing is reported and left as it is until the interface appears.

pub mod metrics;
pub mod pass;
pub mod report;
pub mod scope;
pub mod triggers;
pub mod verdicts;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mirrornet_api::Allocation;
use mirrornet_api::file::LoadedNetwork;
use tokio::sync::{mpsc, watch};
use tracing::info;

pub use metrics::{Metrics, TrafficLabels};
pub use pass::pass;
pub use report::{NetworkReport, NodeReport, reason_of};
pub use scope::{KernelEvent, Owners, Scope, spec_change};
pub use triggers::{Breadth, Cause, Trigger};
pub use verdicts::Verdicts;

use crate::allocate::BackendChoice;
use crate::engine::Engine;
use crate::observe::KernelView;
use triggers::{
    Notice, spawn_netconf_watch, spawn_netlink_watch, spawn_nft_watch, spawn_proxy_watch,
    spawn_sysctl_watch,
};

#[derive(Debug, Clone)]
pub struct DesiredNetwork {
    pub loaded: LoadedNetwork,
    pub allocation: Option<Allocation>,
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: BackendChoice,
    pub resync: Duration,
    /// How long to wait for a burst of events to settle before a pass.
    pub debounce: Duration,
    /// Endpoints the node must still reach after a change (the API server in a cluster).
    pub endpoints: Vec<std::net::SocketAddr>,
    /// The id ranges the engine is made with (networks from a file without recorded ids are
    /// allocated from them; the rollback guard gets the same).
    pub ranges: mirrornet_api::allocation::IdRanges,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(10),
            endpoints: Vec::new(),
            ranges: Default::default(),
        }
    }
}

/// Runs until `shutdown` turns true. Never removes the datapath on the way out.
pub async fn run(
    engine: Engine,
    settings: Settings,
    mut desired: watch::Receiver<Vec<DesiredNetwork>>,
    report: watch::Sender<NodeReport>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (kick, mut kicks) = mpsc::unbounded_channel::<Notice>();
    spawn_netlink_watch(kick.clone());
    spawn_nft_watch(kick.clone());
    let watched_sysctls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let announced = spawn_netconf_watch(kick.clone());
    spawn_sysctl_watch(kick.clone(), watched_sysctls.clone(), announced);
    let watched_proxies = Arc::new(std::sync::Mutex::new(Vec::new()));
    spawn_proxy_watch(kick.clone(), watched_proxies.clone());
    let mut resync = tokio::time::interval(settings.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: the initial pass, which programs rather than repairs.
    resync.tick().await;
    let mut first = true;
    let mut verdicts = Verdicts::default();
    let mut owners = Owners::default();
    let mut last = NodeReport::default();
    let mut seen: Vec<DesiredNetwork> = Vec::new();
    // The node as the last pass that wrote nothing saw it, kept up to date by the notifications
    // since; `None` once one could not be applied (the next pass reads the node).
    let mut view: Option<KernelView> = None;
    let mut sysctls: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut proxies: BTreeMap<String, Vec<crate::plan::Proxy>> = BTreeMap::new();
    loop {
        let (cause, scope) = if std::mem::take(&mut first) {
            (Cause::Spec, Scope::Node)
        } else {
            tokio::select! {
            _ = shutdown.changed() => break,
            changed = desired.changed() => {
                if changed.is_err() { break; }
                // Which networks changed is known once the burst has settled, below.
                (Cause::Spec, Scope::Nothing)
            }
            _ = resync.tick() => (Cause::Resync, Scope::Node),
            Some(notice) = kicks.recv() => (Cause::Drift, noticed(notice, &mut view, &owners)),
            }
        };
        // Let a burst (our own writes echo back as events too) settle into one pass.
        tokio::time::sleep(settings.debounce).await;
        let (mut cause, mut scope) = (cause, scope);
        while let Ok(notice) = kicks.try_recv() {
            cause = cause.min(Cause::Drift);
            scope = scope.merge(noticed(notice, &mut view, &owners));
        }
        let networks = desired.borrow_and_update().clone();
        if cause == Cause::Spec {
            scope = scope.merge(spec_change(&seen, &networks, &last));
        }
        let live: BTreeSet<&str> = networks
            .iter()
            .map(|n| n.loaded.name())
            .chain(last.held.iter().map(String::as_str))
            .collect();
        scope = scope.within(&live);
        if scope == Scope::Nothing {
            continue;
        }
        // Until a full pass has completed, there is nothing to start a partial one from.
        if !last.synced {
            scope = Scope::Node;
        }
        let started = Instant::now();
        let breadth = match scope {
            Scope::Networks(_) => Breadth::Networks,
            Scope::Node | Scope::Nothing => Breadth::Node,
        };
        metrics
            .passes
            .get_or_create(&Trigger {
                cause,
                scope: breadth,
            })
            .inc();
        let passed = pass(
            &engine,
            &settings,
            &networks,
            pass::Brief {
                cause,
                scope: &scope,
                previous: &last,
                // Only a repair trusts the kept view; a spec change and the resync read the
                // node, as the backstop for anything a notification did not say.
                view: match (cause, &scope) {
                    (Cause::Drift, Scope::Networks(_)) => view.take(),
                    _ => None,
                },
            },
            &metrics,
            &mut verdicts,
        )
        .await;
        match &scope {
            Scope::Networks(names) => {
                // What the networks owned before stays known until the next full pass: the
                // echo of the writes that withdrew it is still theirs, not the node's.
                owners.absorb(passed.owners);
                sysctls.retain(|name, _| !names.contains(name));
                sysctls.extend(passed.sysctls);
                proxies.retain(|name, _| !names.contains(name));
                proxies.extend(passed.proxies);
            }
            Scope::Node | Scope::Nothing => {
                owners = passed.owners;
                sysctls = passed.sysctls;
                proxies = passed.proxies;
            }
        }
        if let Ok(mut w) = watched_sysctls.lock() {
            *w = sysctls.values().flatten().cloned().collect();
        }
        if let Ok(mut w) = watched_proxies.lock() {
            *w = proxies.values().flatten().cloned().collect();
        }
        metrics.last_pass_networks.set(passed.converged as i64);
        tracing::debug!(
            ?cause,
            networks = passed.converged,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "pass done"
        );
        metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.last_pass_ms.store(now_ms(), Ordering::Relaxed);
        // A first pass put the node's address on an on-link side: now it can ask the side.
        if passed.view.is_none() {
            for interface in &passed.unprobed {
                let _ = kick.send(
                    KernelEvent::Proxy {
                        interface: interface.clone(),
                    }
                    .into(),
                );
            }
        }
        view = passed.view;
        let next = passed.report;
        last = next.clone();
        seen = networks;
        report.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
    info!("stopping; the datapath stays in place");
}

/// Takes in one notification: keeps `view` up to date where the notification says enough
/// (drops it where not), and says which networks it concerns.
fn noticed(notice: Notice, view: &mut Option<KernelView>, owners: &Owners) -> Scope {
    let keeps = match (&notice.message, view.as_mut()) {
        (Some(message), Some(v)) => v.patch(message),
        // Our nft table is checked against its generation in every pass anyway.
        (None, _) => matches!(notice.event, KernelEvent::Nft(_)),
        (Some(_), None) => false,
    };
    if !keeps {
        *view = None;
    }
    owners.scope(&notice.event)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{KernelEvent, Notice, Owners, Scope, noticed};
    use crate::nft::nfnetlink::Notification;
    use crate::observe::KernelView;

    #[test]
    fn the_kept_view_survives_what_it_can_take_in_and_nothing_else() {
        let owners = Owners::default();
        let mut view = Some(KernelView::default());
        let nft = Notice::from(KernelEvent::Nft(Notification::Generation));
        assert_eq!(noticed(nft, &mut view, &owners), Scope::Nothing);
        assert!(
            view.is_some(),
            "nft is checked by generation: the view stays"
        );
        let sysctl = Notice::from(KernelEvent::Sysctl {
            path: "net/ipv4/conf/eth1/forwarding".into(),
        });
        assert_eq!(noticed(sysctl, &mut view, &owners), Scope::Node);
        assert!(view.is_none(), "a sysctl is part of the view: read again");
    }

    #[test]
    fn a_scope_keeps_only_networks_that_are_desired_or_held() {
        let live = BTreeSet::from(["a"]);
        let both = Scope::Networks(BTreeSet::from(["a".to_owned(), "gone".to_owned()]));
        assert_eq!(
            both.within(&live),
            Scope::Networks(BTreeSet::from(["a".to_owned()]))
        );
        let gone = Scope::Networks(BTreeSet::from(["gone".to_owned()]));
        assert_eq!(gone.within(&live), Scope::Nothing);
        assert_eq!(Scope::Node.within(&live), Scope::Node);
    }
}
