//! The `nft` command: the one writer of our table (a JSON batch is one atomic transaction) and
//! the one reader that can restore it (`nft -j list`), used for a rollback only: observing
//! reads the table over nfnetlink ([`crate::nft::nfnetlink`]).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{TABLE, batch};
use crate::error::{AgentError, Result};

/// Lists mirrornet's table; `None` when it does not exist.
pub fn list() -> Result<Option<Value>> {
    list_text()?.map(|text| parse(&text)).transpose()
}

pub fn parse(text: &[u8]) -> Result<Value> {
    serde_json::from_slice(text).map_err(|e| AgentError::Nft {
        what: "parsing nft -j output".into(),
        detail: e.to_string(),
    })
}

/// `nft -j list table inet mirrornet` as printed; `None` when the table does not exist.
pub fn list_text() -> Result<Option<Vec<u8>>> {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .output()
        .map_err(|e| AgentError::Nft {
            what: "running nft (install the nftables package)".into(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(AgentError::Nft {
            what: format!("listing table inet {}", TABLE),
            detail: stderr.trim().to_owned(),
        });
    }
    Ok(Some(output.stdout))
}

/// Runs one nft JSON batch as a single transaction.
pub fn apply(batch: &Value) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::Nft {
            what: "running nft (install the nftables package)".into(),
            detail: e.to_string(),
        })?;
    let text = batch.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| AgentError::Nft {
                what: "writing the transaction to nft".into(),
                detail: e.to_string(),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| AgentError::Nft {
        what: "waiting for nft".into(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(AgentError::Nft {
            what: "applying the transaction".into(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Puts the table back exactly as listed before (or removes it if it did not exist).
pub fn restore(listing: Option<&Value>) -> Result<()> {
    let mut commands = Vec::new();
    if list()?.is_some() {
        commands.push(serde_json::json!({"delete": {"table": {"family": "inet", "name": TABLE}}}));
    }
    if let Some(listing) = listing {
        // Listed order puts maps (whose elements jump to chains) before the chains: re-add
        // containers first, then what refers to them.
        let rank = |kind: &str| match kind {
            "table" => 0,
            "chain" => 1,
            "map" | "set" | "counter" => 2,
            _ => 3,
        };
        let mut items: Vec<(&String, &Value)> = listing
            .get("nftables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_object().and_then(|o| o.iter().next()))
            .filter(|(kind, _)| kind.as_str() != "metainfo")
            .collect();
        items.sort_by_key(|(kind, _)| rank(kind));
        for (kind, body) in items {
            let mut body = body.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("handle");
            }
            commands.push(serde_json::json!({"add": {kind.as_str(): body}}));
        }
    }
    if commands.is_empty() {
        return Ok(());
    }
    apply(&batch(&commands))
}
