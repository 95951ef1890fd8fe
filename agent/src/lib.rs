//! mirrornet's node agent: turns MirrorNetworks into kernel state on one node.
//!
//! The modules follow the data's way through a change ([`session`] runs them in this order):
//!
//! ```text
//! spec ─> allocate ─> plan ─────────────┐
//!                                        ├─> diff ─> claims ─> apply ─> verify
//! kernel ─> observe ─> KernelView ──────┘    │                  │
//!                     memory (on disk) ──────┘   step: the vocabulary of a change
//! ```
//!
//! * [`observe`]: what the kernel holds ([`observe::KernelView`]) and the sysctls a diff reads.
//! * [`allocate`], [`plan`]: pure — spec + ids + node facts -> the kernel objects a network needs.
//! * [`diff`]: pure — view + plans -> [`step::Changes`], ordered by [`step::Phase`].
//! * [`claims`]: what other networks and the node hold, refused before any write.
//! * [`apply`]: runs the steps, undoes them in reverse on the first failure.
//! * [`memory`]: the little the kernel cannot remember for us (original sysctl values, specs).
//! * [`rollback`], [`verify`]: changes that undo themselves unless the node proves they work.
//! * [`netlink`], [`nft`] (its table: vocabulary, observed, transaction, the `nft` command,
//!   the nfnetlink reader), [`sysctl`]: typed windows onto the kernel.
//! * [`reconciler`]: the long-running loop that keeps networks converged and repairs drift.
//! * [`cluster`]: in-cluster mode — the MirrorNetworks selecting this node in, this node's
//!   status entries and Events out.
//! * [`show`], [`trace`], [`translate`]: what the node holds, explained.
//! * [`lab`], [`demo`]: network-namespace topologies and traffic probes for the demo and tests.

pub mod allocate;
pub mod apply;
pub mod claims;
pub mod cluster;
pub mod demo;
pub mod diff;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod file_source;
pub mod lab;
pub mod lock;
pub mod memory;
pub mod neighbours;
pub mod netlink;
pub mod nft;
pub mod observe;
pub mod plan;
pub mod reconciler;
pub mod rollback;
pub mod session;
pub mod show;
pub mod step;
pub mod sysctl;
pub mod trace;
pub mod translate;
pub mod verify;

pub use error::{AgentError, Result};
