//! Session: one run of the agent's sequence over this node, the same for `apply`, `delete`,
//! a rollback and every pass of the run loop.
//!
//! ```text
//! lock ─> observe ─> load memory ─> plan ─> diff ─> apply          (Session)
//!  │                                          └─> arm, apply, verify (rollback::converge_verified)
//!  └─ held until the session is dropped: no other agent, guard or CLI writes in between
//! ```
//!
//! A command-line change first rolls back what a dead agent left armed
//! ([`crate::rollback::recover`]), then opens its session. The diff is worked out once per
//! change and the same [`Changes`] are armed, applied and reported.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use mirrornet_api::allocation::Allocator;
use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, BackendKind, MirrorNetworkSpec, ValidNetwork};
use serde::Serialize;

use crate::allocate::{self, BackendChoice};
use crate::claims;
use crate::diff;
use crate::engine::Engine;
use crate::error::Result;
use crate::lock::NodeLock;
use crate::memory::Memory;
use crate::observe::{KernelView, Sysctls};
use crate::plan::NetworkPlan;
use crate::step::Changes;

/// What one session sees of the node, under the node lock when it changes anything.
#[derive(Debug)]
pub struct Session<'e> {
    engine: &'e Engine,
    pub view: KernelView,
    /// The memory as loaded for `view`: planning, ownership and converging all see the same
    /// memory (nothing writes it in between).
    pub memory: Memory,
    lock: Option<NodeLock>,
}

/// What to apply: `plans` with their `specs` and validated `networks` (same order), and the
/// networks to `remove`.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub plans: &'a [NetworkPlan],
    pub specs: &'a [&'a MirrorNetworkSpec],
    pub networks: &'a [&'a ValidNetwork],
    pub remove: &'a [String],
    /// Endpoints the node must still reach afterwards (the API server in a cluster).
    pub endpoints: &'a [SocketAddr],
}

/// The result of an apply or delete.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Kernel writes made (netlink requests, sysctl writes, nft transactions).
    pub writes: usize,
    pub steps: Vec<String>,
    pub networks: Vec<NetworkSummary>,
}

/// What a network got on this node.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSummary {
    pub name: String,
    pub backend: BackendKind,
    pub allocation: Allocation,
    /// On-link alias addresses left to the hosts that use them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<crate::plan::TakenAlias>,
}

impl<'e> Session<'e> {
    /// Locks the node, then observes it and loads the memory.
    pub async fn locked(engine: &'e Engine) -> Result<Self> {
        Self::locked_with(engine, None).await
    }

    /// Locks the node and takes `view` as what it holds, where the caller kept it up to date
    /// from the kernel's notifications ([`KernelView::patch`]); our nft table is still checked
    /// against the ruleset's generation. Without a view, the node is read.
    pub async fn locked_with(engine: &'e Engine, view: Option<KernelView>) -> Result<Self> {
        let lock = NodeLock::acquire().await?;
        let view = match view {
            Some(mut view) => {
                view.nft = engine.observe_nft()?;
                view
            }
            None => engine.observe().await?,
        };
        let mut session = Self::of(engine, view)?;
        session.lock = Some(lock);
        Ok(session)
    }

    /// Observes the node and loads the memory without locking: to look (`plan`, `show`), or
    /// for a caller that holds the lock already (a rollback).
    pub async fn read(engine: &'e Engine) -> Result<Self> {
        Self::of(engine, engine.observe().await?)
    }

    /// The session over `view`, with the memory as it stands for it.
    fn of(engine: &'e Engine, mut view: KernelView) -> Result<Self> {
        view.facts.aliases = alias_findings(engine, &view);
        let started = std::time::Instant::now();
        let memory = engine.memory(&view)?;
        tracing::debug!(
            networks = memory.networks.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "loaded the memory"
        );
        Ok(Self {
            engine,
            view,
            memory,
            lock: None,
        })
    }

    /// Probes the on-link alias addresses of `networks` whose findings are older than
    /// `max_age` ([`crate::neighbours`]), so that the plans made next leave taken ones alone.
    ///
    /// The caller holds the node lock (the session's, or its own for a read-only command), so
    /// that two probes never forget each other's entries. Only sides that hold the node's own
    /// address are probed: the request comes from it.
    pub async fn probe_on_link(
        &mut self,
        networks: &[&mirrornet_api::ValidNetwork],
        max_age: std::time::Duration,
    ) -> Result<()> {
        if networks.is_empty() {
            return Ok(());
        }
        let view = &self.view;
        let ready = |interface: &str, gateway: std::net::IpAddr| {
            view.addresses
                .iter()
                .any(|a| a.interface == interface && a.address == gateway)
        };
        self.engine
            .conflicts()
            .refresh(self.engine.netlink(), networks, max_age, ready)
            .await?;
        self.view.facts.aliases = alias_findings(self.engine, &self.view);
        Ok(())
    }

    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// Lets go of the node before the session ends: what follows (probes that wait for silent
    /// hosts) must not hold up a CLI `apply` or a guard.
    pub fn unlock(&mut self) {
        self.lock = None;
    }

    /// Plans `networks`, with ids recorded on the node or fresh from the engine's ranges.
    pub fn plans(
        &self,
        networks: &[LoadedNetwork],
        choice: BackendChoice,
    ) -> Result<Vec<NetworkPlan>> {
        allocate::plans(
            &self.view,
            &self.memory,
            self.engine.ranges(),
            networks,
            choice,
        )
    }

    /// One allocator for a pass that plans networks one at a time.
    pub fn allocator(&self) -> Allocator {
        allocate::allocator(&self.view, &self.memory, self.engine.ranges())
    }

    /// Plans one network with ids allocated already.
    pub fn plan_with(
        &self,
        network: &LoadedNetwork,
        allocation: &Allocation,
        choice: BackendChoice,
    ) -> Result<NetworkPlan> {
        allocate::plan_with(&self.view, network, allocation, choice)
    }

    /// Networks mirrornet holds on this node: in the kernel, or remembered.
    pub fn held_networks(&self) -> BTreeSet<String> {
        let mut names = self.view.nft.networks();
        names.extend(self.memory.networks.keys().cloned());
        names
    }

    /// The steps from the node to `plans`, removing `remove`: the sysctls they concern are
    /// read here, the rest was observed.
    pub fn diff(&self, plans: &[NetworkPlan], remove: &[String]) -> Changes {
        let planned = plans
            .iter()
            .flat_map(|p| p.sysctls.iter().map(|s| s.path.as_str()));
        let remembered = self
            .memory
            .networks
            .values()
            .flat_map(|r| r.originals.keys().map(String::as_str));
        let sysctls = Sysctls::read(&self.view, planned.chain(remembered));
        diff::changes(&self.view, &sysctls, plans, remove, &self.memory)
    }

    /// Makes the node hold exactly `plans` (and nothing of `remove`), rolling back on failure,
    /// without checks: what a rollback converges with.
    pub async fn converge(
        &self,
        plans: &[NetworkPlan],
        specs: &[&MirrorNetworkSpec],
        remove: &[String],
    ) -> Result<Outcome> {
        let changes = self.diff(plans, remove);
        self.apply(plans, specs, remove, &changes).await
    }

    /// Applies `changes` (the diff of `plans` and `remove` on this session's view) with the
    /// memory written around them: the intent before the first write, the result after, the
    /// memory of before again if the change was rolled back. `specs` are the specs of
    /// `plans`, in the same order, remembered for `show`.
    pub async fn apply(
        &self,
        plans: &[NetworkPlan],
        specs: &[&MirrorNetworkSpec],
        remove: &[String],
        changes: &Changes,
    ) -> Result<Outcome> {
        claims::check_preconditions(&self.view, plans, remove)?;
        if changes.is_empty() {
            let current = self.memory.recording(plans, specs, remove);
            if current != self.memory {
                current.save()?;
            }
            return Ok(outcome(0, changes, plans));
        }
        // A repair (a deleted route put back) changes nothing the memory holds: the file is
        // then written neither before nor after (at a thousand networks, 1.3 MB twice).
        let intent = self.memory.intent(changes, plans, specs);
        let new_intent = intent != self.memory;
        if new_intent {
            intent.save()?;
        }
        let writes = match self.engine.execute(changes).await {
            Ok(writes) => writes,
            Err(e) => {
                // Rolled back (or not): the memory of before is the truth again.
                if new_intent {
                    self.memory.save()?;
                }
                return Err(e);
            }
        };
        // The file holds `intent` now (written above, or equal to what it held).
        let done = intent.clone().done(changes, plans, remove);
        if done != intent {
            done.save()?;
        }
        Ok(outcome(writes, changes, plans))
    }
}

/// What is known of on-link alias addresses: the probe's findings, and every address someone
/// else's proxy entry holds (taken: ours would overwrite it, and then delete it).
fn alias_findings(
    engine: &Engine,
    view: &KernelView,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<std::net::IpAddr, bool>> {
    let mut aliases = engine.conflicts().findings();
    for foreign in view.proxies.iter().filter(|p| !p.ours) {
        aliases
            .entry(foreign.proxy.interface.clone())
            .or_default()
            .insert(foreign.proxy.address, true);
    }
    aliases
}

fn outcome(writes: usize, changes: &Changes, plans: &[NetworkPlan]) -> Outcome {
    Outcome {
        writes,
        steps: changes.steps.iter().map(ToString::to_string).collect(),
        networks: plans
            .iter()
            .map(|p| NetworkSummary {
                name: p.name.clone(),
                backend: p.backend,
                allocation: p.allocation(),
                taken: p.taken.clone(),
            })
            .collect(),
    }
}
