//! Allocate: which ids and which backend each network gets on this node, before planning.
//! Pure: ids recorded in the kernel (the `ids.<network>` chains) win over the memory's, and
//! fresh ones avoid every id and table in use.

use std::collections::{BTreeMap, BTreeSet};

use mirrornet_api::allocation::{Allocator, IdRanges};
use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, BackendKind};

use crate::error::{AgentError, Result};
use crate::memory::Memory;
use crate::observe::KernelView;
use crate::plan::{self, NetworkPlan, NodeFacts};

/// Which backend the user asked for on the command line or in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// VRF where the kernel can make VRF devices, policy routing otherwise.
    #[default]
    Auto,
    Vrf,
    PolicyRouting,
}

/// The command line overrides the spec; `Auto` means VRF where the kernel can make VRF devices.
/// An explicit VRF request on a kernel without VRF is refused in [`plan::plan`].
pub fn resolve_backend(
    choice: BackendChoice,
    spec: mirrornet_api::Backend,
    facts: &NodeFacts,
) -> BackendKind {
    use mirrornet_api::Backend;
    match (choice, spec) {
        (BackendChoice::Vrf, _) | (BackendChoice::Auto, Backend::Vrf) => BackendKind::Vrf,
        (BackendChoice::PolicyRouting, _) | (BackendChoice::Auto, Backend::PolicyRouting) => {
            BackendKind::PolicyRouting
        }
        (BackendChoice::Auto, _) if facts.vrf_available => BackendKind::Vrf,
        (BackendChoice::Auto, _) => BackendKind::PolicyRouting,
    }
}

/// An allocator holding every id recorded (kernel first, then `memory`) and every foreign
/// table.
pub fn allocator(view: &KernelView, memory: &Memory, ranges: &IdRanges) -> Allocator {
    let mut recorded: BTreeMap<String, Allocation> = memory
        .networks
        .iter()
        .filter_map(|(n, r)| r.allocation.clone().map(|a| (n.clone(), a)))
        .collect();
    // The kernel's record wins over the file's.
    recorded.extend(
        view.nft
            .networks()
            .into_iter()
            .filter_map(|n| view.recorded_allocation(&n).map(|a| (n, a))),
    );
    let mut allocator = Allocator::from_existing(
        ranges.clone(),
        recorded.iter().map(|(n, a)| (n.as_str(), a)),
    );
    // Tables used by anyone except the networks we know are foreign.
    let ours: BTreeSet<u32> = recorded
        .values()
        .flat_map(|a| a.sides.iter().map(|s| s.table))
        .collect();
    allocator.reserve_foreign(view.tables_in_use.difference(&ours).copied());
    allocator
}

/// The ids of `network` from `allocator`: recovered where recorded (ids are stable across
/// runs), otherwise fresh.
pub fn allocate(allocator: &mut Allocator, network: &LoadedNetwork) -> Result<Allocation> {
    allocator
        .allocate(network.name(), &network.valid)
        .map_err(|e| AgentError::Allocation {
            network: network.name().into(),
            reason: e.to_string(),
        })
}

/// Plans every network in `networks` for this node, with ids from one allocator: networks
/// without ids of their own that appear together get distinct ids.
pub fn plans(
    view: &KernelView,
    memory: &Memory,
    ranges: &IdRanges,
    networks: &[LoadedNetwork],
    choice: BackendChoice,
) -> Result<Vec<NetworkPlan>> {
    let mut allocator = allocator(view, memory, ranges);
    let allocations = networks
        .iter()
        .map(|network| allocate(&mut allocator, network))
        .collect::<Result<Vec<_>>>()?;
    networks
        .iter()
        .zip(allocations)
        .map(|(network, allocation)| plan_with(view, network, &allocation, choice))
        .collect()
}

/// Plans one network with ids allocated already (by the operator, or by [`allocate`]).
pub fn plan_with(
    view: &KernelView,
    network: &LoadedNetwork,
    allocation: &Allocation,
    choice: BackendChoice,
) -> Result<NetworkPlan> {
    let backend = resolve_backend(choice, network.valid.backend, &view.facts);
    Ok(plan::plan(
        network.name(),
        &network.valid,
        allocation,
        backend,
        &view.facts,
    )?)
}
