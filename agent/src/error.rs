//! The agent's errors, all in one place: [`AgentError`], every way observing, planning or
//! applying can fail, and the few narrower errors of the kernel windows it wraps (netlink,
//! sysctls, the memory file, planning). Each names the network, field or kernel object
//! concerned, so that a refused spec or a failed change says what to fix. Nothing here depends
//! on the rest of the crate, so every module may use it.

use std::io;

use mirrornet_api::BackendKind;

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("network {network}: allocation has no ids for side {side:?}")]
    MissingIds { network: String, side: String },
    #[error("network {network}: backend {backend} is not available on this node: {why}")]
    BackendUnavailable {
        network: String,
        backend: BackendKind,
        why: String,
    },
}

/// A failed netlink call, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: rtnetlink::Error,
}

/// Failure writing a sysctl.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SysctlError {
    pub what: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// Failure reading or writing the state file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct MemoryError {
    pub what: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// Why the agent could not do what was asked. Every variant names the network, field or kernel
/// object concerned.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("nft: {what}: {detail}")]
    Nft { what: String, detail: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("network {network}: allocating kernel ids: {reason}")]
    Allocation { network: String, reason: String },
    #[error("network {network}: {field}: interface {interface:?} does not exist on this node")]
    InterfaceMissing {
        network: String,
        field: String,
        interface: String,
    },
    #[error(
        "network {network}: interface {interface} already holds {address}, added by someone else; \
         mirrornet will not take over an address it did not create"
    )]
    AddressTaken {
        network: String,
        interface: String,
        address: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} is down; mirrornet does not change \
         link state, bring it up and the network is programmed"
    )]
    InterfaceDown {
        network: String,
        field: String,
        interface: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} is enslaved to {controller:?}, \
         which mirrornet did not create; it will not take the interface from it"
    )]
    InterfaceEnslaved {
        network: String,
        field: String,
        interface: String,
        controller: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} {why}; the node itself uses it, and \
         taking it over could cut the node off. Set takeOverNodeInterface: true on the side to \
         allow it"
    )]
    NodeInterface {
        network: String,
        field: String,
        interface: String,
        why: String,
    },
    #[error(
        "network {network}: {field}: interface {interface:?} carries the node's default route; \
         enslaving it to a VRF device would take that route out of the main table and cut the \
         node off, and releasing it does not bring the route back. takeOverNodeInterface cannot \
         allow this: use backend PolicyRouting for this network, or move the node's default \
         route to another interface"
    )]
    VrfTakesNodeRoute {
        network: String,
        field: String,
        interface: String,
    },
    #[error(
        "network {network}: its ids are under mark mask {mask:#010x}, but network {other} on \
         this node holds ids under {other_mask:#010x}; marks under two masks can match each \
         other's rules, so a node holds one mask. Apply every network with the same mark mask \
         (--mark-mask, or the operator's) in one change, or delete {other} first"
    )]
    MarkMaskMixed {
        network: String,
        mask: u32,
        other: String,
        other_mask: u32,
    },
    #[error("network {network}: interface {interface} is already used by network {other}")]
    InterfaceShared {
        network: String,
        interface: String,
        other: String,
    },
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("{failed}; rolled back the {undone} change(s) made before it")]
    RolledBack {
        failed: Box<AgentError>,
        undone: usize,
    },
    #[error("{failed}; rolling back also failed: {rollback}")]
    RollbackFailed {
        failed: Box<AgentError>,
        rollback: Box<AgentError>,
    },
    #[error("verification failed: {failed}; {outcome}")]
    VerificationFailed {
        /// The failing check and why.
        failed: String,
        /// What happened to the change: rolled back, or why it could not be.
        outcome: String,
        rolled_back: bool,
        /// The networks whose change was rejected (rolled back, or not, per `rolled_back`).
        networks: Vec<String>,
    },
    #[error("arming the rollback: {0}; nothing was changed")]
    Arming(String),
    #[error("injected fault at step {step} (MIRRORNET_FAULT_AT_STEP)")]
    InjectedFault { step: usize },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
