//! The vocabulary of a change: one [`Step`] per kernel write, how it reads in `plan`, the
//! [`Phase`] that decides where it goes in a change, and the step that undoes it.
//!
//! Order is what keeps packets off half-built paths, so it is decided in one place: every step
//! the diff makes comes with its phase, and [`Changes::ordered`] sorts by phase alone (stable:
//! within a phase, the diff's own order, or the phase's key where it has one).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::nft;
use crate::plan::{Address, L3MDEV_PRIORITY, Proxy, Route, Rule, VrfPlan};

/// What the [`Step`]s of node-wide objects (the skip rules) name as their network.
pub const NODE: &str = "(node)";

/// One step of a change to the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    AddAddress {
        network: String,
        address: Address,
    },
    DeleteAddress {
        network: String,
        address: Address,
    },
    AddRoute {
        network: String,
        route: Route,
    },
    DeleteRoute {
        network: String,
        route: Route,
    },
    AddRule {
        network: String,
        rule: Rule,
    },
    /// The node starts answering address resolution for an on-link alias address.
    AddProxy {
        network: String,
        proxy: Proxy,
    },
    DeleteProxy {
        network: String,
        proxy: Proxy,
    },
    DeleteRule {
        network: String,
        rule: Rule,
    },
    /// Sets a sysctl; `previous` is what it held, for rollback and for the state file.
    SetSysctl {
        network: String,
        path: String,
        value: String,
        previous: String,
    },
    /// Puts back the value a sysctl had before mirrornet changed it.
    RestoreSysctl {
        network: String,
        path: String,
        value: String,
        previous: String,
    },
    /// A side's VRF device, created up.
    AddVrf {
        network: String,
        vrf: VrfPlan,
    },
    DeleteVrf {
        network: String,
        vrf: VrfPlan,
    },
    /// Puts a side interface into its VRF.
    Enslave {
        network: String,
        interface: String,
        vrf: String,
    },
    /// Takes an interface out of a VRF (`vrf`, to put it back on rollback).
    Release {
        network: String,
        interface: String,
        vrf: String,
    },
    /// Puts back the kernel's l3mdev rule where VRF devices need it and it is missing. The
    /// kernel adds it only with the first VRF device a namespace ever has: once it is gone
    /// (mirrornet removed it with its last VRF, or someone deleted it), a new VRF device comes
    /// without it, and no packet received on a VRF's interface finds the VRF's table.
    EnsureL3mdevRule {
        /// The families whose rule was missing when the change was planned: what undoing
        /// this step removes again.
        ipv4: bool,
        ipv6: bool,
    },
    /// Removes the kernel's l3mdev rule that came with mirrornet's first VRF device.
    DeleteL3mdevRule {
        ipv6: bool,
        priority: u32,
    },
    /// One atomic nft transaction.
    Nft {
        summary: Vec<String>,
        commands: Vec<Value>,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddAddress { address: a, .. } => write!(f, "+ address {a}"),
            Step::DeleteAddress { address: a, .. } => write!(f, "- address {a}"),
            Step::AddRoute { route: r, .. } => write!(f, "+ route {r}"),
            Step::DeleteRoute { route: r, .. } => write!(f, "- route {r}"),
            Step::AddRule { rule: r, .. } => write!(f, "+ rule {r}"),
            Step::DeleteRule { rule: r, .. } => write!(f, "- rule {r}"),
            Step::AddProxy { proxy: p, .. } => write!(f, "+ neigh {p}"),
            Step::DeleteProxy { proxy: p, .. } => write!(f, "- neigh {p}"),
            Step::SetSysctl {
                path,
                value,
                previous,
                ..
            } => write!(f, "~ sysctl {} = {value} (was {previous})", dotted(path)),
            Step::RestoreSysctl {
                path,
                value,
                previous,
                ..
            } => write!(
                f,
                "~ sysctl {} = {value} (restored; was {previous})",
                dotted(path)
            ),
            Step::Nft { summary, .. } => {
                write!(f, "~ nft table inet {}: {}", nft::TABLE, summary.join(", "))
            }
            Step::AddVrf { vrf, .. } => {
                write!(f, "+ vrf {} table {} ({})", vrf.name, vrf.table, vrf.alias)
            }
            Step::DeleteVrf { vrf, .. } => write!(f, "- vrf {} table {}", vrf.name, vrf.table),
            Step::Enslave { interface, vrf, .. } => write!(f, "~ link {interface} master {vrf}"),
            Step::Release { interface, vrf, .. } => {
                write!(f, "~ link {interface} nomaster (was {vrf})")
            }
            Step::EnsureL3mdevRule { ipv4, ipv6 } => write!(
                f,
                "+ rule {L3MDEV_PRIORITY} l3mdev ({}; the kernel adds it only with a namespace's first VRF)",
                match (ipv4, ipv6) {
                    (true, true) => "IPv4 and IPv6",
                    (true, false) => "IPv4",
                    _ => "IPv6",
                }
            ),
            Step::DeleteL3mdevRule { ipv6, priority } => write!(
                f,
                "- rule {}{priority} l3mdev (the kernel's, added with the first VRF)",
                if *ipv6 { "-6 " } else { "" }
            ),
        }
    }
}

fn dotted(path: &str) -> String {
    path.replace('/', ".")
}

/// Where a step goes in a change, in the order the phases run. Adding goes from the outside
/// in (routing domains, then addresses, routes and rules, then the nft transaction that makes
/// the path live); withdrawing the other way round, so that no packet is steered into a path
/// that is half gone, and every step can be undone in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// On-link alias addresses the node stops answering for: first, so that no host is
    /// pointed at a path that is about to change.
    WithdrawProxies,
    /// The kernel's l3mdev rule, before the first VRF device (so a kernel that would add it
    /// with the device finds it there).
    L3mdevRule,
    /// VRF devices, and interfaces moving in or out of them while the plan routes through
    /// them (releasing cycles the link, which flushes its routes: they are added after).
    RoutingDomains,
    /// IPv6 forwarding of a side interface (on-link aliases), before its address: set after
    /// it, the kernel can join the subnet-router anycast address twice (for the change, and
    /// again when the new address's own notification runs a moment later) and leaves it once
    /// when the address goes, leaving an `anycast` route behind (measured on 6.18).
    EarlySysctls,
    /// Routes the plan no longer has: they may hold the key a new route needs.
    StaleRoutes,
    Addresses,
    Routes,
    /// Rules in decreasing priority: the mark rule, the one that makes a path live, last.
    Rules,
    Sysctls,
    /// The node-wide skip rules, where no side relies on an older agent's `iif` rules: before
    /// the nft transaction, so that adding a network ends with that transaction, which is
    /// atomic and needs no listing to undo.
    SkipRules,
    /// The one nft transaction: steering, NAT and zones.
    Nft,
    /// The skip rules on a node with an older agent's `iif` rules: only once the nft
    /// transaction marks every side's own traffic may unmarked traffic skip the mark rules.
    LegacySkipRules,
    /// On-link alias addresses the node starts answering for: once their path is live.
    Proxies,
    /// Rules, lowest priority first: a skip rule before the mark rules it skips.
    WithdrawRules,
    WithdrawRoutes,
    WithdrawAddresses,
    /// Interfaces leaving VRFs, before the devices go, so that a rollback can put them back.
    ReleaseInterfaces,
    DeleteVrfs,
    /// Sysctls back to the values they had before mirrornet.
    RestoreSysctls,
    /// The kernel's l3mdev rule, with mirrornet's last VRF device, when mirrornet brought it.
    RemoveL3mdevRule,
}

impl Phase {
    /// The order of steps inside the phase, where it is not the diff's own.
    fn key(self, step: &Step) -> u32 {
        match (self, step) {
            (Phase::Rules, Step::AddRule { rule, .. }) => u32::MAX - rule.priority,
            (Phase::WithdrawRules, Step::DeleteRule { rule, .. }) => rule.priority,
            _ => 0,
        }
    }
}

/// The ordered steps that take the node from what it holds to what the plans need.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changes {
    pub steps: Vec<Step>,
}

impl Changes {
    /// The steps in the order their phases run.
    pub fn ordered(mut steps: Vec<(Phase, Step)>) -> Self {
        steps.sort_by_key(|(phase, step)| (*phase, phase.key(step)));
        Self {
            steps: steps.into_iter().map(|(_, step)| step).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// What undoes a step. Most steps have an inverse step; three need what only the moment of
/// undoing knows (the table as listed before the change, a deleted device's settings, which
/// l3mdev rules are there now).
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    Step(Step),
    /// Put the nft table back as it was listed before the change.
    RestoreTable,
    /// Make the VRF device again, with the settings it had when it was deleted.
    RecreateVrf {
        network: String,
        vrf: VrfPlan,
    },
    /// Remove the l3mdev rules of these families, whoever added them: the node had none
    /// before the change.
    RemoveL3mdevRules {
        ipv4: bool,
        ipv6: bool,
    },
}

impl Step {
    /// What undoes this step. Pure.
    pub fn inverse(&self) -> Undo {
        Undo::Step(match self.clone() {
            Step::AddAddress { network, address } => Step::DeleteAddress { network, address },
            Step::DeleteAddress { network, address } => Step::AddAddress { network, address },
            Step::AddRoute { network, route } => Step::DeleteRoute { network, route },
            Step::DeleteRoute { network, route } => Step::AddRoute { network, route },
            Step::AddRule { network, rule } => Step::DeleteRule { network, rule },
            Step::DeleteRule { network, rule } => Step::AddRule { network, rule },
            Step::AddProxy { network, proxy } => Step::DeleteProxy { network, proxy },
            Step::DeleteProxy { network, proxy } => Step::AddProxy { network, proxy },
            Step::SetSysctl {
                network,
                path,
                value,
                previous,
            }
            | Step::RestoreSysctl {
                network,
                path,
                value,
                previous,
            } => Step::RestoreSysctl {
                // Restore, not set: a VRF device deleted by this change is gone until its own
                // undo makes it again with the settings it had.
                network,
                path,
                value: previous,
                previous: value,
            },
            Step::Nft { .. } => return Undo::RestoreTable,
            Step::AddVrf { network, vrf } => Step::DeleteVrf { network, vrf },
            Step::DeleteVrf { network, vrf } => return Undo::RecreateVrf { network, vrf },
            Step::Enslave {
                network,
                interface,
                vrf,
            } => Step::Release {
                network,
                interface,
                vrf,
            },
            Step::Release {
                network,
                interface,
                vrf,
            } => Step::Enslave {
                network,
                interface,
                vrf,
            },
            Step::DeleteL3mdevRule { ipv6, .. } => Step::EnsureL3mdevRule { ipv4: !ipv6, ipv6 },
            // Whatever brought the rules (this step or the kernel with a first VRF device),
            // the node had none of these before the change.
            Step::EnsureL3mdevRule { ipv4, ipv6 } => {
                return Undo::RemoveL3mdevRules { ipv4, ipv6 };
            }
        })
    }
}
