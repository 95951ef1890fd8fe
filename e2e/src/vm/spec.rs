//! What a test asks for: a VM with a script and NICs, each NIC on a named point-to-point wire.

use std::collections::BTreeSet;
use std::time::Duration;

use super::VmError;

/// One guest to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The guest's hostname and how errors name it: lowercase letters, digits and `-`.
    pub name: String,
    /// A bash script run as root in the guest, chrooted into the host's root (read-only; `/run`
    /// is a fresh tmpfs and `$TMPDIR` the scratch space inside it), after `guest-lib.sh` has defined `mnvm_check`, `mnvm_value`
    /// and `mnvm_until`. Its exit code is the guest's.
    pub script: String,
    /// Virtio NICs in PCI order.
    pub nics: Vec<NicLink>,
    /// Variables exported to the script, e.g. the path of a host binary to run (the host's
    /// files are at the same paths in the guest, except under `/run`).
    pub env: Vec<(String, String)>,
    pub memory_mb: u32,
    /// From qemu's start to its exit; a guest still running then is killed and the test fails.
    pub timeout: Duration,
}

/// A NIC plugged into `wire`; the NIC of another VM (or of the same one) on the same wire is
/// its only peer. Inside the guest the NIC is named `guest_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicLink {
    pub wire: String,
    pub guest_name: String,
}

impl VmSpec {
    /// 512 MiB and two minutes: a boot takes a few seconds under TCG, more while other builds
    /// share the two cores.
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            nics: Vec::new(),
            env: Vec::new(),
            memory_mb: 512,
            timeout: Duration::from_secs(120),
        }
    }

    pub fn nic(mut self, wire: impl Into<String>, guest_name: impl Into<String>) -> Self {
        self.nics.push(NicLink {
            wire: wire.into(),
            guest_name: guest_name.into(),
        });
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn memory_mb(mut self, memory_mb: u32) -> Self {
        self.memory_mb = memory_mb;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), VmError> {
        let invalid = |reason: String| VmError::InvalidSpec {
            vm: self.name.clone(),
            reason,
        };
        let hostname_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && !self.name.starts_with('-')
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !hostname_ok {
            return Err(invalid(
                "the name must be 1-32 lowercase letters, digits or '-' (it is the hostname)"
                    .into(),
            ));
        }
        if self.memory_mb < 128 {
            return Err(invalid(format!(
                "{} MiB is too little for the stock kernel",
                self.memory_mb
            )));
        }
        if self.nics.len() > 16 {
            return Err(invalid("at most 16 NICs".into()));
        }
        for (name, _) in &self.env {
            let mut bytes = name.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid(format!("{name:?} is not a shell variable name")));
            }
        }
        let mut names = BTreeSet::new();
        for nic in &self.nics {
            let ifname_ok = !nic.guest_name.is_empty()
                && nic.guest_name.len() <= 15
                && nic
                    .guest_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ifname_ok {
                return Err(invalid(format!(
                    "NIC name {:?} is not a Linux interface name (1-15 of [A-Za-z0-9_.-])",
                    nic.guest_name
                )));
            }
            if !names.insert(&nic.guest_name) {
                return Err(invalid(format!("two NICs are named {}", nic.guest_name)));
            }
            if nic.wire.is_empty() {
                return Err(invalid(format!("NIC {} has no wire", nic.guest_name)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_break_the_guest_are_rejected() {
        assert!(
            VmSpec::new("middleman-1", "")
                .nic("a", "eth1")
                .validate()
                .is_ok()
        );
        assert!(VmSpec::new("Middleman", "").validate().is_err());
        assert!(VmSpec::new("", "").validate().is_err());
        assert!(
            VmSpec::new("m", "")
                .nic("a", "a-very-long-ifname")
                .validate()
                .is_err()
        );
        assert!(VmSpec::new("m", "").nic("a", "eth 1").validate().is_err());
        assert!(
            VmSpec::new("m", "")
                .nic("a", "eth1")
                .nic("b", "eth1")
                .validate()
                .is_err()
        );
        assert!(VmSpec::new("m", "").memory_mb(64).validate().is_err());
        assert!(VmSpec::new("m", "").env("AGENT", "/x y").validate().is_ok());
        assert!(VmSpec::new("m", "").env("1X", "").validate().is_err());
        assert!(VmSpec::new("m", "").env("A-B", "").validate().is_err());
    }
}
