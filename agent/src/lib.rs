//! mirrornet's node agent: turns MirrorNetworks into kernel state on one node.
//!
//! * [`plan`]: pure — spec + ids + node facts -> the kernel objects a network needs.
//! * [`netlink`], [`nft`], [`sysctl`]: typed windows onto the kernel, each reading back exactly
//!   what it writes.
//! * [`engine`]: observe, diff, apply in a safe order, roll back on failure.
//! * [`reconciler`]: the long-running loop that keeps networks converged and repairs drift.
//! * [`cluster`]: in-cluster mode — the MirrorNetworks selecting this node in, this node's
//!   status entries and Events out.
//! * [`state`]: the little the kernel cannot remember for us (original sysctl values).
//! * [`lab`]: network-namespace topologies and traffic probes for the demo and the tests.

pub mod cluster;
pub mod demo;
pub mod endpoints;
pub mod engine;
pub mod file_source;
pub mod lab;
pub mod netlink;
pub mod nfnetlink;
pub mod nft;
pub mod plan;
pub mod reconciler;
pub mod rollback;
pub mod memory;
pub mod sysctl;
pub mod trace;
pub mod translate;
pub mod verify;
