//! Prometheus metrics of the operator: reconciles, errors, durations, networks by their
//! Ready state, kernel id usage against the configured ranges, and leadership.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use mirrornet_api::allocation::Usage;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the operator exports, registered in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<Labels, Counter>,
    duration: Histogram,
    networks: Family<Labels, Gauge>,
    ids_held: Family<Labels, Gauge>,
    ids_capacity: Family<Labels, Gauge>,
    leader: Gauge,
    /// Ready (status, reason) per network, from which the `networks` gauge is recounted.
    ready: Mutex<BTreeMap<String, (String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrornet_operator");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles of MirrorNetworks started",
            reconciles.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let networks = Family::<Labels, Gauge>::default();
        registry.register(
            "networks",
            "MirrorNetworks by the status and reason of their Ready condition",
            networks.clone(),
        );
        let ids_held = Family::<Labels, Gauge>::default();
        registry.register("ids_held", "Kernel ids held, by kind", ids_held.clone());
        let ids_capacity = Family::<Labels, Gauge>::default();
        registry.register(
            "ids_capacity",
            "Kernel ids the configured ranges offer, by kind",
            ids_capacity.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            networks,
            ids_held,
            ids_capacity,
            leader,
            ready: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Observes a reconcile's duration when dropped, so early returns are measured too.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, kind: &'static str) {
        self.errors
            .get_or_create(&vec![("error", kind.to_string())])
            .inc();
    }

    /// Records a network's Ready state (`None` once it is gone) and recounts the gauge.
    pub fn network_state(&self, network: &str, ready: Option<(String, String)>) {
        let mut states = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        match ready {
            Some(r) => states.insert(network.to_string(), r),
            None => states.remove(network),
        };
        let mut counts: BTreeMap<&(String, String), i64> = BTreeMap::new();
        for r in states.values() {
            *counts.entry(r).or_default() += 1;
        }
        self.networks.clear();
        for ((status, reason), n) in counts {
            self.networks
                .get_or_create(&vec![("ready", status.clone()), ("reason", reason.clone())])
                .set(n);
        }
    }

    pub fn id_usage(&self, usage: &Usage) {
        for (kind, u) in usage.by_kind() {
            let labels = vec![("kind", kind.to_string())];
            self.ids_held
                .get_or_create(&labels)
                .set(i64::try_from(u.held).unwrap_or(i64::MAX));
            self.ids_capacity
                .get_or_create(&labels)
                .set(i64::try_from(u.capacity).unwrap_or(i64::MAX));
        }
    }

    pub fn leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrornet_api::allocation::{Allocator, IdRanges};

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.reconcile_failed("api_server_error");
        m.network_state("a", Some(("True".into(), "AllNodesProgrammed".into())));
        m.network_state("b", Some(("True".into(), "AllNodesProgrammed".into())));
        m.network_state("c", Some(("False".into(), "Conflict".into())));
        m.network_state("b", None);
        m.id_usage(&Allocator::new(IdRanges::default()).usage());
        m.leader(true);
        let text = m.render();
        for line in [
            "mirrornet_operator_reconciles_total 1",
            "mirrornet_operator_reconcile_errors_total{error=\"api_server_error\"} 1",
            "mirrornet_operator_reconcile_duration_seconds_count 1",
            "mirrornet_operator_networks{ready=\"True\",reason=\"AllNodesProgrammed\"} 1",
            "mirrornet_operator_networks{ready=\"False\",reason=\"Conflict\"} 1",
            "mirrornet_operator_ids_capacity{kind=\"table\"} 10000",
            "mirrornet_operator_ids_capacity{kind=\"mark\"} 255",
            "mirrornet_operator_ids_held{kind=\"zone\"} 0",
            "mirrornet_operator_leader 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
