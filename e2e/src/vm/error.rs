//! Why a VM test could not run, or what went wrong in the guest.
//!
//! Every message names what to fix (a package to install, a VM whose console to read), and the
//! guest failures carry the console's tail, since that is where the cause is.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "VM tests must run as root (qemu's 9p export of the host root has to read every file); \
         they fail rather than skip"
    )]
    NotRoot,

    #[error(
        "`{tool}` is missing: install the Debian package `{package}` \
         (`cargo xtask prerequisites` installs everything the tests need)"
    )]
    ToolMissing { tool: String, package: String },

    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error(
        "cannot find cargo's target directory above {} (no CACHEDIR.TAG); \
         set CARGO_TARGET_DIR or MIRRORNET_VM_CACHE",
        exe.display()
    )]
    NoCacheDir { exe: PathBuf },

    #[error("Debian package {package}: {detail}")]
    Package { package: String, detail: String },

    #[error("kernel module {module} is neither built into the kernel nor shipped in {}", dir.display())]
    ModuleMissing { module: String, dir: PathBuf },

    #[error("VM spec {vm}: {reason}")]
    InvalidSpec { vm: String, reason: String },

    #[error(
        "VM {vm} did not power off within {after:?} and was killed; console tail:\n{console_tail}"
    )]
    Timeout {
        vm: String,
        after: Duration,
        console_tail: String,
    },

    #[error(
        "VM {vm} stopped before its script finished (qemu {status}); qemu stderr: {stderr}\nconsole tail:\n{console_tail}"
    )]
    Died {
        vm: String,
        status: String,
        stderr: String,
        console_tail: String,
    },

    #[error(
        "the cluster's guests wait at different barriers and none can go on: {at} \
         (every guest must pass the same barriers in the same order)"
    )]
    Deadlock { at: String },

    #[error("VM {vm} failed:\n{}\nconsole tail:\n{console_tail}", failures.join("\n"))]
    GuestFailed {
        vm: String,
        failures: Vec<String>,
        console_tail: String,
    },
}

impl VmError {
    /// A failure to start a host tool: "not found" becomes the Debian package to install.
    pub(crate) fn tool(program: &str, error: io::Error) -> Self {
        if error.kind() != io::ErrorKind::NotFound {
            return Self::Io {
                path: program.into(),
                source: error,
            };
        }
        let package = match program {
            "qemu-system-x86_64" => "qemu-system-x86",
            "apt-get" | "apt-cache" => "apt",
            "dpkg-deb" => "dpkg",
            "xz" => "xz-utils",
            other => other,
        };
        Self::ToolMissing {
            tool: program.into(),
            package: package.into(),
        }
    }
}
