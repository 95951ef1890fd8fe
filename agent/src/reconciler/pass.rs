//! Pass: one observe-plan-converge-verify over every desired network, in one [`Session`].
//! One bad network does not block the others: each is planned and checked against the node's
//! claims on its own, and only those that pass go into the one change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use mirrornet_api::allocation::Allocator;
use mirrornet_api::conditions::NodeReason;
use tracing::{debug, error, info, info_span, warn};

use super::report::{NetworkReport, NodeReport, reason_of};
use super::scope::{Owners, Scope};
use super::triggers::Cause;
use super::verdicts::Verdicts;
use super::{DesiredNetwork, Metrics, Settings};
use crate::allocate::{self, BackendChoice};
use crate::claims::NodeClaims;
use crate::engine::Engine;
use crate::error::AgentError;
use crate::observe::KernelView;
use crate::plan::NetworkPlan;
use crate::rollback::VerifiedOutcome;
use crate::session::{Change, Session};

/// What a pass leaves for the next: the report, the sysctls to watch (by network) and who owns
/// what among the networks it converged.
#[derive(Debug, Default)]
pub struct Passed {
    pub report: NodeReport,
    pub sysctls: BTreeMap<String, Vec<(String, String)>>,
    /// The proxy neighbour entries of the programmed networks, to watch (by network).
    pub proxies: BTreeMap<String, Vec<crate::plan::Proxy>>,
    /// Side interfaces of on-link networks with alias addresses nobody has asked about yet
    /// (the node's address was not on the side): the next pass probes them.
    pub unprobed: BTreeSet<String>,
    pub owners: Owners,
    /// The networks it converged.
    pub converged: usize,
    /// The node as the pass saw it, if the pass wrote nothing.
    pub view: Option<KernelView>,
}

/// What a pass is asked to converge, and why.
#[derive(Debug)]
pub struct Brief<'a> {
    pub cause: Cause,
    /// Every desired network for [`Scope::Node`].
    pub scope: &'a Scope,
    /// The last pass's report, which a pass over some networks starts from.
    pub previous: &'a NodeReport,
    /// The node as kept up to date from notifications, instead of reading it.
    pub view: Option<KernelView>,
}

/// One pass over the networks of the brief. A pass over some networks replaces their entries
/// of the previous report only: the others were not looked at, so what was said of them still
/// holds.
pub async fn pass(
    engine: &Engine,
    settings: &Settings,
    networks: &[DesiredNetwork],
    brief: Brief<'_>,
    metrics: &Metrics,
    verdicts: &mut Verdicts,
) -> Passed {
    let Brief {
        cause,
        scope,
        previous,
        view,
    } = brief;
    let only = match scope {
        Scope::Networks(names) => Some(names),
        Scope::Node | Scope::Nothing => None,
    };
    let concerned = |name: &str| only.is_none_or(|names| names.contains(name));
    let mut report = match only {
        Some(names) => {
            let mut report = previous.clone();
            report.networks.retain(|name, _| !names.contains(name));
            report
        }
        None => NodeReport::default(),
    };
    report.synced = true;
    // Held for the whole change: a guard reverting a dead agent's change, or a file-mode
    // `apply`, never interleaves its writes with ours.
    let mut session = match Session::locked_with(engine, view).await {
        Ok(session) => session,
        Err(e) => {
            error!(error = %e, "observing the node failed");
            metrics.errors.inc();
            report.synced = false;
            return Passed {
                report,
                ..Default::default()
            };
        }
    };
    verdicts.forget_changed_specs(networks);
    let (effective, substituted) = verdicts.effective(networks, Some(&session.memory));
    let effective: Vec<DesiredNetwork> = effective
        .into_iter()
        .filter(|n| concerned(n.loaded.name()))
        .collect();
    // On-link aliases: a full pass asks the sides again which alias addresses hosts use (a
    // host may have taken one since); any pass probes what was never probed.
    let on_link: Vec<&mirrornet_api::ValidNetwork> = effective
        .iter()
        .map(|n| &n.loaded.valid)
        .filter(|v| v.on_link() && !v.suspend)
        .collect();
    if !on_link.is_empty() {
        // Half a resync: a finding made during the last full pass is due in this one.
        let max_age = match only {
            None => settings.resync / 2,
            Some(_) => std::time::Duration::MAX,
        };
        // What was never asked is not claimed (the plan counts it `unprobed`).
        if let Err(e) = session.probe_on_link(&on_link, max_age).await {
            warn!(error = %e, "probing the on-link aliases failed; the last findings stand");
        }
    }
    let ready = plan_networks(&session, &effective, settings.backend, &mut report);
    // Networks held on the node that nobody wants any more go; those waiting for an interface
    // stay as they are.
    let wanted: BTreeSet<&str> = networks.iter().map(|n| n.loaded.name()).collect();
    report.held = session.held_networks();
    let remove: Vec<String> = report
        .held
        .iter()
        .filter(|n| !wanted.contains(n.as_str()) && concerned(n))
        .cloned()
        .collect();
    let accepted = accept(&session, ready, &remove, &mut report);
    let accepted_by_name: BTreeMap<&str, &NetworkPlan> =
        accepted.iter().map(|(p, _)| (p.name.as_str(), p)).collect();
    let mut owners = Owners::default();
    for network in &effective {
        let name = network.loaded.name();
        let plan = accepted_by_name.get(name).copied();
        let interfaces = network
            .loaded
            .valid
            .sides
            .iter()
            .map(|s| s.interface.as_str().to_owned());
        owners.add(name, plan, interfaces, &session.view);
    }
    let plans: Vec<NetworkPlan> = accepted.iter().map(|(p, _)| p.clone()).collect();
    let specs: Vec<&mirrornet_api::MirrorNetworkSpec> = accepted
        .iter()
        .map(|(_, n)| &n.loaded.object.spec)
        .collect();
    let valid: Vec<&mirrornet_api::ValidNetwork> =
        accepted.iter().map(|(_, n)| &n.loaded.valid).collect();
    let change = Change {
        plans: &plans,
        specs: &specs,
        networks: &valid,
        remove: &remove,
        endpoints: &settings.endpoints,
    };
    let remembered: BTreeSet<String> = session
        .memory
        .networks
        .iter()
        .filter(|(_, r)| r.spec.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let converged = crate::rollback::converge_verified(&session, change).await;
    // The node is as the session saw it only if nothing was written.
    let untouched = matches!(&converged, Ok(v) if v.outcome.writes == 0);
    let checked = record(
        converged,
        &accepted,
        &remove,
        cause,
        metrics,
        verdicts,
        &mut report,
    );
    // A pass over some networks removed none of the others: what the last full pass removed
    // is still news for whoever has not read it yet.
    if only.is_some() {
        for name in &previous.removed {
            if !report.removed.contains(name) {
                report.removed.push(name.clone());
            }
        }
    }
    verdicts.report_rejections(
        &mut report,
        networks.iter().filter(|n| concerned(n.loaded.name())),
        &substituted,
        &remembered,
    );
    // The kernel is no longer touched in this pass: probes that wait for silent hosts must not
    // hold up a CLI `apply` or a guard.
    session.unlock();
    // The periodic probes: a path that stops answering later is reported, not rolled back
    // (there is no earlier state to go back to). They belong to full passes.
    if cause != Cause::Spec && only.is_none() && verdicts.probes_due(settings.resync) {
        probe(&accepted, &checked, verdicts, &report).await;
    }
    verdicts.report_checks(&mut report, &wanted);
    // A host on an alias address is news once: when it appears, and when it is gone.
    for (name, entry) in &report.networks {
        let before = previous.networks.get(name).and_then(|n| n.taken.as_ref());
        let (Some(now), before) = (entry.taken.as_ref(), before) else {
            continue;
        };
        for t in now.iter().filter(|t| before.is_none_or(|b| !b.contains(t))) {
            warn!(network = %name, taken = %t, "an on-link alias address is taken; left to its host");
        }
        for t in before.into_iter().flatten().filter(|t| !now.contains(t)) {
            info!(network = %name, address = %t.address, side = %t.side, "an on-link alias address is free again; answered for");
        }
    }
    let sysctls = watched_sysctls(&plans, &report);
    let unprobed = plans
        .iter()
        .filter(|p| p.unprobed > 0)
        .flat_map(|p| p.sides.iter().map(|s| s.interface.clone()))
        .collect();
    let proxies = plans
        .iter()
        .filter(|p| !p.proxies.is_empty())
        .filter(|p| report.networks.get(&p.name).is_some_and(|n| n.programmed))
        .map(|p| (p.name.clone(), p.proxies.clone()))
        .collect();
    let programmed = report.networks.values().filter(|n| n.programmed).count();
    metrics.networks_programmed.set(programmed as i64);
    metrics
        .networks_failing
        .set((report.networks.len() - programmed) as i64);
    Passed {
        report,
        sysctls,
        proxies,
        unprobed,
        owners,
        converged: effective.len() + remove.len(),
        view: untouched.then(|| std::mem::take(&mut session.view)),
    }
}

/// Plans every network whose interfaces are there, each on its own: one that cannot be
/// planned is reported and left out. One allocator for the pass, as `apply` uses for a file:
/// networks without ids of their own that appear together get distinct ids.
fn plan_networks<'n>(
    session: &Session<'_>,
    effective: &'n [DesiredNetwork],
    backend: BackendChoice,
    report: &mut NodeReport,
) -> Vec<(NetworkPlan, &'n DesiredNetwork)> {
    let mut allocator = session.allocator();
    let mut ready = Vec::new();
    for network in effective {
        let name = network.loaded.name().to_owned();
        let _span = info_span!("network", network = %name).entered();
        let mut entry = NetworkReport::new(&name, network.loaded.object.metadata.generation);
        let missing = missing_interfaces(&session.view, network);
        if !missing.is_empty() {
            entry.interfaces_present = false;
            entry.reason = Some(NodeReason::InterfaceMissing);
            entry.message = format!(
                "interface(s) {} on this node; programming resumes when they are present and up",
                missing.join(", ")
            );
            warn!(message = %entry.message);
            report.networks.insert(name, entry);
            continue;
        }
        match plan_one(session, network, backend, &mut allocator) {
            Ok(plan) => {
                entry.backend = Some(plan.backend);
                report.networks.insert(name, entry);
                ready.push((plan, network));
            }
            Err(e) => {
                entry.reason = Some(reason_of(&e));
                entry.message = e.to_string();
                warn!(error = %e, "cannot plan");
                report.networks.insert(name, entry);
            }
        }
    }
    ready
}

/// The plans the node's claims allow, checked one by one, so one bad network does not block
/// the others; the refused ones are reported.
fn accept<'n>(
    session: &Session<'_>,
    ready: Vec<(NetworkPlan, &'n DesiredNetwork)>,
    remove: &[String],
    report: &mut NodeReport,
) -> Vec<(NetworkPlan, &'n DesiredNetwork)> {
    let claims = NodeClaims::new(&session.view, remove);
    let mut accepted = Vec::new();
    for (plan, network) in ready {
        match claims.check(&session.view, std::slice::from_ref(&plan)) {
            Ok(()) => accepted.push((plan, network)),
            Err(e) => {
                if let Some(entry) = report.networks.get_mut(&plan.name) {
                    entry.reason = Some(reason_of(&e));
                    entry.message = e.to_string();
                }
            }
        }
    }
    accepted
}

/// What the change came to, in the report, the verdicts and the metrics; returns the networks
/// whose checks ran with the change.
fn record(
    converged: Result<VerifiedOutcome, AgentError>,
    accepted: &[(NetworkPlan, &DesiredNetwork)],
    remove: &[String],
    cause: Cause,
    metrics: &Metrics,
    verdicts: &mut Verdicts,
    report: &mut NodeReport,
) -> BTreeSet<String> {
    let mut checked = BTreeSet::new();
    match converged {
        Ok(verified) => {
            let outcome = verified.outcome;
            if let Some(v) = &verified.verification {
                for name in &verified.changed {
                    verdicts.checked(name, true, v.summary());
                    checked.insert(name.clone());
                }
            }
            metrics.kernel_writes.inc_by(outcome.writes as u64);
            if outcome.writes > 0 {
                if cause == Cause::Spec {
                    // The same diff `plan` prints, so a log tells exactly what changed.
                    info!(writes = outcome.writes, steps = ?outcome.steps, "programmed");
                } else {
                    metrics.repairs.inc();
                    info!(writes = outcome.writes, ?cause, steps = ?outcome.steps, "repaired drift");
                }
            } else {
                debug!("converged, nothing to do");
            }
            for (plan, _) in accepted {
                if let Some(entry) = report.networks.get_mut(&plan.name) {
                    entry.programmed_with(plan);
                }
            }
            report
                .held
                .extend(accepted.iter().map(|(p, _)| p.name.clone()));
            report.held.retain(|n| !remove.contains(n));
            report.removed = remove.to_vec();
        }
        Err(
            ref e @ AgentError::VerificationFailed {
                networks: ref rejected,
                ..
            },
        ) => {
            metrics.errors.inc();
            error!(error = %e, "a change failed its checks");
            let message = e.to_string();
            for (plan, network) in accepted {
                if !rejected.contains(&plan.name) {
                    if let Some(entry) = report.networks.get_mut(&plan.name) {
                        entry.programmed_with(plan);
                    }
                    continue;
                }
                verdicts.reject(&plan.name, &network.loaded.object.spec, &message);
                checked.insert(plan.name.clone());
            }
        }
        Err(e) => {
            metrics.errors.inc();
            error!(error = %e, "converging failed");
            for (plan, _) in accepted {
                if let Some(entry) = report.networks.get_mut(&plan.name) {
                    entry.reason = Some(NodeReason::ApplyFailed);
                    entry.message = e.to_string();
                }
            }
        }
    }
    checked
}

/// Probes every programmed network that has probes and was not just checked.
async fn probe(
    accepted: &[(NetworkPlan, &DesiredNetwork)],
    checked: &BTreeSet<String>,
    verdicts: &mut Verdicts,
    report: &NodeReport,
) {
    for (plan, network) in accepted {
        let valid = &network.loaded.valid;
        if valid.probes.is_empty()
            || plan.suspended
            || checked.contains(&plan.name)
            || verdicts.is_rejected(&plan.name)
            || !report
                .networks
                .get(&plan.name)
                .is_some_and(|n| n.programmed)
        {
            continue;
        }
        let deadline = Instant::now() + valid.verify_timeout;
        let v = crate::verify::Verification {
            checks: crate::verify::probe_network(plan, valid, deadline).await,
        };
        if let Some(failed) = v.failure() {
            warn!(network = %plan.name, check = %failed.name, detail = %failed.detail, "a probe failed");
        }
        verdicts.checked(&plan.name, v.failure().is_none(), v.summary());
    }
}

/// The side interfaces of `network` that are absent or down, as the report says them. A
/// suspended network holds nothing on its interfaces: their absence is not a reason to leave
/// it as it is, nor something to wait for.
fn missing_interfaces(view: &KernelView, network: &DesiredNetwork) -> Vec<String> {
    let valid = &network.loaded.valid;
    valid
        .sides
        .iter()
        .filter(|_| !valid.suspend)
        .filter(|s| !view.links.get(s.interface.as_str()).is_some_and(|l| l.up))
        .map(|s| {
            let why = if view.links.contains_key(s.interface.as_str()) {
                "down"
            } else {
                "absent"
            };
            format!("{} (side {}, {why})", s.interface.as_str(), s.name.as_str())
        })
        .collect()
}

/// Plans one network: with the operator's ids in a cluster, from the pass's allocator in
/// file mode.
fn plan_one(
    session: &Session<'_>,
    network: &DesiredNetwork,
    backend: BackendChoice,
    allocator: &mut Allocator,
) -> Result<NetworkPlan, AgentError> {
    let allocation = match &network.allocation {
        Some(allocation) => allocation.clone(),
        None => allocate::allocate(allocator, &network.loaded)?,
    };
    session.plan_with(&network.loaded, &allocation, backend)
}

/// The sysctls of the networks programmed, by network, with the values they need: a drift of
/// one kicks a pass of its network (sysctl writes raise no event this build can decode).
fn watched_sysctls(
    plans: &[NetworkPlan],
    report: &NodeReport,
) -> BTreeMap<String, Vec<(String, String)>> {
    plans
        .iter()
        .filter(|p| report.networks.get(&p.name).is_some_and(|n| n.programmed))
        .map(|p| {
            let sysctls = p.sysctls.iter().map(|s| (s.path.clone(), s.value.clone()));
            (p.name.clone(), sysctls.collect())
        })
        .collect()
}
