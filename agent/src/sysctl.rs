//! Reading and writing the networking sysctls a network needs. What they held before is
//! remembered in [`crate::state`], so that deleting the network puts them back.

use std::io;
use std::path::PathBuf;

/// Failure writing a sysctl.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SysctlError {
    pub what: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

fn proc_path(path: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(path)
}

/// Current value, trimmed; `None` when the sysctl does not exist (interface absent, or a
/// kernel without it).
pub fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(proc_path(path))
        .ok()
        .map(|s| s.trim().to_owned())
}

pub fn write(path: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(proc_path(path), value).map_err(|source| SysctlError {
        what: "writing",
        path: path.into(),
        source,
    })
}
