//! Links: a side's VRF device, its interface moving in or out of it, and the kernel's l3mdev
//! rule that VRF devices need.

use std::collections::BTreeSet;

use super::Diff;
use crate::memory::Memory;
use crate::netlink::Link;
use crate::observe::KernelView;
use crate::plan::{NetworkPlan, VrfPlan};
use crate::step::{Phase, Step};

/// The VRF steps of a planned network; returns the interfaces released first (see below),
/// whose routes the kernel flushes.
pub(super) fn network(
    diff: &mut Diff,
    view: &KernelView,
    p: &NetworkPlan,
    tables: &BTreeSet<u32>,
    interfaces: &BTreeSet<String>,
) -> BTreeSet<String> {
    let network = &p.name;
    // Interfaces in one of our VRFs that the plan does not want there. Releasing one makes
    // the kernel cycle it, which flushes every route through it: where the plan still routes
    // through the interface (a backend switch) it comes out first and its routes count as
    // gone, so they are added back; where nothing is routed through it any more (suspend, a
    // side moved away) it comes out after its routes and addresses are deleted, as in a
    // delete, so every step can be undone in reverse.
    let mut released_first = BTreeSet::new();
    for interface in interfaces {
        if let Some(current) = view.our_vrf_of(interface)
            && !p
                .vrfs
                .iter()
                .any(|v| v.name == current.name && v.interface == *interface)
        {
            let release = Step::Release {
                network: network.clone(),
                interface: interface.clone(),
                vrf: current.name.clone(),
            };
            if p.routes.iter().any(|r| r.interface == *interface) {
                released_first.insert(interface.clone());
                diff.push(Phase::RoutingDomains, release);
            } else if p.vrfs.iter().any(|v| v.name == current.name) {
                // The VRF stays (another interface of the plan takes it): only this
                // interface leaves it.
                diff.push(Phase::ReleaseInterfaces, release);
            }
            // Otherwise the VRF goes as a whole below, its interfaces released with it.
        }
    }
    for v in &p.vrfs {
        let existing = view
            .links
            .get(&v.name)
            .filter(|l| l.vrf_table == Some(v.table));
        if existing.is_none() {
            diff.push(
                Phase::RoutingDomains,
                Step::AddVrf {
                    network: network.clone(),
                    vrf: v.clone(),
                },
            );
        }
        let enslaved = existing.is_some_and(|vrf| {
            view.links
                .get(&v.interface)
                .is_some_and(|l| l.controller == Some(vrf.index))
        });
        if !enslaved {
            diff.push(
                Phase::RoutingDomains,
                Step::Enslave {
                    network: network.clone(),
                    interface: v.interface.clone(),
                    vrf: v.name.clone(),
                },
            );
        }
    }
    for link in view.our_vrfs(tables) {
        if !p.vrfs.iter().any(|v| v.name == link.name) {
            // An interface released first (above) is out already; releasing it again
            // would, when undone, enslave it a second time.
            delete_vrf(diff, view, network, link, &released_first);
        }
    }
    released_first
}

/// The VRF steps of a network being removed.
pub(super) fn removed(diff: &mut Diff, view: &KernelView, network: &str, tables: &BTreeSet<u32>) {
    for link in view.our_vrfs(tables) {
        delete_vrf(diff, view, network, link, &BTreeSet::new());
    }
}

/// Releasing every interface enslaved to `vrf` (but those released already), then deleting it.
fn delete_vrf(
    diff: &mut Diff,
    view: &KernelView,
    network: &str,
    vrf: &Link,
    released: &BTreeSet<String>,
) {
    for l in view
        .links
        .values()
        .filter(|l| l.controller == Some(vrf.index) && !released.contains(&l.name))
    {
        diff.push(
            Phase::ReleaseInterfaces,
            Step::Release {
                network: network.into(),
                interface: l.name.clone(),
                vrf: vrf.name.clone(),
            },
        );
    }
    diff.push(
        Phase::DeleteVrfs,
        Step::DeleteVrf {
            network: network.into(),
            vrf: VrfPlan {
                name: vrf.name.clone(),
                table: vrf.vrf_table.unwrap_or_default(),
                interface: String::new(),
                alias: vrf.alias.clone().unwrap_or_default(),
            },
        },
    );
}

/// The kernel's l3mdev rule. It comes with a namespace's first VRF device only, and the
/// kernel never removes it: mirrornet puts it back where VRF devices need it and it is
/// missing, and removes it with its last VRF device when mirrornet brought it.
pub(super) fn l3mdev(diff: &mut Diff, view: &KernelView, plans: &[NetworkPlan], memory: &Memory) {
    let vrfs_now = view
        .links
        .values()
        .filter(|l| l.vrf_table.is_some())
        .count();
    let added = diff.count(|s| matches!(s, Step::AddVrf { .. }));
    let deleted = diff.count(|s| matches!(s, Step::DeleteVrf { .. }));
    if vrfs_now + added == deleted && memory.l3mdev_rule_ours {
        for (ipv6, priority) in [(false, view.l3mdev.ipv4), (true, view.l3mdev.ipv6)] {
            if let Some(priority) = priority {
                diff.push(
                    Phase::RemoveL3mdevRule,
                    Step::DeleteL3mdevRule { ipv6, priority },
                );
            }
        }
    }
    // Before the first VRF device: a kernel that would add the rules with it finds them there
    // (measured on Debian's kernel: no duplicate), and undoing this step after the VRF steps
    // are undone takes back whichever of the two put them there.
    let vrfs_wanted = plans.iter().any(|p| !p.vrfs.is_empty());
    let missing_ipv4 = view.l3mdev.ipv4.is_none();
    let missing_ipv6 = view.l3mdev.ipv6.is_none() && view.facts.ipv6;
    if vrfs_wanted && (missing_ipv4 || missing_ipv6) {
        diff.push(
            Phase::L3mdevRule,
            Step::EnsureL3mdevRule {
                ipv4: missing_ipv4,
                ipv6: missing_ipv6,
            },
        );
    }
}
