//! Show: the networks mirrornet holds on this node, whether each still matches its spec (the
//! steps `apply` would make), its ids, its traffic and its connections. Reads only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, MirrorNetwork};
use serde::Serialize;

use crate::allocate::BackendChoice;
use crate::error::Result;
use crate::memory::Memory;
use crate::nft::Traffic;
use crate::session::Session;

/// One network in `show`.
#[derive(Debug, Serialize)]
pub struct ShownNetwork {
    pub name: String,
    pub backend: String,
    /// `in sync`, or what differs.
    pub summary: String,
    pub in_sync: Option<bool>,
    /// `spec.suspend`: the node keeps only the ids, shown below.
    pub suspended: bool,
    pub allocation: Allocation,
    pub pending: Vec<String>,
    /// Packets and bytes per direction since the network was programmed.
    pub traffic: Vec<Traffic>,
    /// Conntrack entries per side's zone (connections that side opened), where the
    /// `conntrack` tool is installed.
    pub connections: BTreeMap<String, usize>,
    /// On-link alias addresses a host on their side uses, which the node leaves to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<crate::plan::TakenAlias>,
}

/// Every network the node holds, compared with its spec in `specs`, or else with the spec
/// last applied.
pub fn show(session: &Session<'_>, specs: &[LoadedNetwork]) -> Result<Vec<ShownNetwork>> {
    let (view, memory) = (&session.view, &session.memory);
    let names: BTreeSet<String> = session.held_networks();
    let mut out = Vec::new();
    for name in names {
        let allocation = view.recorded_allocation(&name).unwrap_or(Allocation {
            mark_mask: 0,
            sides: Vec::new(),
        });
        let spec = specs
            .iter()
            .find(|n| n.name() == name)
            .map(|n| n.object.spec.clone())
            .or_else(|| memory.network(&name).and_then(|r| r.spec.clone()));
        let suspended = spec.as_ref().is_some_and(|s| s.suspend);
        let mut taken = Vec::new();
        let (backend, summary, in_sync, pending) = match spec {
            None => (
                "unknown".into(),
                "spec unknown on this node (pass --file to compare)".into(),
                None,
                Vec::new(),
            ),
            Some(spec) => {
                let object = MirrorNetwork::new(&name, spec);
                match mirrornet_api::validate(&object.spec) {
                    Err(e) => (
                        "unknown".into(),
                        format!("spec invalid: {e}"),
                        Some(false),
                        Vec::new(),
                    ),
                    Ok(valid) => {
                        let loaded = LoadedNetwork { object, valid };
                        let plans =
                            session.plans(std::slice::from_ref(&loaded), BackendChoice::Auto)?;
                        let pending: Vec<String> = session
                            .diff(&plans, &[])
                            .steps
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        taken.clone_from(&plans[0].taken);
                        let summary = match (suspended, pending.len()) {
                            (false, 0) => "in sync".to_owned(),
                            (false, n) => format!("{n} change(s) pending"),
                            (true, 0) => "suspended: datapath withdrawn, ids kept".to_owned(),
                            (true, n) => format!("suspended, {n} change(s) pending"),
                        };
                        (
                            plans[0].backend.to_string(),
                            summary,
                            Some(pending.is_empty()),
                            pending,
                        )
                    }
                }
            }
        };
        let traffic = view.nft.traffic(&name);
        let connections = allocation
            .sides
            .iter()
            .filter_map(|s| Some((s.side.clone(), connections_in_zone(s.zone)?)))
            .collect();
        out.push(ShownNetwork {
            traffic,
            connections,
            name,
            backend,
            summary,
            in_sync,
            suspended,
            allocation,
            pending,
            taken,
        });
    }
    Ok(out)
}

/// `show` as text.
pub fn write_text(out: &mut dyn Write, report: &[ShownNetwork]) -> io::Result<()> {
    if report.is_empty() {
        writeln!(out, "mirrornet holds nothing on this node")?;
    }
    for n in report {
        writeln!(out, "{} ({}): {}", n.name, n.backend, n.summary)?;
        for s in &n.allocation.sides {
            writeln!(
                out,
                "  side {:<12} table {:<6} mark {:#010x} zone {:<6} rule priority {}",
                s.side, s.table, s.mark, s.zone, s.rule_priority
            )?;
        }
        for t in &n.traffic {
            writeln!(
                out,
                "  traffic {} -> {}: {} packets, {} bytes",
                t.from, t.to, t.packets, t.bytes
            )?;
        }
        for (side, count) in &n.connections {
            writeln!(
                out,
                "  connections opened by side {side}: {count} (conntrack)"
            )?;
        }
        for t in &n.taken {
            writeln!(out, "  taken: {t}")?;
        }
        for step in &n.pending {
            writeln!(out, "  pending: {step}")?;
        }
    }
    Ok(())
}

/// The networks this node holds, with their last applied specs.
pub fn held_specs(memory: &Memory) -> Vec<LoadedNetwork> {
    memory
        .networks
        .iter()
        .filter_map(|(name, record)| {
            let object = MirrorNetwork::new(name, record.spec.clone()?);
            let valid = mirrornet_api::validate(&object.spec).ok()?;
            Some(LoadedNetwork { object, valid })
        })
        .collect()
}

/// How many conntrack entries `zone` holds (original direction), via the conntrack tool;
/// `None` where it is not installed.
fn connections_in_zone(zone: u16) -> Option<usize> {
    let out = std::process::Command::new("conntrack")
        .args(["-L", "--orig-zone", &zone.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
}
