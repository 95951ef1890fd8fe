//! System packages the commands need, installed idempotently with apt-get.
//!
//! Checking with `dpkg-query` first keeps a second run fast and offline.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Debian packages every test run needs: the kernel tests drive `ip`, `nft`, `conntrack`,
/// `ping` and `sysctl` inside network namespaces. The VM tests boot Debian's stock kernel (it
/// has VRF) under qemu; the kernel and busybox-static are fetched by the tests themselves with
/// `apt-get download`, not installed. xz-utils decompresses the kernel's `.ko.xz` modules.
/// python3-venv makes the `.venv` the chart tests run Helm's SDK in. The cluster tests make
/// their certificates with openssl and drop a pod's capabilities with util-linux's setpriv.
/// The images are built with debootstrap and umoci; the real node runs them with Debian's
/// runc and CNI plugins (its kubelet and containerd are built from Go modules).
pub const TEST: &[&str] = &[
    "debootstrap",
    "umoci",
    "runc",
    "containernetworking-plugins",
    "openssl",
    "util-linux",
    "iproute2",
    "nftables",
    "conntrack",
    "iputils-ping",
    "procps",
    "kmod",
    "qemu-system-x86",
    "xz-utils",
    "python3-venv",
];

/// What `cargo xtask images` needs: debootstrap makes the agent's Debian root filesystem, umoci
/// turns root filesystems and binaries into OCI image layers and configs.
pub const IMAGES: &[&str] = &["debootstrap", "umoci", "tar"];

/// What the demo needs: the namespace tools, and tcpdump to show each host's view.
pub const DEMO: &[&str] = &[
    "iproute2",
    "nftables",
    "conntrack",
    "iputils-ping",
    "procps",
    "tcpdump",
];

/// What `cargo xtask bench` needs: the namespace tools, iperf3 for throughput and packet
/// rates, and iptables for the hand-built recipe it compares against. The plots are drawn
/// with matplotlib from PyPI in the project's `.venv`.
pub const BENCH: &[&str] = &[
    "iproute2",
    "nftables",
    "iputils-ping",
    "procps",
    "iperf3",
    "iptables",
];

/// Installs whichever of `packages` are missing.
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("apt-get is needed to install the test prerequisites (Debian or Ubuntu)")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Fails loudly instead of letting kernel tests skip.
pub fn require_root(why: &str) -> Result<()> {
    let uid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("run this as root: {why}");
    }
    Ok(())
}
