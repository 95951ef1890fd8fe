//! Assembles a guest's initramfs: a base archive shared by every VM, plus a small one per VM.
//!
//! The base holds static busybox, the kernel modules from [`GUEST_MODULES`] in load order, and
//! `/init` (`init.sh`). It holds no iproute2 or nftables: `/init` mounts the host's root read-only
//! over virtio-9p and runs the script chrooted there, so the guest runs the host's own `ip`,
//! `nft`, `conntrack` and test binaries, at the same paths. The per-VM archive, appended to
//! the base (the kernel unpacks concatenated archives in order), carries the script, the VM's name
//! and how to name its NICs.

use std::fs;
use std::path::Path;

use super::VmError;
use super::cpio::Archive;
use super::kernel::Kernel;
use super::modules::{GUEST_MODULES, resolve};

const INIT: &str = include_str!("init.sh");
const GUEST_LIB: &str = include_str!("guest-lib.sh");

/// The archive every VM of one kernel shares.
pub(crate) fn base(kernel: &Kernel, busybox: &Path) -> Result<Vec<u8>, VmError> {
    let busybox = fs::read(busybox).map_err(|source| VmError::Io {
        path: busybox.into(),
        source,
    })?;
    let modules = resolve(&kernel.modules, GUEST_MODULES)?;
    let mut archive = Archive::new();
    for dir in [
        "/bin",
        "/dev",
        "/proc",
        "/sys",
        "/host",
        "/lib",
        "/lib/modules",
        "/mnvm",
    ] {
        archive.dir(dir);
    }
    archive
        .char_device("/dev/console", 5, 1)
        .file("/bin/busybox", 0o755, &busybox)
        .file("/init", 0o755, INIT.as_bytes())
        .file("/mnvm/lib.sh", 0o644, GUEST_LIB.as_bytes());
    let mut order = String::new();
    for module in &modules {
        archive.file(
            &format!("/lib/modules/{}.ko", module.name),
            0o644,
            &module.object,
        );
        order.push_str(&module.name);
        order.push('\n');
    }
    archive.file("/mnvm/modules", 0o644, order.as_bytes());
    Ok(archive.finish())
}

/// What one VM adds to the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlay<'a> {
    pub name: &'a str,
    pub script: &'a str,
    /// `(mac, guest interface name)` in NIC order.
    pub nics: Vec<(String, &'a str)>,
    /// Variables the script sees, names already validated.
    pub env: &'a [(String, String)],
}

impl Overlay<'_> {
    pub(crate) fn archive(&self) -> Vec<u8> {
        let nics: String = self
            .nics
            .iter()
            .map(|(mac, name)| format!("{mac} {name}\n"))
            .collect();
        let env: String = self
            .env
            .iter()
            .map(|(name, value)| format!("export {name}={}\n", shell_quoted(value)))
            .collect();
        let mut archive = Archive::new();
        archive
            .dir("/mnvm")
            .file("/mnvm/env", 0o644, env.as_bytes())
            .file("/mnvm/name", 0o644, self.name.as_bytes())
            .file("/mnvm/nics", 0o644, nics.as_bytes())
            .file("/mnvm/script", 0o644, self.script.as_bytes());
        archive.finish()
    }
}

/// Single quotes keep every byte literal; a single quote itself closes, escapes and reopens.
fn shell_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_lists_nics_one_per_line() {
        let overlay = Overlay {
            name: "middleman",
            script: "true\n",
            env: &[("AGENT".into(), "/target/it's".into())],
            nics: vec![
                ("52:54:00:4d:00:00".into(), "eth1"),
                ("52:54:00:4d:00:01".into(), "eth2"),
            ],
        };
        let text = String::from_utf8_lossy(&overlay.archive()).into_owned();
        assert!(text.contains("52:54:00:4d:00:00 eth1\n52:54:00:4d:00:01 eth2\n"));
        assert!(text.contains("mnvm/script"));
        assert!(text.contains(r"export AGENT='/target/it'\''s'"));
    }
}
