//! Turns specs into running qemu processes: wires to ports, MACs, per-VM initramfs, spawn.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::initramfs::{self, Overlay};
use super::kernel::{self, Kernel};
use super::qemu::{self, Launch, NicPorts, Process};
use super::running::RunningVm;
use super::{VmError, VmSpec};

/// Boots every spec; NICs that share a wire are joined. A wire must have exactly two ends.
pub(crate) fn boot_all(specs: Vec<VmSpec>) -> Result<Vec<RunningVm>, VmError> {
    require_root()?;
    for spec in &specs {
        spec.validate()?;
    }
    if specs.len() > 255 {
        return Err(VmError::InvalidSpec {
            vm: specs[255].name.clone(),
            reason: "at most 255 VMs at once (one MAC byte each)".into(),
        });
    }
    let nics = wire_up(&specs)?;
    let (kernel, base) = image()?;
    let runs = kernel::cache_dir()?.join("runs");
    remove_stale_runs(&runs);
    let mut running = Vec::with_capacity(specs.len());
    for (spec, nics) in specs.into_iter().zip(nics) {
        let run_dir = RunDir::create(&runs, &spec.name)?;
        let overlay = Overlay {
            name: &spec.name,
            script: &spec.script,
            env: &spec.env,
            nics: spec
                .nics
                .iter()
                .zip(&nics)
                .map(|(link, ports)| (ports.mac.clone(), link.guest_name.as_str()))
                .collect(),
        };
        let initrd = run_dir.0.join("initrd.cpio");
        fs::write(&initrd, [base.as_slice(), &overlay.archive()].concat()).map_err(|source| {
            VmError::Io {
                path: initrd.clone(),
                source,
            }
        })?;
        let process = Process::spawn(&Launch {
            kernel: &kernel.image,
            initrd: &initrd,
            memory_mb: spec.memory_mb,
            nics,
        })?;
        running.push(RunningVm::new(spec.name, spec.timeout, process, run_dir));
    }
    Ok(running)
}

/// The kernel and base initramfs, made once per test process and shared by all its VMs.
fn image() -> Result<(Kernel, Arc<Vec<u8>>), VmError> {
    static IMAGE: Mutex<Option<(Kernel, Arc<Vec<u8>>)>> = Mutex::new(None);
    let mut memo = IMAGE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(image) = &*memo {
        return Ok(image.clone());
    }
    let kernel = Kernel::stock()?;
    let base = Arc::new(initramfs::base(&kernel, &kernel::busybox()?)?);
    *memo = Some((kernel.clone(), base.clone()));
    Ok((kernel, base))
}

/// Ports and MACs for every NIC of every VM, in spec order. MACs are `52:54:00:4d:VM:NIC`
/// (qemu's prefix, then "M"), so they are the same on every run and say which VM a frame is from.
fn wire_up(specs: &[VmSpec]) -> Result<Vec<Vec<NicPorts>>, VmError> {
    let mut ends: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (vm, spec) in specs.iter().enumerate() {
        for (nic, link) in spec.nics.iter().enumerate() {
            ends.entry(&link.wire).or_default().push((vm, nic));
        }
    }
    if let Some((wire, at)) = ends.iter().find(|(_, at)| at.len() != 2) {
        return Err(VmError::InvalidSpec {
            vm: specs[at[0].0].name.clone(),
            reason: format!(
                "wire {wire} has {} ends; a wire joins exactly two NICs",
                at.len()
            ),
        });
    }
    let total = ends.values().map(Vec::len).sum();
    let mut ports = qemu::free_udp_ports(total)?.into_iter();
    let mut own: BTreeMap<(usize, usize), u16> = BTreeMap::new();
    for at in ends.values().flatten() {
        own.insert(*at, ports.next().expect("one port per NIC"));
    }
    let peer_of = |at: (usize, usize), wire: &str| -> u16 {
        let other = ends[wire].iter().find(|end| **end != at).expect("two ends");
        own[other]
    };
    Ok(specs
        .iter()
        .enumerate()
        .map(|(vm, spec)| {
            spec.nics
                .iter()
                .enumerate()
                .map(|(nic, link)| NicPorts {
                    mac: format!("52:54:00:4d:{vm:02x}:{nic:02x}"),
                    own_port: own[&(vm, nic)],
                    peer_port: peer_of((vm, nic), &link.wire),
                })
                .collect()
        })
        .collect())
}

fn require_root() -> Result<(), VmError> {
    // /proc/self belongs to the process's effective user.
    let uid = fs::metadata("/proc/self")
        .map_err(|source| VmError::Io {
            path: "/proc/self".into(),
            source,
        })?
        .uid();
    if uid == 0 {
        Ok(())
    } else {
        Err(VmError::NotRoot)
    }
}

/// A VM's own files (its initramfs), removed when the VM is dropped.
#[derive(Debug)]
pub(crate) struct RunDir(PathBuf);

impl RunDir {
    fn create(runs: &std::path::Path, vm: &str) -> Result<Self, VmError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = runs.join(format!("{vm}-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|source| VmError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Run directories of test processes that were killed before they could clean up (each holds
/// an initramfs of several MB).
fn remove_stale_runs(runs: &std::path::Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .rsplit('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_ends_of_a_wire_send_to_each_other() {
        let specs = vec![
            VmSpec::new("a", "").nic("ab", "eth1").nic("ac", "eth2"),
            VmSpec::new("b", "").nic("ab", "eth1"),
            VmSpec::new("c", "").nic("ac", "eth0"),
        ];
        let nics = wire_up(&specs).unwrap();
        assert_eq!(nics[0][0].peer_port, nics[1][0].own_port);
        assert_eq!(nics[1][0].peer_port, nics[0][0].own_port);
        assert_eq!(nics[0][1].peer_port, nics[2][0].own_port);
        assert_eq!(nics[0][1].mac, "52:54:00:4d:00:01");
        assert_eq!(nics[2][0].mac, "52:54:00:4d:02:00");
    }

    #[test]
    fn a_wire_with_one_end_is_rejected() {
        let specs = vec![VmSpec::new("a", "").nic("dangling", "eth1")];
        let error = wire_up(&specs).unwrap_err().to_string();
        assert!(error.contains("wire dangling has 1 ends"), "{error}");
    }
}
