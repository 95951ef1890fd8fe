//! Apply: runs the steps of a change in order and, on the first failure, undoes the executed
//! ones in reverse, so that a failed change leaves the node as it was.
//!
//! Netlink adds, sysctls, ONE nft transaction, netlink deletes, sysctl restores (the order is
//! [`crate::step::Phase`]'s); each step is one kernel write.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info, info_span, warn};

use crate::error::{AgentError, Result};
use crate::netlink::Netlink;
use crate::nft;
use crate::observe::has_ipv6;
use crate::plan::{L3MDEV_PRIORITY, VrfPlan};
use crate::step::{Changes, Step, Undo};
use crate::sysctl;

/// Test-only failure injection, compiled in with the `failpoints` feature only (the test
/// suites build the agent with it; release builds ignore the variables entirely):
/// `MIRRORNET_FAULT_AT_STEP=N` fails step N (the rollback path), `MIRRORNET_CRASH_AT_STEP=N`
/// aborts the process before step N (no rollback: what a kill or power loss leaves).
#[derive(Debug, Default, Clone, Copy)]
pub struct Failpoints {
    fail_at: Option<usize>,
    crash_at: Option<usize>,
}

impl Failpoints {
    #[cfg(feature = "failpoints")]
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Self {
            fail_at: var("MIRRORNET_FAULT_AT_STEP"),
            crash_at: var("MIRRORNET_CRASH_AT_STEP"),
        }
    }

    #[cfg(not(feature = "failpoints"))]
    pub fn from_env() -> Self {
        Self::default()
    }
}

/// The per-device settings mirrornet changes on its VRF devices (forwarding).
fn vrf_device_settings(device: &str) -> Vec<String> {
    vec![
        format!("net/ipv4/conf/{device}/forwarding"),
        format!("net/ipv6/conf/{device}/forwarding"),
    ]
}

/// Runs `changes` in order; on the first failure undoes the executed steps in reverse.
/// Returns the writes made.
pub async fn execute(
    netlink: &Netlink,
    failpoints: Failpoints,
    changes: &Changes,
) -> Result<usize> {
    // The table's listing is needed only to undo an nft transaction that succeeded before a
    // later step failed; the transaction itself is atomic, so when it is the last step (a
    // network added, nothing to remove) no listing is taken.
    let nft_then_more = changes
        .steps
        .iter()
        .position(|s| matches!(s, Step::Nft { .. }))
        .is_some_and(|at| at + 1 < changes.steps.len());
    let listing = if nft_then_more {
        Some(nft::command::list_text()?.map(Arc::from))
    } else {
        None
    };
    let mut run = Run {
        netlink,
        listing,
        deleted_vrf_settings: BTreeMap::new(),
    };
    let mut done: Vec<&Step> = Vec::new();
    for (index, step) in changes.steps.iter().enumerate() {
        let _span = info_span!("step", %step).entered();
        if failpoints.crash_at == Some(index) {
            eprintln!("failpoint: crashing before step {index}: {step}");
            std::process::abort();
        }
        let result = if failpoints.fail_at == Some(index) {
            Err(AgentError::InjectedFault { step: index })
        } else {
            run.step(step).await
        };
        match result {
            Ok(()) => {
                debug!("done");
                done.push(step);
            }
            Err(failed) => {
                warn!(error = %failed, "step failed, rolling back");
                let undone = done.len();
                for step in done.into_iter().rev() {
                    if let Err(rollback) = run.undo(step).await {
                        return Err(AgentError::RollbackFailed {
                            failed: Box::new(failed),
                            rollback: Box::new(rollback),
                        });
                    }
                }
                return Err(AgentError::RolledBack {
                    failed: Box::new(failed),
                    undone,
                });
            }
        }
    }
    if !changes.steps.is_empty() {
        info!(writes = changes.steps.len(), "converged");
    }
    Ok(changes.steps.len())
}

/// One execution of a change: what undoing its steps needs to know.
struct Run<'a> {
    netlink: &'a Netlink,
    /// Our table exactly as `nft -j` listed it before the change (`None` inside: no table),
    /// to restore it if a later step fails; `None`: not taken, as nothing after the
    /// transaction can fail. Kept as text: the parsed form of a few hundred networks' table
    /// weighs megabytes.
    listing: Option<Option<Arc<[u8]>>>,
    /// Settings of VRF devices deleted by this change, by device name, for undoing the
    /// deletion.
    deleted_vrf_settings: BTreeMap<String, Vec<(String, String)>>,
}

impl Run<'_> {
    async fn index(&self, interface: &str) -> Result<u32> {
        self.netlink
            .link_index(interface)
            .await?
            .ok_or_else(|| AgentError::InterfaceMissing {
                network: "?".into(),
                field: "interface".into(),
                interface: interface.into(),
            })
    }

    async fn step(&mut self, step: &Step) -> Result<()> {
        let netlink = self.netlink;
        match step {
            Step::AddAddress { address, .. } => {
                let index = self.index(&address.interface).await?;
                netlink.add_address(index, address).await?;
            }
            Step::DeleteAddress { address, .. } => {
                let index = self.index(&address.interface).await?;
                netlink.del_address(index, address).await?;
            }
            Step::AddRoute { route, .. } => {
                let index = self.index(&route.interface).await?;
                netlink.add_route(index, route).await?;
            }
            Step::DeleteRoute { route, .. } => {
                let index = self.index(&route.interface).await?;
                netlink.del_route(index, route).await?;
            }
            Step::AddRule { rule, .. } => netlink.add_rule(rule).await?,
            Step::AddProxy { proxy, .. } => {
                let index = self.index(&proxy.interface).await?;
                netlink.add_proxy(index, proxy).await?;
            }
            Step::DeleteProxy { proxy, .. } => {
                let index = self.index(&proxy.interface).await?;
                netlink.del_proxy(index, proxy).await?;
            }
            Step::DeleteRule { rule, .. } => netlink.del_rule(rule).await?,
            Step::SetSysctl { path, value, .. } => self.write_sysctl(path, value).await?,
            // A device deleted earlier in the same change (a VRF) took its sysctls with it.
            Step::RestoreSysctl { path, value, .. } => {
                if sysctl::read(path).is_some() {
                    self.write_sysctl(path, value).await?
                }
            }
            Step::Nft { commands, .. } => nft::command::apply(&nft::batch(commands))?,
            Step::AddVrf { vrf, .. } => netlink.add_vrf(vrf).await?,
            Step::DeleteVrf { vrf, .. } => {
                let index = self.index(&vrf.name).await?;
                // The device's own settings go with it; a rollback that makes it again must
                // put them back.
                let settings: Vec<(String, String)> = vrf_device_settings(&vrf.name)
                    .into_iter()
                    .filter_map(|path| sysctl::read(&path).map(|value| (path, value)))
                    .collect();
                netlink.del_link(index, &vrf.name).await?;
                self.deleted_vrf_settings.insert(vrf.name.clone(), settings);
            }
            Step::Enslave { interface, vrf, .. } => {
                let (index, controller) = (self.index(interface).await?, self.index(vrf).await?);
                netlink
                    .set_controller(index, interface, Some(controller))
                    .await?;
            }
            Step::Release { interface, .. } => {
                let index = self.index(interface).await?;
                netlink.set_controller(index, interface, None).await?;
            }
            Step::DeleteL3mdevRule { ipv6, priority } => {
                netlink.del_l3mdev_rule(*ipv6, *priority).await?
            }
            Step::EnsureL3mdevRule { .. } => {
                let (_, _, present) = netlink.rules().await?;
                if present.ipv4.is_none() {
                    netlink.add_l3mdev_rule(false, L3MDEV_PRIORITY).await?;
                }
                if present.ipv6.is_none() && has_ipv6() {
                    netlink.add_l3mdev_rule(true, L3MDEV_PRIORITY).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes a sysctl through /proc/sys, or over rtnetlink where /proc/sys is read-only (a
    /// container that is not privileged) and the setting has a netlink form.
    async fn write_sysctl(&self, path: &str, value: &str) -> Result<()> {
        match sysctl::write(path, value) {
            Ok(()) => Ok(()),
            Err(e) if sysctl::is_read_only(&e) => {
                // The sysctl counts in hundredths of a second, netlink in milliseconds.
                if let (Some((interface, ipv6)), Ok(hundredths)) =
                    (sysctl::proxy_delay(path), value.parse::<u64>())
                {
                    let index = self.index(interface).await?;
                    return Ok(self
                        .netlink
                        .set_proxy_delay(index, interface, ipv6, hundredths * 10)
                        .await?);
                }
                let (Some((interface, key)), Ok(number)) =
                    (sysctl::ipv4_devconf(path), value.parse::<u32>())
                else {
                    return Err(e.into());
                };
                let index = self.index(interface).await?;
                self.netlink
                    .set_ipv4_devconf(index, interface, key, number)
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn undo(&mut self, step: &Step) -> Result<()> {
        match step.inverse() {
            Undo::Step(inverse) => self.step(&inverse).await,
            Undo::RestoreTable => {
                let Some(listing) = &self.listing else {
                    return Err(AgentError::Nft {
                        what: "restoring the table".into(),
                        detail: "no listing was taken before the change".into(),
                    });
                };
                let listing = listing.as_deref().map(nft::command::parse).transpose()?;
                nft::command::restore(listing.as_ref())
            }
            Undo::RecreateVrf { network, vrf } => self.recreate_vrf(network, vrf).await,
            Undo::RemoveL3mdevRules { ipv4, ipv6 } => {
                let (_, _, present) = self.netlink.rules().await?;
                for (family_ipv6, missing, priority) in
                    [(false, ipv4, present.ipv4), (true, ipv6, present.ipv6)]
                {
                    if let (true, Some(priority)) = (missing, priority) {
                        self.netlink.del_l3mdev_rule(family_ipv6, priority).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Makes a VRF device deleted by this change again, with the settings it had.
    async fn recreate_vrf(&mut self, network: String, vrf: VrfPlan) -> Result<()> {
        let name = vrf.name.clone();
        self.step(&Step::AddVrf { network, vrf }).await?;
        let settings = self.deleted_vrf_settings.remove(&name).unwrap_or_default();
        for (path, value) in settings {
            self.write_sysctl(&path, &value).await?;
        }
        Ok(())
    }
}
