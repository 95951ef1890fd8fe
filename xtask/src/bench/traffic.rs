//! Traffic measurements between two lab namespaces: iperf3 (TCP throughput, 64-byte UDP
//! packet rate) and ping (round-trip time percentiles).

use anyhow::{Context, Result, bail};
use std::time::Duration;

use mirrornet_agent::lab::wait_for;
use serde_json::Value;

use super::lab::Lab;

/// Where traffic goes: from namespace `client` to `target`, served in namespace `server`.
#[derive(Debug, Clone)]
pub struct Path {
    pub client: String,
    pub server: String,
    pub target: String,
}

/// Starts an iperf3 server in the path's server namespace and waits until it answers.
pub fn serve(lab: &mut Lab, path: &Path) -> Result<()> {
    lab.spawn(&path.server, &["iperf3", "-s"])?;
    wait_reachable(lab, path, Duration::from_secs(10))
        .with_context(|| format!("the iperf3 server in {}", path.server))
}

/// Waits until the path's client pings its target (proving the path, and that the server's
/// namespace is ready), for up to `limit`.
pub fn wait_reachable(lab: &Lab, path: &Path, limit: Duration) -> Result<()> {
    let pings = || {
        lab.command(
            &path.client,
            &["ping", "-c", "1", "-W", "1", "-q", &path.target],
        )
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(())
    };
    wait_for(limit, Duration::from_millis(100), pings)
        .with_context(|| format!("{} cannot reach {}", path.client, path.target))
}

fn iperf(lab: &Lab, path: &Path, args: &[&str]) -> Result<Value> {
    let mut full = vec!["iperf3", "-c", &path.target, "-J"];
    full.extend_from_slice(args);
    // The server takes one test at a time; retry briefly if the previous one still holds it.
    let mut last = String::new();
    for _ in 0..5 {
        let out = lab.command(&path.client, &full).output()?;
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() && json.get("error").is_none() {
            return Ok(json);
        }
        last = json
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!("iperf3 {} -> {}: {last}", path.client, path.target)
}

/// TCP goodput in Gbit/s with `streams` parallel streams.
pub fn tcp_gbps(lab: &Lab, path: &Path, seconds: u32, streams: u32) -> Result<f64> {
    let t = seconds.to_string();
    let p = streams.to_string();
    let json = iperf(lab, path, &["-t", &t, "-P", &p, "-O", "1"])?;
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .map(|b| b / 1e9)
        .context("iperf3 reported no received rate")
}

/// 64-byte-payload UDP packets per second that arrive at the server (sent as fast as the
/// sender can; lost packets are not counted).
pub fn udp_pps(lab: &Lab, path: &Path, seconds: u32) -> Result<f64> {
    let t = seconds.to_string();
    let json = iperf(lab, path, &["-u", "-l", "64", "-b", "0", "-t", &t])?;
    let sum = json.pointer("/end/sum").context("iperf3 reported no sum")?;
    let packets = sum.get("packets").and_then(Value::as_f64).unwrap_or(0.0);
    let lost = sum
        .get("lost_packets")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let secs = sum.get("seconds").and_then(Value::as_f64).unwrap_or(1.0);
    Ok((packets - lost).max(0.0) / secs)
}

/// Round-trip times in microseconds of `count` pings 5 ms apart.
pub fn rtts_us(lab: &Lab, path: &Path, count: u32) -> Result<Vec<f64>> {
    let c = count.to_string();
    let out = lab.stdout(
        &path.client,
        &["ping", "-i", "0.005", "-c", &c, "-W", "1", &path.target],
    )?;
    let rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if rtts.is_empty() {
        bail!("no ping replies {} -> {}", path.client, path.target);
    }
    Ok(rtts)
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}
