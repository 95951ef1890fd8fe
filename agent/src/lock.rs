//! The node lock: one writer at a time per network namespace, across processes (agents, the
//! rollback guard, CLI commands). A `flock` on a file next to the memory, so the kernel
//! releases it when its holder dies, which is what wakes a guard.

use std::io;

use crate::error::MemoryError;
use crate::memory::sibling;

/// Exclusive right to change this network namespace's datapath: held by an agent for a whole
/// pass (observe, converge, verify, revert) and by a guard while it reverts. The kernel
/// releases it when its holder dies, which is what wakes a guard.
#[derive(Debug)]
pub struct NodeLock {
    _file: std::fs::File,
}

impl NodeLock {
    /// Waits for the lock.
    pub async fn acquire() -> Result<Self, MemoryError> {
        let path = sibling("lock")?;
        let shown = path.display().to_string();
        let err = move |what, source| MemoryError {
            what,
            path: shown.clone(),
            source,
        };
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err("creating", e))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| err("opening", e))?;
            file.lock().map_err(|e| err("locking", e))?;
            Ok(Self { _file: file })
        })
        .await
        .unwrap_or_else(|e| {
            Err(MemoryError {
                what: "locking",
                path: "the node lock".into(),
                source: io::Error::other(e),
            })
        })
    }
}
