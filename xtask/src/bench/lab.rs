//! The bench's labs: the agent's network-namespace [`Lab`] under names of its own, so that
//! what a killed run left behind is recognised and removed at the start of the next one.
//! Every address the bench uses lives in them; nothing is configured in the namespace the
//! bench runs in.

use std::process::Command;

pub use mirrornet_agent::lab::Lab;
use mirrornet_agent::lab::remove_namespace;

/// Prefix of every namespace the bench creates.
pub const PREFIX: &str = "mnb";

/// An empty lab named `mnb-<pid>-<tag>`.
pub fn new(tag: &str) -> Lab {
    Lab::named(format!("{PREFIX}-{}-{tag}", std::process::id()))
}

/// Removes namespaces left behind by bench runs whose process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing stale namespace {name}");
        remove_namespace(name);
    }
}
