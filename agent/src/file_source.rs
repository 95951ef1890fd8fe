//! The desired networks of `run --file F`: the file, re-read when it changes.
//!
//! Polling (once a second, comparing content) rather than inotify: editors replace files by
//! rename, config management rewrites them in place, and a poll handles both without surprise.
//! A file that stops being valid changes nothing: the last valid content stays desired and the
//! error is logged with the field it names.

use std::path::PathBuf;
use std::time::Duration;

use mirrornet_api::file;
use tokio::sync::watch;
use tracing::{error, info};

use crate::reconciler::DesiredNetwork;

/// Loads `path` once (failing if it is invalid, so a bad start is loud), then keeps `desired`
/// up to date in the background.
pub fn watch_file(path: PathBuf) -> Result<watch::Receiver<Vec<DesiredNetwork>>, file::FileError> {
    let first = match file::load_path(&path) {
        Err(file::FileError::Empty { .. }) => Vec::new(),
        other => other?,
    };
    let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
    let (tx, rx) = watch::channel(to_desired(first));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if text == last_text {
                continue;
            }
            last_text = text.clone();
            match file::load_str(&path.display().to_string(), &text).or_else(|e| match e {
                // A file emptied on purpose means: no networks on this node.
                file::FileError::Empty { .. } => Ok(Vec::new()),
                e => Err(e),
            }) {
                Ok(networks) => {
                    info!(file = %path.display(), networks = networks.len(), "file changed, reloading");
                    let _ = tx.send(to_desired(networks));
                }
                Err(e) => {
                    error!(error = %e, "file changed but is invalid; keeping the previous networks")
                }
            }
        }
    });
    Ok(rx)
}

fn to_desired(networks: Vec<file::LoadedNetwork>) -> Vec<DesiredNetwork> {
    networks
        .into_iter()
        .map(|loaded| DesiredNetwork {
            loaded,
            allocation: None,
        })
        .collect()
}
