//! The agent's Prometheus metrics: passes by cause, repairs, writes, errors, how long a pass
//! takes, and each network's traffic per direction, read from the kernel when scraped.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::triggers::Trigger;

/// Labels of a traffic direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TrafficLabels {
    pub network: String,
    pub from: String,
    pub to: String,
}

impl Metrics {
    /// Refreshes the traffic gauges from the kernel's counters.
    pub fn read_traffic(&self) {
        let Ok((_, nft)) = crate::nft::nfnetlink::Nfnetlink::open().and_then(|mut r| r.observe())
        else {
            return;
        };
        self.side_packets.clear();
        self.side_bytes.clear();
        for network in nft.networks() {
            for t in nft.traffic(&network) {
                let labels = TrafficLabels {
                    network: network.clone(),
                    from: t.from,
                    to: t.to,
                };
                self.side_packets
                    .get_or_create(&labels)
                    .set(i64::try_from(t.packets).unwrap_or(i64::MAX));
                self.side_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The agent's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub passes: Family<Trigger, Counter>,
    pub repairs: Counter,
    pub kernel_writes: Counter,
    pub errors: Counter,
    pub pass_seconds: Histogram,
    pub networks_programmed: Gauge,
    pub networks_failing: Gauge,
    /// Networks the last pass converged: all desired ones, or those an event concerned.
    pub last_pass_networks: Gauge,
    /// Packets and bytes per network and direction, read from the steering chains' counters
    /// when /metrics is scraped.
    pub side_packets: Family<TrafficLabels, Gauge>,
    pub side_bytes: Family<TrafficLabels, Gauge>,
    /// Unix time (ms) of the last completed pass, for liveness.
    pub last_pass_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrornet_agent");
        let passes = Family::<Trigger, Counter>::default();
        let repairs = Counter::default();
        let kernel_writes = Counter::default();
        let errors = Counter::default();
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let networks_programmed = Gauge::default();
        let networks_failing = Gauge::default();
        let last_pass_networks = Gauge::default();
        let side_packets = Family::<TrafficLabels, Gauge>::default();
        let side_bytes = Family::<TrafficLabels, Gauge>::default();
        registry.register(
            "side_packets",
            "Packets that entered side `from` for side `to` (nft counter)",
            side_packets.clone(),
        );
        registry.register(
            "side_bytes",
            "Bytes that entered side `from` for side `to` (nft counter)",
            side_bytes.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes, by what caused them and whether they converged the whole node",
            passes.clone(),
        );
        registry.register(
            "repairs",
            "Passes that had to rewrite kernel state changed by someone else",
            repairs.clone(),
        );
        registry.register("kernel_writes", "Kernel writes made", kernel_writes.clone());
        registry.register("errors", "Passes that failed", errors.clone());
        registry.register(
            "reconcile_pass_seconds",
            "Duration of a reconcile pass",
            pass_seconds.clone(),
        );
        registry.register(
            "networks_programmed",
            "Networks fully programmed on this node",
            networks_programmed.clone(),
        );
        registry.register(
            "networks_failing",
            "Desired networks that could not be programmed",
            networks_failing.clone(),
        );
        registry.register(
            "last_pass_networks",
            "Networks the last pass converged (a repair converges the networks the event concerned)",
            last_pass_networks.clone(),
        );
        Self {
            registry,
            passes,
            repairs,
            kernel_writes,
            errors,
            pass_seconds,
            networks_programmed,
            networks_failing,
            last_pass_networks,
            side_packets,
            side_bytes,
            last_pass_ms: AtomicU64::new(0),
        }
    }
}
