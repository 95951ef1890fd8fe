//! Routing: a network's addresses on its side interfaces, its routes in its tables, its rules.

use std::collections::BTreeSet;

use super::{Diff, Ownership};
use crate::plan::{Address, NetworkPlan, Route, Rule};
use crate::step::{Phase, Step};

/// What a planned network adds and withdraws. Routes through an interface released first
/// (`released_first`) count as gone: the kernel flushed them.
pub(super) fn network(
    diff: &mut Diff,
    owned: &Ownership,
    p: &NetworkPlan,
    tables: &BTreeSet<u32>,
    interfaces: &BTreeSet<String>,
    released_first: &BTreeSet<String>,
) {
    let network = &p.name;
    let have_addresses = addresses(owned, interfaces);
    for a in &p.addresses {
        if !have_addresses.contains(a) {
            diff.push(
                Phase::Addresses,
                Step::AddAddress {
                    network: network.clone(),
                    address: a.clone(),
                },
            );
        }
    }
    for a in have_addresses {
        if !p.addresses.contains(&a) {
            diff.push(
                Phase::WithdrawAddresses,
                Step::DeleteAddress {
                    network: network.clone(),
                    address: a,
                },
            );
        }
    }

    let have_routes: Vec<&Route> = owned
        .routes(tables)
        .into_iter()
        .filter(|r| !released_first.contains(&r.interface))
        .collect();
    for r in &p.routes {
        if !have_routes.contains(&r) {
            diff.push(
                Phase::Routes,
                Step::AddRoute {
                    network: network.clone(),
                    route: r.clone(),
                },
            );
        }
    }
    for r in have_routes {
        if !p.routes.contains(r) {
            diff.push(
                Phase::StaleRoutes,
                Step::DeleteRoute {
                    network: network.clone(),
                    route: r.clone(),
                },
            );
        }
    }

    let have_rules: Vec<&Rule> = owned.rules(tables);
    for r in &p.rules {
        if !have_rules.contains(&r) {
            diff.push(
                Phase::Rules,
                Step::AddRule {
                    network: network.clone(),
                    rule: r.clone(),
                },
            );
        }
    }
    for r in have_rules {
        if !p.rules.contains(r) {
            diff.push(
                Phase::WithdrawRules,
                Step::DeleteRule {
                    network: network.clone(),
                    rule: r.clone(),
                },
            );
        }
    }
}

/// Everything of a removed network's routing.
pub(super) fn removed(
    diff: &mut Diff,
    owned: &Ownership,
    network: &str,
    tables: &BTreeSet<u32>,
    interfaces: &BTreeSet<String>,
) {
    for address in addresses(owned, interfaces) {
        diff.push(
            Phase::WithdrawAddresses,
            Step::DeleteAddress {
                network: network.into(),
                address,
            },
        );
    }
    for r in owned.routes(tables) {
        diff.push(
            Phase::WithdrawRoutes,
            Step::DeleteRoute {
                network: network.into(),
                route: r.clone(),
            },
        );
    }
    for r in owned.rules(tables) {
        diff.push(
            Phase::WithdrawRules,
            Step::DeleteRule {
                network: network.into(),
                rule: r.clone(),
            },
        );
    }
}

/// Our addresses on `interfaces`, as planned addresses.
fn addresses(owned: &Ownership, interfaces: &BTreeSet<String>) -> Vec<Address> {
    owned
        .addresses(interfaces)
        .into_iter()
        .map(|a| Address {
            interface: a.interface.clone(),
            address: a.address,
            prefix_len: a.prefix_len,
        })
        .collect()
}
