//! The mirrornet operator: validates MirrorNetworks, allocates their kernel ids, keeps the
//! agent DaemonSet where networks need it, summarises what the agents report, and holds a
//! deleted network until its nodes are clean.
//!
//! ```text
//! watch caches (networks, nodes, DaemonSet)
//!        │
//!        ▼
//! reconcile (reconcile.rs) ── decision.rs: validate, conflict.rs, allocate, summary.rs
//!        │                    deletion.rs: which nodes a deletion still waits for
//!        │                    daemonset.rs: the DaemonSet the networks need
//!        ▼
//! status (SSA, field manager "mirrornet-operator"), DaemonSet (SSA), Events
//! ```
//! Pure modules take no client and carry the table tests; `reconcile` is tested against a
//! mocked API server that checks every request.

pub mod config;
pub mod conflict;
pub mod daemonset;
pub mod decision;
pub mod deletion;
pub mod endpoints;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod run;
pub mod selection;
pub mod summary;

pub use error::{Error, Result};

/// Field manager of everything the operator writes by server-side apply.
pub const MANAGER: &str = "mirrornet-operator";
