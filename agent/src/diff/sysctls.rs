//! Sysctls: the settings a network needs, and the originals put back when it no longer does.

use super::Diff;
use crate::memory::Memory;
use crate::observe::Sysctls;
use crate::plan::{NetworkPlan, SysctlPlan};
use crate::step::{Phase, Step};

/// Settings the plan needs that differ, and originals of settings it no longer needs.
pub(super) fn network(diff: &mut Diff, sysctls: &Sysctls, p: &NetworkPlan, memory: &Memory) {
    for SysctlPlan { path, value } in &p.sysctls {
        let current = sysctls.get(path).unwrap_or_default();
        if current != *value {
            let early = path.starts_with("net/ipv6/conf/") && path.ends_with("/forwarding");
            diff.push(
                if early {
                    Phase::EarlySysctls
                } else {
                    Phase::Sysctls
                },
                Step::SetSysctl {
                    network: p.name.clone(),
                    path: path.clone(),
                    value: value.clone(),
                    previous: current.to_owned(),
                },
            );
        }
    }
    for (path, original) in memory.sysctls(&p.name) {
        if !p.sysctls.iter().any(|s| s.path == path) && !memory.shared(&p.name, &path) {
            restore(diff, sysctls, &p.name, &path, &original);
        }
    }
}

/// Every original a removed network holds that no other network still needs.
pub(super) fn removed(diff: &mut Diff, sysctls: &Sysctls, network: &str, memory: &Memory) {
    for (path, original) in memory.sysctls(network) {
        if !memory.shared(network, &path) {
            restore(diff, sysctls, network, &path, &original);
        }
    }
}

fn restore(diff: &mut Diff, sysctls: &Sysctls, network: &str, path: &str, original: &str) {
    // An interface that is gone took its sysctls with it: nothing to restore.
    let Some(current) = sysctls.get(path) else {
        return;
    };
    if current != original {
        diff.push(
            Phase::RestoreSysctls,
            Step::RestoreSysctl {
                network: network.into(),
                path: path.into(),
                value: original.into(),
                previous: current.into(),
            },
        );
    }
}
