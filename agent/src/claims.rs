//! Claims: what the node and the other networks hold, which a plan may not take. Checked
//! before any write, so that a plan that would fail half-way, or take over someone else's
//! interface or address, is refused with the field that asks for it and the node unchanged.

use std::collections::{BTreeMap, BTreeSet};

use mirrornet_api::BackendKind;

use crate::error::{AgentError, Result};
use crate::observe::KernelView;
use crate::plan::NetworkPlan;

/// Refuses, before any write, what would fail half-way or take over someone else's objects.
pub fn check_preconditions(
    view: &KernelView,
    plans: &[NetworkPlan],
    remove: &[String],
) -> Result<()> {
    one_mark_mask(view, plans, remove)?;
    NodeClaims::new(view, remove).check(view, plans)
}

/// After the change the node holds its networks under one mark mask. Marks allocated under
/// two masks can match each other's rules (`0x02100000` under `0xfff00000` matches a rule
/// `fwmark 0x2000000/0xff000000`), which would steer one network's packets into another's
/// table; the allocator keeps marks apart only under one mask. Checked on the whole change:
/// a node moves to another mask with every network in one change.
fn one_mark_mask(view: &KernelView, plans: &[NetworkPlan], remove: &[String]) -> Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    let changing: BTreeSet<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    let planned = plans
        .iter()
        .map(|p| (p.name.clone(), p.mark_mask))
        .filter(|(name, _)| *name != first.name);
    let kept = view
        .nft
        .networks()
        .into_iter()
        .filter(|n| !changing.contains(n.as_str()) && !remove.contains(n))
        .filter_map(|n| view.recorded_allocation(&n).map(|a| (n, a.mark_mask)));
    for (other, other_mask) in planned.chain(kept) {
        if other_mask != first.mark_mask {
            return Err(AgentError::MarkMaskMixed {
                network: first.name.clone(),
                mask: first.mark_mask,
                other,
                other_mask,
            });
        }
    }
    Ok(())
}

/// What the node holds that a plan may not take: interfaces other networks hold (and keep),
/// addresses nobody gave to mirrornet. Read once, then checked against many plans: the run
/// loop checks every network on its own (one bad network must not block the others), and
/// rebuilding this for each made a pass quadratic in the networks.
#[derive(Debug)]
pub struct NodeClaims<'a> {
    /// Interface -> the network holding it, for every network not being removed.
    held: BTreeMap<String, String>,
    foreign_addresses: BTreeSet<(&'a str, std::net::IpAddr)>,
}

impl<'a> NodeClaims<'a> {
    pub fn new(view: &'a KernelView, remove: &[String]) -> Self {
        let held = view
            .nft
            .networks()
            .into_iter()
            .filter(|n| !remove.contains(n))
            .flat_map(|n| {
                view.interfaces_of(&n)
                    .into_iter()
                    .map(move |i| (i, n.clone()))
            })
            .collect();
        let foreign_addresses = view
            .addresses
            .iter()
            .filter(|o| !o.ours)
            .map(|o| (o.interface.as_str(), o.address))
            .collect();
        Self {
            held,
            foreign_addresses,
        }
    }

    /// Checks `plans` together against the node: first come, first served among them.
    pub fn check(&self, view: &KernelView, plans: &[NetworkPlan]) -> Result<()> {
        check_plans(view, plans, self)
    }
}

fn check_plans(view: &KernelView, plans: &[NetworkPlan], claims: &NodeClaims) -> Result<()> {
    let changing: BTreeSet<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    // Interfaces taken by the plans checked so far.
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    let foreign_addresses = &claims.foreign_addresses;
    // A suspended network takes nothing on the node: its interfaces may be gone, down or the
    // node's own, and it claims none of them.
    for p in plans.iter().filter(|p| !p.suspended) {
        for (index, side) in p.sides.iter().enumerate() {
            if !view.links.contains_key(&side.interface) {
                return Err(AgentError::InterfaceMissing {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                });
            }
            if !view.links[&side.interface].up {
                return Err(AgentError::InterfaceDown {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                });
            }
            if let Some(why) = node_use(view, p, &side.interface) {
                return Err(AgentError::NodeInterface {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                    why,
                });
            }
            if p.backend == BackendKind::Vrf
                && view.carries_default_route(&side.interface)
                && view.our_vrf_of(&side.interface).is_none()
            {
                return Err(AgentError::VrfTakesNodeRoute {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                });
            }
            if let Some(controller) = view.links[&side.interface].controller
                && view.our_vrf_of(&side.interface).is_none()
            {
                let controller = view
                    .links
                    .values()
                    .find(|l| l.index == controller)
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|| format!("ifindex {controller}"));
                return Err(AgentError::InterfaceEnslaved {
                    network: p.name.clone(),
                    field: format!("spec.sides[{index}].interface"),
                    interface: side.interface.clone(),
                    controller,
                });
            }
            let held_by_another = claims
                .held
                .get(&side.interface)
                .map(String::as_str)
                .filter(|holder| !changing.contains(holder));
            if let Some(other) = held_by_another.or(claimed.insert(&side.interface, &p.name)) {
                return Err(AgentError::InterfaceShared {
                    network: p.name.clone(),
                    interface: side.interface.clone(),
                    other: other.into(),
                });
            }
        }
        for a in &p.addresses {
            if foreign_addresses.contains(&(a.interface.as_str(), a.address)) {
                return Err(AgentError::AddressTaken {
                    network: p.name.clone(),
                    interface: a.interface.clone(),
                    address: a.address.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// proxy's IPVS dummy, the bridge plugin's default, Kube-OVN, Antrea).
const CNI_PREFIXES: &[&str] = &[
    "cali",
    "cilium_",
    "lxc",
    "flannel",
    "cni",
    "weave",
    "vxlan.calico",
    "kube-ipvs",
    "tunl",
    "ovn",
    "antrea",
    "genev_sys",
];

/// Why the node itself needs `interface`, unless the side allows taking it over.
fn node_use(view: &KernelView, plan: &NetworkPlan, interface: &str) -> Option<String> {
    if plan.take_over.contains(interface) {
        return None;
    }
    if view.carries_default_route(interface) {
        return Some("carries the node's default route".into());
    }
    if let Some(prefix) = CNI_PREFIXES.iter().find(|p| interface.starts_with(*p)) {
        return Some(format!("is named like a CNI's interface ({prefix}*)"));
    }
    let gateway = plan.gateway;
    let foreign: Vec<String> = view
        .addresses
        .iter()
        .filter(|a| a.interface == interface && !a.ours && a.address != gateway)
        .filter(|a| !matches!(a.address, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    (!foreign.is_empty()).then(|| {
        format!(
            "holds addresses mirrornet did not add ({}): node or cluster traffic",
            foreign.join(", ")
        )
    })
}
