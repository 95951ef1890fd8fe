//! Diff: the steps from what the kernel holds ([`KernelView`], [`Sysctls`]) to what the plans
//! need, removing everything of the networks in `remove`. Pure: every read it needs was made
//! by [`crate::observe`], so the same inputs always give the same [`Changes`], and the table
//! tests in `tests.rs` show them as `plan` prints them.
//!
//! One module per kind of object: [`links`] (VRF devices, enslaving, the l3mdev rule),
//! [`routing`] (addresses, routes, rules), [`sysctls`], [`node_rules`] (the node-wide skip
//! rules), and the one nft transaction below. Each step states its [`Phase`]; the order of the
//! change is the phases' order and nothing else.

mod links;
mod neighbours;
mod node_rules;
mod routing;
mod sysctls;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tracing::info_span;

use crate::memory::Memory;
use crate::nft;
use crate::observe::{KernelView, Sysctls};
use crate::plan::NetworkPlan;
use crate::step::{Changes, Phase, Step};

/// The steps from the node to `plans`, removing everything of `remove`. Pure.
pub fn changes(
    view: &KernelView,
    sysctls: &Sysctls,
    plans: &[NetworkPlan],
    remove: &[String],
    memory: &Memory,
) -> Changes {
    let owned = Ownership::new(view, memory);
    let mut diff = Diff::default();
    for p in plans {
        let _span = info_span!("network", network = %p.name).entered();
        let (tables, interfaces) = owned.of(&p.name, Some(p));
        let released_first = links::network(&mut diff, view, p, &tables, &interfaces);
        routing::network(&mut diff, &owned, p, &tables, &interfaces, &released_first);
        // A link moving into or out of a VRF is cycled, and a link going down loses its
        // proxy entries: those are made again after the move.
        let cycled: BTreeSet<String> = diff
            .steps
            .iter()
            .filter_map(|(_, step)| match step {
                Step::Enslave {
                    network, interface, ..
                }
                | Step::Release {
                    network, interface, ..
                } if *network == p.name => Some(interface.clone()),
                _ => None,
            })
            .collect();
        neighbours::network(&mut diff, &owned, p, &interfaces, &cycled);
        sysctls::network(&mut diff, sysctls, p, memory);
    }
    for name in remove {
        let _span = info_span!("network", network = %name).entered();
        let (tables, interfaces) = owned.of(name, None);
        links::removed(&mut diff, view, name, &tables);
        routing::removed(&mut diff, &owned, name, &tables, &interfaces);
        neighbours::removed(&mut diff, &owned, name, &interfaces);
        sysctls::removed(&mut diff, sysctls, name, memory);
    }
    links::l3mdev(&mut diff, view, plans, memory);
    node_rules::skip_rules(&mut diff, view, &owned, plans, remove);
    table(&mut diff, view, plans, remove);
    Changes::ordered(diff.steps)
}

/// The steps found so far, each with its phase.
#[derive(Debug, Default)]
struct Diff {
    steps: Vec<(Phase, Step)>,
}

impl Diff {
    fn push(&mut self, phase: Phase, step: Step) {
        self.steps.push((phase, step));
    }

    fn count(&self, what: impl Fn(&Step) -> bool) -> usize {
        self.steps.iter().filter(|(_, s)| what(s)).count()
    }
}

/// What the kernel and the memory attribute to each network: its tables and interfaces, and
/// through them its addresses, routes and rules. Indexed once, so that each network looks at
/// its own objects only (in the order the kernel listed them), whatever the number of
/// networks on the node.
struct Ownership<'a> {
    view: &'a KernelView,
    memory: &'a Memory,
    addresses_by_interface: BTreeMap<&'a str, Vec<usize>>,
    proxies_by_interface: BTreeMap<&'a str, Vec<usize>>,
    routes_by_table: BTreeMap<u32, Vec<usize>>,
    rules_by_table: BTreeMap<u32, Vec<usize>>,
}

impl<'a> Ownership<'a> {
    fn new(view: &'a KernelView, memory: &'a Memory) -> Self {
        let mut addresses_by_interface: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, a) in view.addresses.iter().enumerate().filter(|(_, a)| a.ours) {
            addresses_by_interface
                .entry(a.interface.as_str())
                .or_default()
                .push(i);
        }
        let mut proxies_by_interface: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in view.proxies.iter().enumerate().filter(|(_, p)| p.ours) {
            proxies_by_interface
                .entry(p.proxy.interface.as_str())
                .or_default()
                .push(i);
        }
        let mut routes_by_table: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in view.routes.iter().enumerate() {
            routes_by_table.entry(r.table).or_default().push(i);
        }
        let mut rules_by_table: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in view.rules.iter().enumerate() {
            rules_by_table.entry(r.table).or_default().push(i);
        }
        Self {
            view,
            memory,
            addresses_by_interface,
            proxies_by_interface,
            routes_by_table,
            rules_by_table,
        }
    }

    /// The tables and interfaces of `network`: recorded in the kernel and in the memory, plus
    /// those of its plan.
    fn of(&self, network: &str, plan: Option<&NetworkPlan>) -> (BTreeSet<u32>, BTreeSet<String>) {
        let mut tables: BTreeSet<u32> = self
            .view
            .recorded_allocation(network)
            .map(|a| a.sides.iter().map(|s| s.table).collect())
            .unwrap_or_default();
        let mut interfaces = self.view.interfaces_of(network);
        if let Some(recorded) = self.memory.network(network) {
            tables.extend(recorded.tables.iter().copied());
            interfaces.extend(recorded.interfaces.iter().cloned());
        }
        if let Some(p) = plan {
            tables.extend(p.sides.iter().map(|s| s.ids.table));
            // A suspended network's interfaces are its own only while it still holds something
            // there (recorded above); afterwards another network may use them.
            if !p.suspended {
                interfaces.extend(p.sides.iter().map(|s| s.interface.clone()));
            }
        }
        (tables, interfaces)
    }

    fn addresses(&self, interfaces: &BTreeSet<String>) -> Vec<&'a crate::netlink::ObservedAddress> {
        select(
            &self.view.addresses,
            interfaces
                .iter()
                .filter_map(|i| self.addresses_by_interface.get(i.as_str())),
        )
    }

    fn proxies(&self, interfaces: &BTreeSet<String>) -> Vec<&'a crate::plan::Proxy> {
        select(
            &self.view.proxies,
            interfaces
                .iter()
                .filter_map(|i| self.proxies_by_interface.get(i.as_str())),
        )
        .into_iter()
        .map(|p| &p.proxy)
        .collect()
    }

    fn routes(&self, tables: &BTreeSet<u32>) -> Vec<&'a crate::plan::Route> {
        select(
            &self.view.routes,
            tables.iter().filter_map(|t| self.routes_by_table.get(t)),
        )
    }

    fn rules(&self, tables: &BTreeSet<u32>) -> Vec<&'a crate::plan::Rule> {
        select(
            &self.view.rules,
            tables.iter().filter_map(|t| self.rules_by_table.get(t)),
        )
    }
}

/// The items at the positions in `groups`, in their original order.
fn select<'a, 'g, T>(items: &'a [T], groups: impl Iterator<Item = &'g Vec<usize>>) -> Vec<&'a T> {
    let mut positions: Vec<usize> = groups.flatten().copied().collect();
    positions.sort_unstable();
    positions.dedup();
    positions.into_iter().map(|i| &items[i]).collect()
}

/// The one nft transaction that makes our table hold the plans' parts and nothing of the
/// removed networks.
fn table(diff: &mut Diff, view: &KernelView, plans: &[NetworkPlan], remove: &[String]) {
    let mask = plans.first().map(|p| p.mark_mask).unwrap_or(0xff00_0000);
    let desired: Vec<(&str, &nft::NetworkNft)> =
        plans.iter().map(|p| (p.name.as_str(), &p.nft)).collect();
    let removing: Vec<&str> = remove.iter().map(String::as_str).collect();
    let commands = nft::transaction(&view.nft, &desired, &removing, mask);
    if !commands.is_empty() {
        diff.push(
            Phase::Nft,
            Step::Nft {
                summary: nft_summary(&commands),
                commands,
            },
        );
    }
}

/// `add chain x3, add element x6`: how `plan` shows a transaction.
fn nft_summary(commands: &[Value]) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for c in commands {
        if let Some((verb, body)) = c.as_object().and_then(|o| o.iter().next())
            && let Some(kind) = body.as_object().and_then(|o| o.keys().next())
        {
            *counts.entry(format!("{verb} {kind}")).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(what, n)| format!("{what} x{n}"))
        .collect()
}
