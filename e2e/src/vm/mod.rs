//! Boots Debian's stock kernel under qemu to test what the build machines' kernel cannot (VRF).
//!
//! ```text
//! VmSpec{name, script, nics} ──boot──▶ qemu -accel tcg (kernel + initramfs + host root over 9p)
//!                                          │ serial console: text and `MNVM {json}` lines
//! VmOutcome{lines, console} ◀──wait────────┘
//! ```
//!
//! * [`kernel`]: `apt-get download` + `dpkg-deb -x` of the kernel `linux-image-amd64` names, and
//!   of busybox-static, cached under the cargo target dir.
//! * `modules` + `initramfs` + `cpio`: a busybox initramfs with the needed modules and `/init`,
//!   which mounts the host's root read-only over 9p and runs the script chrooted into it, so the
//!   guest runs the host's `ip`, `nft` and test binaries at the host's paths.
//! * `qemu`: the command line and the console stream; `boot` + `running`: wires, ports,
//!   timeouts, [`Cluster`]s; [`console`]: the line protocol.
//!
//! A test writes its guest script in bash with the functions of `guest-lib.sh`:
//!
//! ```no_run
//! use mirrornet_e2e::vm::VmSpec;
//! let outcome = VmSpec::new("vrf", "mnvm_check vrf ip link add vrf-test type vrf table 10\n")
//!     .boot()?
//!     .wait()?;
//! outcome.ensure_passed(&["vrf"])?;
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
