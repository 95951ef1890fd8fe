//! What the kernel cannot hold for us: the values sysctls had before a network changed them,
//! and which tables and interfaces each network was last programmed with (so a network whose
//! spec changed, or whose nft table was tampered with, can still be cleaned up completely).
//!
//! One small JSON file per network namespace under `/run/mirrornet` (override:
//! `MIRRORNET_STATE_DIR`): tmpfs, so it survives agent restarts but not a reboot, which resets
//! the sysctls anyway. It is keyed by the namespace's inode so agents in different namespaces
//! of one machine (tests, labs) keep separate memories. Ids do not live here: they are
//! recovered from the kernel itself (the `ids.<network>` chain).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mirrornet_api::{Allocation, MirrorNetworkSpec};

use crate::error::MemoryError;
use crate::observe::KernelView;
use crate::plan::NetworkPlan;
use crate::step::{Changes, Step};

/// What one network was last programmed with.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkRecord {
    pub tables: BTreeSet<u32>,
    pub interfaces: BTreeSet<String>,
    /// Sysctls the network needs.
    pub sysctls: BTreeSet<String>,
    /// Sysctl path -> value before mirrornet changed it (only those this network changed).
    pub originals: BTreeMap<String, String>,
    /// The spec last applied, so `show` can tell whether the node still matches it.
    #[serde(default)]
    pub spec: Option<MirrorNetworkSpec>,
    /// The ids last programmed: the kernel records them too (`ids.<network>`), but that chain
    /// goes with the nft table if someone deletes it, and the repair must reuse the same ids.
    #[serde(default)]
    pub allocation: Option<Allocation>,
}

/// The state file's content.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Whether the kernel's l3mdev rule came with a VRF device mirrornet created (none existed
    /// before), so it goes when mirrornet's last VRF does.
    #[serde(default)]
    pub l3mdev_rule_ours: bool,
}

/// `netns-<inode>.<extension>` in the state directory: the state file (`json`) and its
/// siblings (the node lock, an armed rollback) for this network namespace.
pub fn sibling(extension: &str) -> Result<PathBuf, MemoryError> {
    Ok(location()?.with_extension(extension))
}

/// The content of `path`; `None` if there is no such file.
pub fn read_file(path: &Path) -> Result<Option<String>, MemoryError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MemoryError {
            what: "reading",
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Replaces `path` with `content` atomically (a temporary file renamed over it), so a crash
/// leaves the old content or the new, never half of one.
pub fn write_file(path: &Path, content: &[u8]) -> Result<(), MemoryError> {
    let err = |what, source| MemoryError {
        what,
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("creating", e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, content).map_err(|e| err("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("renaming", e))
}

/// Removes `path` if it exists.
pub fn remove_file(path: &Path) -> Result<(), MemoryError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(MemoryError {
            what: "removing",
            path: path.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn location() -> Result<PathBuf, MemoryError> {
    let dir = std::env::var_os("MIRRORNET_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/mirrornet"));
    let ns = std::fs::metadata("/proc/self/ns/net").map_err(|source| MemoryError {
        what: "reading",
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    Ok(dir.join(format!("netns-{}.json", ns.ino())))
}

impl Memory {
    /// The memory of the networks the kernel still shows traces of: an `ids.<network>` chain,
    /// mirrornet rules, routes or VRFs in one of the network's tables, mirrornet addresses on
    /// its interfaces, or a sysctl it changed that still differs from its original. Anything
    /// else is stale: a namespace's inode, the file's key, is reused once the namespace is gone,
    /// and a new namespace must not inherit a dead one's memory. The traces are broad on
    /// purpose: a crash part-way through a delete may leave only some of them.
    pub fn load(state: &KernelView, cache: Option<&MemoryCache>) -> Result<Self, MemoryError> {
        let mut me = match cache {
            Some(cache) => cache.load()?,
            None => Self::load_all()?,
        };
        let programmed = state.nft.networks();
        let our_tables: BTreeSet<u32> = state
            .rules
            .iter()
            .map(|r| r.table)
            .chain(state.routes.iter().map(|r| r.table))
            .chain(
                state
                    .links
                    .values()
                    .filter_map(|l| l.vrf_table.filter(|t| l.name == crate::plan::vrf_name(*t))),
            )
            .collect();
        let our_address_links: BTreeSet<&str> = state
            .addresses
            .iter()
            .filter(|a| a.ours)
            .map(|a| a.interface.as_str())
            .collect();
        me.networks.retain(|name, record| {
            programmed.contains(name)
                || !record.tables.is_disjoint(&our_tables)
                || record
                    .interfaces
                    .iter()
                    .any(|i| our_address_links.contains(i.as_str()))
                || record.originals.iter().any(|(path, original)| {
                    crate::sysctl::read(path).is_some_and(|v| v != *original)
                })
        });
        Ok(me)
    }

    fn load_all() -> Result<Self, MemoryError> {
        Ok(read_file(&location()?)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default())
    }

    /// Writes the file atomically; removes it when nothing is left to remember.
    pub fn save(&self) -> Result<(), MemoryError> {
        let file = location()?;
        if self.networks.is_empty() && !self.l3mdev_rule_ours {
            return remove_file(&file);
        }
        write_file(&file, &serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    /// The memory once `plans` are recorded and `remove` forgotten: what it must say when the
    /// kernel already matches (a rollback to the state the kernel still holds changes only
    /// what the networks are recorded as).
    pub fn recording(
        &self,
        plans: &[NetworkPlan],
        specs: &[&MirrorNetworkSpec],
        remove: &[String],
    ) -> Self {
        let mut current = self.clone();
        for (plan, spec) in plans.iter().zip(specs) {
            current.record_network(plan, spec);
        }
        for name in remove {
            current.forget_network(name);
        }
        current
    }

    /// The memory to write before the first step of `changes`: what the change is about to
    /// create (ids, original sysctl values) is on disk before the first write, so a crash
    /// part-way leaves a state the next run can both finish and undo completely.
    pub fn intent(
        &self,
        changes: &Changes,
        plans: &[NetworkPlan],
        specs: &[&MirrorNetworkSpec],
    ) -> Self {
        let mut intent = self.clone();
        for step in &changes.steps {
            if let Step::SetSysctl {
                network,
                path,
                previous,
                ..
            } = step
            {
                intent.remember_sysctl(network, path, previous);
            }
        }
        // Rules that were missing and that this change brings (itself, or the kernel with a
        // first VRF device) are ours to remove with our last VRF.
        if changes
            .steps
            .iter()
            .any(|s| matches!(s, Step::EnsureL3mdevRule { ipv4: true, .. }))
        {
            intent.l3mdev_rule_ours = true;
        }
        for (plan, spec) in plans.iter().zip(specs) {
            intent.record_network(plan, spec);
        }
        // A sysctl the plan no longer needs (a suspended network needs none) keeps its
        // original on disk until it is put back: a crash before the restore must not lose it.
        for step in &changes.steps {
            if let Step::RestoreSysctl {
                network,
                path,
                value,
                ..
            } = step
            {
                intent.remember_sysctl(network, path, value);
            }
        }
        intent
    }

    /// The memory once every step of `changes` is done, from the [`Memory::intent`] written
    /// before it.
    pub fn done(mut self, changes: &Changes, plans: &[NetworkPlan], remove: &[String]) -> Self {
        for step in &changes.steps {
            match step {
                Step::RestoreSysctl { network, path, .. } => self.forget_sysctl(network, path),
                Step::DeleteL3mdevRule { .. } => self.l3mdev_rule_ours = false,
                _ => {}
            }
        }
        for name in remove {
            self.forget_network(name);
        }
        for plan in plans.iter().filter(|p| p.suspended) {
            self.release_interfaces(&plan.name);
        }
        self
    }

    pub fn network(&self, name: &str) -> Option<&NetworkRecord> {
        self.networks.get(name)
    }

    /// Remembers what a sysctl held before `network` changed it. The first memory wins: a
    /// value found already changed by another network is not an original.
    pub fn remember_sysctl(&mut self, network: &str, path: &str, previous: &str) {
        if self
            .networks
            .values()
            .any(|r| r.originals.contains_key(path))
        {
            return;
        }
        self.networks
            .entry(network.into())
            .or_default()
            .originals
            .insert(path.into(), previous.into());
    }

    pub fn forget_sysctl(&mut self, network: &str, path: &str) {
        if let Some(r) = self.networks.get_mut(network) {
            r.originals.remove(path);
        }
    }

    /// The originals `network` holds.
    pub fn sysctls(&self, network: &str) -> Vec<(String, String)> {
        self.networks
            .get(network)
            .map(|r| r.originals.clone().into_iter().collect())
            .unwrap_or_default()
    }

    /// Whether a network other than `network` still needs `path`.
    pub fn shared(&self, network: &str, path: &str) -> bool {
        self.networks
            .iter()
            .any(|(n, r)| n != network && r.sysctls.contains(path))
    }

    /// Records what `plan` was programmed with.
    pub fn record_network(&mut self, plan: &NetworkPlan, spec: &MirrorNetworkSpec) {
        let record = self.networks.entry(plan.name.clone()).or_default();
        record.spec = Some(spec.clone());
        record.allocation = Some(plan.allocation());
        record.tables = plan.sides.iter().map(|s| s.ids.table).collect();
        // A suspended network keeps the interfaces it held until its teardown is done
        // ([`Memory::release_interfaces`]); a crash part-way must still find them.
        if !plan.suspended {
            record.interfaces = plan.sides.iter().map(|s| s.interface.clone()).collect();
        }
        record.sysctls = plan.sysctls.iter().map(|s| s.path.clone()).collect();
        let needed = record.sysctls.clone();
        record.originals.retain(|path, _| needed.contains(path));
    }

    /// Forgets the interfaces of a network that no longer holds anything on them (suspended),
    /// so another network may take them without this one's diff removing its addresses.
    pub fn release_interfaces(&mut self, network: &str) {
        if let Some(r) = self.networks.get_mut(network) {
            r.interfaces.clear();
        }
    }

    /// Drops `network`; originals of sysctls another network still needs pass to that network,
    /// so the last one to go puts them back.
    pub fn forget_network(&mut self, network: &str) {
        let Some(record) = self.networks.remove(network) else {
            return;
        };
        for (path, original) in record.originals {
            if let Some(heir) = self
                .networks
                .values_mut()
                .find(|r| r.sysctls.contains(&path))
            {
                heir.originals.entry(path).or_insert(original);
            }
        }
    }
}

/// The last parse of the memory file, for one long-lived process (`run`): with a thousand
/// networks the file is megabytes of JSON, and parsing it was a tenth of a repair. Keyed by
/// the file's identity as the file system gives it: every writer (this process, a CLI
/// `apply`, a guard) replaces the file by renaming a new one over it, so its inode changes
/// with every write; its length and modification time are checked too.
#[derive(Debug, Default)]
pub struct MemoryCache(std::sync::Mutex<Option<(FileStamp, Memory)>>);

/// What identifies one version of a file: (path, device, inode, length, mtime in ns).
type FileStamp = (PathBuf, u64, u64, u64, i128);

impl MemoryCache {
    fn load(&self) -> Result<Memory, MemoryError> {
        let path = location()?;
        let stamp = match std::fs::metadata(&path) {
            Ok(m) => (
                path.clone(),
                m.dev(),
                m.ino(),
                m.len(),
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Memory::default()),
            Err(source) => {
                return Err(MemoryError {
                    what: "reading",
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        if let Ok(cached) = self.0.lock()
            && let Some((at, memory)) = cached.as_ref()
            && *at == stamp
        {
            return Ok(memory.clone());
        }
        let memory = Memory::load_all()?;
        if let Ok(mut cached) = self.0.lock() {
            *cached = Some((stamp, memory.clone()));
        }
        Ok(memory)
    }
}
