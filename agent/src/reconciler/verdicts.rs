//! Verdicts: what the loop remembers about checks from one pass to the next, and the pure
//! decisions made from it — a spec whose change failed its checks stays rejected (the network
//! keeps its previous spec) until the spec changes again, instead of being re-applied and
//! rolled back on every pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mirrornet_api::MirrorNetworkSpec;
use mirrornet_api::conditions::NodeReason;
use mirrornet_api::file::LoadedNetwork;

use super::DesiredNetwork;
use super::report::{NetworkReport, NodeReport};
use crate::memory::Memory;

/// What the loop remembers about checks from one pass to the next.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Specs whose change failed a check and was rolled back, with why.
    rejected: BTreeMap<String, (MirrorNetworkSpec, String)>,
    /// The last checks per network: passed, and what they said.
    last: BTreeMap<String, (bool, String)>,
    /// When the periodic probes last ran.
    last_probes: Option<Instant>,
}

impl Verdicts {
    /// Forgets rejections of specs that changed since: a new spec gets its own chance.
    pub fn forget_changed_specs(&mut self, networks: &[DesiredNetwork]) {
        self.rejected.retain(|name, (spec, _)| {
            networks
                .iter()
                .any(|n| n.loaded.name() == name && n.loaded.object.spec == *spec)
        });
    }

    pub fn is_rejected(&self, network: &str) -> bool {
        self.rejected.contains_key(network)
    }

    /// The networks as the pass programs them: a rejected spec replaced by the spec last
    /// applied, as `memory` remembers it, or left out where there is none (the network stays
    /// off the node). The second list holds the replacements.
    pub fn effective(
        &self,
        networks: &[DesiredNetwork],
        memory: Option<&Memory>,
    ) -> (Vec<DesiredNetwork>, BTreeSet<String>) {
        let mut effective = Vec::new();
        let mut substituted = BTreeSet::new();
        for n in networks {
            if !self.is_rejected(n.loaded.name()) {
                effective.push(n.clone());
            } else if let Some(previous) = memory.and_then(|m| previous_spec(m, n)) {
                substituted.insert(n.loaded.name().to_owned());
                effective.push(previous);
            }
        }
        (effective, substituted)
    }

    /// Rejects `spec` of `network` for `why`.
    pub fn reject(&mut self, network: &str, spec: &MirrorNetworkSpec, why: &str) {
        self.rejected
            .insert(network.to_owned(), (spec.clone(), why.to_owned()));
        self.checked(network, false, why.to_owned());
    }

    /// Records the last checks of `network`.
    pub fn checked(&mut self, network: &str, passed: bool, summary: String) {
        self.last.insert(network.to_owned(), (passed, summary));
    }

    /// Whether the periodic probes are due (timed by the clock, not by the pass's cause: a
    /// node whose nftables change often, kube-proxy's, merges every resync into a drift pass);
    /// if so, they count as run now.
    pub fn probes_due(&mut self, period: Duration) -> bool {
        let due = self.last_probes.is_none_or(|at| at.elapsed() >= period);
        if due {
            self.last_probes = Some(Instant::now());
        }
        due
    }

    /// The report's entries for rejected changes: the network runs its previous spec, or
    /// nothing, and says why. `remembered`: networks whose spec the memory holds.
    pub fn report_rejections<'n>(
        &self,
        report: &mut NodeReport,
        networks: impl IntoIterator<Item = &'n DesiredNetwork>,
        substituted: &BTreeSet<String>,
        remembered: &BTreeSet<String>,
    ) {
        for network in networks {
            let name = network.loaded.name();
            let Some((_, why)) = self.rejected.get(name) else {
                continue;
            };
            let kept = substituted.contains(name) || remembered.contains(name);
            let entry = report
                .networks
                .entry(name.to_owned())
                .or_insert_with(|| NetworkReport::new(name, None));
            entry.generation = network.loaded.object.metadata.generation;
            entry.programmed = false;
            entry.reason = Some(NodeReason::VerificationFailed);
            entry.message = format!(
                "{why}; {}",
                if kept {
                    "the node keeps the previous spec until this one changes"
                } else {
                    "the network stays off this node until its spec changes"
                }
            );
        }
    }

    /// Forgets the checks of networks no longer wanted and writes the others' into `report`.
    pub fn report_checks(&mut self, report: &mut NodeReport, wanted: &BTreeSet<&str>) {
        self.last.retain(|name, _| wanted.contains(name.as_str()));
        for (name, entry) in report.networks.iter_mut() {
            if let Some((passed, message)) = self.last.get(name) {
                entry.verified = Some(*passed);
                entry.verification = message.clone();
            }
        }
    }
}

/// `network` with the spec and ids `memory` last applied, if it remembers a valid one.
fn previous_spec(memory: &Memory, network: &DesiredNetwork) -> Option<DesiredNetwork> {
    let record = memory.network(network.loaded.name())?;
    let spec = record.spec.clone()?;
    let valid = mirrornet_api::validate(&spec).ok()?;
    let mut object = network.loaded.object.clone();
    object.spec = spec;
    Some(DesiredNetwork {
        loaded: LoadedNetwork { object, valid },
        allocation: record.allocation.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(name: &str, spec: &MirrorNetworkSpec) -> DesiredNetwork {
        let object = mirrornet_api::MirrorNetwork::new(name, spec.clone());
        let valid = mirrornet_api::validate(&object.spec).expect("a valid seed");
        DesiredNetwork {
            loaded: LoadedNetwork { object, valid },
            allocation: None,
        }
    }

    fn seed() -> MirrorNetworkSpec {
        let loaded =
            mirrornet_api::file::load_str("seed.yaml", include_str!("../../../examples/seed.yaml"))
                .expect("the seed example loads");
        loaded[0].object.spec.clone()
    }

    #[test]
    fn a_rejected_spec_stays_rejected_until_it_changes() {
        let spec = seed();
        let mut verdicts = Verdicts::default();
        verdicts.reject("twin", &spec, "probe failed");
        let same = [desired("twin", &spec)];
        verdicts.forget_changed_specs(&same);
        assert!(verdicts.is_rejected("twin"));
        // Nothing remembered: the network stays off the node.
        let (effective, substituted) = verdicts.effective(&same, None);
        assert!(effective.is_empty() && substituted.is_empty());
        let mut report = NodeReport::default();
        verdicts.report_rejections(&mut report, &same, &substituted, &BTreeSet::new());
        let entry = &report.networks["twin"];
        assert_eq!(entry.reason, Some(NodeReason::VerificationFailed));
        assert!(!entry.programmed);
        assert!(
            entry
                .message
                .ends_with("stays off this node until its spec changes")
        );

        let mut changed = spec.clone();
        changed.suspend = !changed.suspend;
        verdicts.forget_changed_specs(&[desired("twin", &changed)]);
        assert!(!verdicts.is_rejected("twin"));
    }

    #[test]
    fn checks_of_networks_no_longer_wanted_are_forgotten() {
        let mut verdicts = Verdicts::default();
        verdicts.checked("a", true, "ok".into());
        verdicts.checked("b", false, "probe failed".into());
        let mut report = NodeReport::default();
        report
            .networks
            .insert("a".into(), NetworkReport::new("a", Some(1)));
        verdicts.report_checks(&mut report, &BTreeSet::from(["a"]));
        assert_eq!(report.networks["a"].verified, Some(true));
        assert_eq!(verdicts.last.len(), 1);
    }
}
