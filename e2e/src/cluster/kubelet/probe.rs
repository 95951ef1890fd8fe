//! Readiness and liveness probes of a running container, as kubelet's prober runs them:
//! after the initial delay, one attempt per period, a result reported only when a run of
//! successes or failures reaches its threshold.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;

use tokio::sync::mpsc;

use super::netns;
use super::plan::{ProbeAction, ProbePlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Readiness,
    Liveness,
}

/// A probe's result changed: `ok` is the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    pub kind: Kind,
    pub ok: bool,
}

/// Probes the container inside namespace `ns` until aborted, sending each change. Readiness
/// starts failed (not ready until it succeeds), liveness succeeded.
pub(super) async fn run(kind: Kind, probe: ProbePlan, ns: String, tx: mpsc::Sender<Outcome>) {
    tokio::time::sleep(probe.initial_delay).await;
    let mut reported = kind == Kind::Liveness;
    let (mut successes, mut failures) = (0, 0);
    let mut ticks = tokio::time::interval(probe.period);
    loop {
        ticks.tick().await;
        let ok = matches!(
            tokio::time::timeout(probe.timeout, attempt(&probe, &ns)).await,
            Ok(Ok(true))
        );
        if ok {
            (successes, failures) = (successes + 1, 0);
        } else {
            (successes, failures) = (0, failures + 1);
        }
        let now = if successes >= probe.success_threshold {
            true
        } else if failures >= probe.failure_threshold {
            false
        } else {
            reported
        };
        if now != reported {
            reported = now;
            if tx.send(Outcome { kind, ok: now }).await.is_err() {
                return;
            }
        }
    }
}

async fn attempt(probe: &ProbePlan, ns: &str) -> std::io::Result<bool> {
    let timeout = probe.timeout;
    let addr = |host: &str, port: u16| -> std::io::Result<SocketAddr> {
        let ip: IpAddr = host
            .parse()
            .map_err(|_| std::io::Error::other(format!("probe host {host:?} is no IP")))?;
        Ok(SocketAddr::new(ip, port))
    };
    match &probe.action {
        ProbeAction::Http {
            host,
            port,
            path,
            headers,
        } => {
            let (addr, path, headers) = (addr(host, *port)?, path.clone(), headers.clone());
            netns::run_in_async(ns, move || {
                netns::http_check(addr, &path, &headers, timeout)
            })
            .await
        }
        ProbeAction::Tcp { host, port } => {
            let addr = addr(host, *port)?;
            netns::run_in_async(ns, move || netns::tcp_check(addr, timeout)).await
        }
        // In the pod's network namespace but on the host's filesystem, without the volumes.
        ProbeAction::Exec { command } => {
            let status = tokio::process::Command::new("ip")
                .args(["netns", "exec", ns])
                .args(command)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await?;
            Ok(status.success())
        }
    }
}
