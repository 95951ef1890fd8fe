//! Boots Debian's stock kernel under qemu to test what the build machines' kernel cannot (VRF).
//!
//! ```text
//! VmSpec{name, script, nics, env} ──boot──▶ qemu -accel tcg -kernel vmlinux -initrd base+overlay
//!                                               │  host root read-only over virtio-9p
//!                                               │  serial out: text and `MNVM {json}` lines
//!                                               │  serial in: barrier releases (`go NAME`)
//! VmOutcome{lines, console, duration} ◀──wait───┘
//! ```
//!
//! * [`kernel`]: `apt-get download` + `dpkg-deb -x` of the kernel `linux-image-amd64` names and
//!   of busybox-static, cached in `<cargo target dir>/vm-cache/`; the kernel's ELF image is
//!   unpacked from the bzImage once, because qemu boots it faster (PVH).
//! * `modules` + `initramfs` + `cpio`: a busybox initramfs with [`GUEST_MODULES`] (and their
//!   dependencies) and `/init`, plus a small per-VM archive (script, env, NIC names).
//! * `qemu`: the command line (TCG, one vCPU, loopback-UDP NICs with MACs
//!   `52:54:00:4d:<vm>:<nic>`) and the console stream; `boot` + `running`: wires, ports,
//!   timeouts, barriers, [`Cluster`]s; [`console`]: the line protocol; [`VmOutcome`]: judging it.
//!
//! The guest: `/init` loads the modules, names the NICs as the spec says, mounts the host's `/`
//! read-only over 9p with fresh `/proc`, `/sys`, `/dev` and `/run` (scratch space: `$TMPDIR` under it), and runs the
//! script with bash as root, chrooted there. So the host's `ip`, `nft`, `conntrack`, `ping`, and
//! this workspace's binaries (the agent under the target dir) run in the guest at the host's
//! paths; only files the host keeps under `/run` are out of sight. The script has the
//! spec's `env` exported and these functions (`guest-lib.sh`):
//!
//! * `mnvm_check NAME CMD...`: runs CMD; its output and ok/exit become [`Check`] `NAME`;
//! * `mnvm_value NAME VALUE`: a value for the test ([`VmOutcome::value`]);
//! * `mnvm_until SECONDS CMD...`: retries CMD until it succeeds or the deadline passes;
//! * `mnvm_barrier NAME`: waits until every guest of the cluster reaches NAME.
//!
//! When the script ends, the guest reports its exit code, waits until every guest of its
//! cluster has ended too (so no peer disappears mid-test), and powers off.
//!
//! ```no_run
//! use mirrornet_e2e::vm::{Cluster, VmSpec};
//! let outcome = VmSpec::new("vrf", "mnvm_check vrf ip link add vrf-test type vrf table 10\n")
//!     .boot()?
//!     .wait()?;
//! outcome.ensure_passed(&["vrf"])?;
//!
//! let ping = "ip addr add $ME/24 dev eth1; ip link set eth1 up\n\
//!             mnvm_check ping mnvm_until 30 ping -c 1 -W 1 $PEER\n";
//! let outcomes = Cluster::boot([
//!     VmSpec::new("a", ping).nic("ab", "eth1").env("ME", "192.0.2.1").env("PEER", "192.0.2.2"),
//!     VmSpec::new("b", ping).nic("ab", "eth1").env("ME", "192.0.2.2").env("PEER", "192.0.2.1"),
//! ])?
//! .wait()?;
//! for outcome in &outcomes {
//!     outcome.ensure_passed(&["ping"])?;
//! }
//! # Ok::<(), mirrornet_e2e::vm::VmError>(())
//! ```

mod boot;
pub mod console;
mod cpio;
mod error;
mod initramfs;
pub mod kernel;
mod modules;
mod outcome;
mod qemu;
mod running;
mod spec;

pub use console::{Check, GuestEvent, GuestLine};
pub use error::VmError;
pub use kernel::Kernel;
pub use modules::GUEST_MODULES;
pub use outcome::VmOutcome;
pub use running::{Cluster, RunningVm};
pub use spec::{NicLink, VmSpec};
