//! Changes that undo themselves unless the node proves they work ("commit confirmed").
//!
//! ```text
//! lock ─> arm: record what the changed networks were before  ─> spawn the guard
//!      ─> converge ─> checks (verify.rs) ─┬─ passed: disarm
//!                                          └─ failed: revert to the record, disarm
//! unlock
//! guard (own process, own process group): waits for the lock; an arm still there means the
//!       agent died holding it, so the guard reverts
//! any later agent start: an arm still there (the guard died too, e.g. with its container)
//!       is reverted before anything else
//! ```
//!
//! The arm is written before the first kernel write, so there is no moment at which the node
//! holds an unverified change that nothing will take back. The record is the networks' last
//! applied specs and ids, the same memory the engine converges from, so reverting is an
//! ordinary converge to the previous specs and reaches exactly the previous kernel state.

use std::io;
use std::time::{Duration, Instant};

use mirrornet_api::allocation::{IdRanges, RangeFlags};
use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, BackendKind, MirrorNetwork, MirrorNetworkSpec};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::allocate::BackendChoice;
use crate::engine::Engine;
use crate::error::MemoryError;
use crate::error::{AgentError, Result};
use crate::lock::NodeLock;
use crate::memory::{Memory, read_file, remove_file, sibling, write_file};
use crate::observe::KernelView;
use crate::plan::vrf_name;
use crate::session::{Change, Outcome, Session};
use crate::verify::{self, NodeReach, Verification};

/// What one changed network was before the change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreviousNetwork {
    pub name: String,
    /// `None`: the network was not on the node; reverting removes it.
    pub previous: Option<Previous>,
}

/// A network's last applied spec, ids and backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Previous {
    pub spec: MirrorNetworkSpec,
    pub allocation: Allocation,
    pub backend: BackendKind,
}

/// A change in flight that is rolled back unless disarmed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Armed {
    /// Tells this change's guard from an older one's.
    pub id: String,
    pub networks: Vec<PreviousNetwork>,
}

impl Armed {
    /// The arm left on this node, if any. One that cannot be parsed (it is written
    /// atomically, so only by hand) is reported and left alone rather than blocking every
    /// change on the node.
    pub fn load() -> Result<Option<Self>, MemoryError> {
        let path = sibling("armed")?;
        Ok(read_file(&path)?.and_then(|text| {
            serde_json::from_str(&text)
                .inspect_err(|e| warn!(path = %path.display(), error = %e, "ignoring an unreadable rollback record"))
                .ok()
        }))
    }

    fn save(&self) -> Result<(), MemoryError> {
        write_file(
            &sibling("armed")?,
            &serde_json::to_vec_pretty(self).unwrap_or_default(),
        )
    }

    fn disarm() -> Result<(), MemoryError> {
        remove_file(&sibling("armed")?)
    }
}

/// The backend `allocation`'s network is programmed with on the node now.
fn programmed_backend(state: &KernelView, allocation: &Allocation) -> BackendKind {
    let vrf = allocation.sides.first().is_some_and(|s| {
        state
            .links
            .get(&vrf_name(s.table))
            .is_some_and(|l| l.vrf_table == Some(s.table))
    });
    if vrf {
        BackendKind::Vrf
    } else {
        BackendKind::PolicyRouting
    }
}

/// Returns the networks in `armed` to what they were. The caller holds the [`NodeLock`].
pub async fn revert(engine: &Engine, armed: &Armed) -> Result<Outcome> {
    let mut session = Session::read(engine).await?;
    let mut loaded = Vec::new();
    let mut remove = Vec::new();
    for n in &armed.networks {
        match &n.previous {
            Some(p) => {
                let valid = mirrornet_api::validate(&p.spec).map_err(|e| {
                    AgentError::Arming(format!("the previous spec of {} is invalid: {e}", n.name))
                })?;
                loaded.push((
                    LoadedNetwork {
                        object: MirrorNetwork::new(&n.name, p.spec.clone()),
                        valid,
                    },
                    p,
                ));
            }
            None => remove.push(n.name.clone()),
        }
    }
    // What was taken stays taken: in the agent that made the change the findings are at hand,
    // a guard of a dead agent probes again.
    let valid: Vec<&mirrornet_api::ValidNetwork> = loaded.iter().map(|(n, _)| &n.valid).collect();
    session
        .probe_on_link(&valid, std::time::Duration::MAX)
        .await?;
    let mut plans = Vec::new();
    for (network, p) in &loaded {
        let choice = match p.backend {
            BackendKind::Vrf => BackendChoice::Vrf,
            BackendKind::PolicyRouting => BackendChoice::PolicyRouting,
        };
        plans.push(session.plan_with(network, &p.allocation, choice)?);
    }
    let specs: Vec<&MirrorNetworkSpec> = loaded.iter().map(|(_, p)| &p.spec).collect();
    session.converge(&plans, &specs, &remove).await
}

/// Reverts an arm a dead agent left behind. Called by every agent before it changes anything,
/// before it opens its [`Session`] (this takes the lock for itself).
pub async fn recover(engine: &Engine) -> Result<Option<Outcome>> {
    let _lock = NodeLock::acquire().await?;
    let Some(armed) = Armed::load()? else {
        return Ok(None);
    };
    warn!(
        change = %armed.id,
        "a change was never confirmed (its agent stopped part-way); rolling it back"
    );
    let outcome = revert(engine, &armed).await?;
    Armed::disarm()?;
    Ok(Some(outcome))
}

/// The guard process: waits until the agent that armed `id` lets go of the node, and reverts
/// the change if the agent never confirmed or undid it.
pub async fn guard(engine: &Engine, id: &str) -> Result<Option<Outcome>> {
    let _lock = NodeLock::acquire().await?;
    match Armed::load()? {
        Some(armed) if armed.id == id => {
            warn!(change = %id, "the agent died before confirming the change; rolling it back");
            let outcome = revert(engine, &armed).await?;
            Armed::disarm()?;
            info!(change = %id, writes = outcome.writes, "rolled back");
            Ok(Some(outcome))
        }
        _ => Ok(None),
    }
}

/// The command of the guard of change `id`. It gets the agent's id ranges: a revert plans
/// with the recorded ids and allocates nothing, but an engine on other ranges than the agent's
/// would be wrong the day it does.
fn guard_command(id: &str, ranges: &IdRanges) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    // The running binary itself, even if a package upgrade replaced the file on disk.
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .args(["rollback-guard", "--id", id])
        .args(RangeFlags::from(ranges).args())
        // Injected faults are for the agent under test, never for its guard.
        .env_remove("MIRRORNET_CRASH_AT_STEP")
        .env_remove("MIRRORNET_FAULT_AT_STEP")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Its own process group: a signal to the agent's group (Ctrl-C) does not reach it.
        .process_group(0);
    command
}

fn spawn_guard(id: &str, ranges: &IdRanges) -> io::Result<()> {
    let child = guard_command(id, ranges).spawn()?;
    // Reaped when it ends, so a long-running agent collects no zombies.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

/// A converge and, when it changed what a network is, the checks that kept it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifiedOutcome {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// `None` when no network's spec changed (a converged node, or a repair of drift back to
    /// specs already verified).
    pub verification: Option<Verification>,
    /// The networks whose spec changed.
    pub changed: Vec<String>,
}

/// The networks this change makes something else: new, or with a spec, ids or backend other
/// than what `memory` says was last applied. Removals are not among them: taking a network
/// away only removes what mirrornet added. A network remembered without its spec (an older
/// agent's record) is not either: there is nothing exact to go back to.
fn changed_networks(state: &KernelView, memory: &Memory, change: &Change<'_>) -> Vec<String> {
    change
        .plans
        .iter()
        .zip(change.specs)
        .filter(|(plan, spec)| match memory.network(&plan.name) {
            None => true,
            Some(record) => match (&record.spec, &record.allocation) {
                (Some(previous), Some(allocation)) => {
                    previous != **spec
                        || *allocation != plan.allocation()
                        || programmed_backend(state, allocation) != plan.backend
                }
                _ => false,
            },
        })
        .map(|(plan, _)| plan.name.clone())
        .collect()
}

/// Converges `session`'s node to `change`; a change to what a network is gets armed, checked
/// and, if a check fails, reverted. The session holds the [`NodeLock`].
pub async fn converge_verified(
    session: &Session<'_>,
    change: Change<'_>,
) -> Result<VerifiedOutcome> {
    let engine = session.engine();
    let (state, memory) = (&session.view, &session.memory);
    // An arm left by a change whose rollback failed: its record of "before" must not be
    // overwritten by a new one, so it is rolled back first or nothing changes.
    if let Some(leftover) = Armed::load()? {
        revert(engine, &leftover).await.map_err(|e| {
            AgentError::Arming(format!(
                "an earlier change ({}) could not be rolled back yet: {e}",
                leftover.id
            ))
        })?;
        Armed::disarm()?;
        return Err(AgentError::Arming(format!(
            "rolled back the unconfirmed earlier change {} first; apply again",
            leftover.id
        )));
    }
    let changes = session.diff(change.plans, change.remove);
    let changed = changed_networks(state, memory, &change);
    if changed.is_empty() || changes.is_empty() {
        let outcome = session
            .apply(change.plans, change.specs, change.remove, &changes)
            .await?;
        return Ok(VerifiedOutcome {
            outcome,
            verification: None,
            changed,
        });
    }
    let timeout = change
        .plans
        .iter()
        .zip(change.networks)
        .filter(|(p, _)| changed.contains(&p.name))
        .map(|(_, n)| n.verify_timeout)
        .max()
        .unwrap_or(Duration::from_secs(
            mirrornet_api::validation::DEFAULT_VERIFY_TIMEOUT_SECONDS.into(),
        ));
    let before = NodeReach::observe(
        engine.netlink(),
        state,
        &change.endpoints.iter().map(|e| e.ip()).collect::<Vec<_>>(),
    )
    .await;
    let armed = arm(state, memory, &changed, engine.ranges())?;
    let outcome = match session
        .apply(change.plans, change.specs, change.remove, &changes)
        .await
    {
        Ok(outcome) => outcome,
        // The engine's own rollback failed: the node is part-way, so the armed record is what
        // brings it back; if that fails too the arm stays for the next start.
        Err(e @ AgentError::RollbackFailed { .. }) => {
            if revert(engine, &armed).await.is_ok() {
                Armed::disarm()?;
            }
            return Err(e);
        }
        // Rolled back step by step, or refused before the first write: nothing to guard.
        Err(e) => {
            Armed::disarm()?;
            return Err(e);
        }
    };
    // The checks get their whole budget, however long programming took.
    let deadline = Instant::now() + timeout;
    let verification = check(engine, before, &change, &changed, deadline).await;
    let Some(failed) = verification.failure().cloned() else {
        Armed::disarm()?;
        info!(networks = ?changed, checks = %verification.summary(), "change verified");
        return Ok(VerifiedOutcome {
            outcome,
            verification: Some(verification),
            changed,
        });
    };
    let rejected = rejected_by(&verification, &changed);
    warn!(networks = ?rejected, check = %failed.name, detail = %failed.detail, "a check failed; rolling the change back");
    let failed = format!("{}: {}", failed.name, failed.detail);
    let partial = Armed {
        id: armed.id.clone(),
        networks: armed
            .networks
            .iter()
            .filter(|n| rejected.contains(&n.name))
            .cloned()
            .collect(),
    };
    match revert(engine, &partial).await {
        Ok(_) => {
            Armed::disarm()?;
            Err(AgentError::VerificationFailed {
                failed,
                outcome: format!(
                    "rolled {} back to the state before the change",
                    rejected.join(", ")
                ),
                rolled_back: true,
                networks: rejected,
            })
        }
        // The arm stays: the next change, or the next agent start, tries the rollback again.
        Err(e) => Err(AgentError::VerificationFailed {
            failed,
            outcome: format!("rolling back failed: {e}"),
            rolled_back: false,
            networks: rejected,
        }),
    }
}

/// Records what the `changed` networks were, on disk, before the first write, and starts the
/// guard that takes the change back if this agent dies before confirming it.
fn arm(
    state: &KernelView,
    memory: &Memory,
    changed: &[String],
    ranges: &IdRanges,
) -> Result<Armed> {
    let armed = Armed {
        id: format!("{}-{}", std::process::id(), unix_ms()),
        networks: changed
            .iter()
            .map(|name| PreviousNetwork {
                name: name.clone(),
                previous: memory.network(name).and_then(|r| {
                    let allocation = r.allocation.clone()?;
                    Some(Previous {
                        spec: r.spec.clone()?,
                        backend: programmed_backend(state, &allocation),
                        allocation,
                    })
                }),
            })
            .collect(),
    };
    armed
        .save()
        .map_err(|e| AgentError::Arming(e.to_string()))?;
    if let Err(e) = spawn_guard(&armed.id, ranges) {
        Armed::disarm()?;
        return Err(AgentError::Arming(format!(
            "starting the guard process: {e}"
        )));
    }
    info!(change = %armed.id, networks = ?changed, "rollback armed");
    Ok(armed)
}

/// The checks after a change: the node still reaches what it reached `before` and the
/// endpoints it must, and every changed network's probes answer.
async fn check(
    engine: &Engine,
    before: NodeReach,
    change: &Change<'_>,
    changed: &[String],
    deadline: Instant,
) -> Verification {
    let mut verification = Verification {
        checks: before.compare(engine.netlink()).await,
    };
    for (i, endpoint) in change.endpoints.iter().enumerate() {
        let name = if i == 0 {
            format!("API server {endpoint}")
        } else {
            format!("endpoint {endpoint}")
        };
        verification
            .checks
            .push(verify::reach_endpoint(&name, *endpoint, deadline).await);
    }
    for (plan, network) in change.plans.iter().zip(change.networks) {
        if changed.contains(&plan.name) {
            verification
                .checks
                .extend(verify::probe_network(plan, network, deadline).await);
        }
    }
    verification
}

/// The changed networks a failed verification rejects: a node check concerns every change; a
/// probe only its own network's.
fn rejected_by(verification: &Verification, changed: &[String]) -> Vec<String> {
    let node_failed = verification
        .checks
        .iter()
        .any(|c| !c.passed && c.network.is_none());
    if node_failed {
        return changed.to_vec();
    }
    changed
        .iter()
        .filter(|n| {
            verification
                .checks
                .iter()
                .any(|c| !c.passed && c.network.as_deref() == Some(n.as_str()))
        })
        .cloned()
        .collect()
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Check;

    fn check(name: &str, passed: bool, network: Option<&str>) -> Check {
        Check {
            name: name.into(),
            passed,
            detail: String::new(),
            network: network.map(Into::into),
        }
    }

    #[test]
    fn a_failed_probe_rejects_its_network_and_a_failed_node_check_every_change() {
        let changed = vec!["a".to_owned(), "b".to_owned()];
        let probe_of_b = Verification {
            checks: vec![
                check("node route to 10.0.0.1", true, None),
                check("probe a/outer", true, Some("a")),
                check("probe b/outer", false, Some("b")),
            ],
        };
        assert_eq!(rejected_by(&probe_of_b, &changed), ["b"]);
        let node = Verification {
            checks: vec![
                check("API server 10.0.0.1:6443", false, None),
                check("probe a/outer", true, Some("a")),
            ],
        };
        assert_eq!(rejected_by(&node, &changed), ["a", "b"]);
    }

    #[test]
    fn the_guard_starts_with_the_agents_id_ranges() {
        let ranges = IdRanges {
            rule_priorities: 500..=500,
            mark_mask: 0xfff0_0000,
            ..IdRanges::default()
        };
        let command = guard_command("42-1", &ranges);
        let args: Vec<&str> = command.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "rollback-guard",
                "--id",
                "42-1",
                "--table-range",
                "20000-29999",
                "--zone-range",
                "40000-49999",
                "--rule-priority-range",
                "500-500",
                "--mark-mask",
                "0xfff00000"
            ]
        );
    }
}
