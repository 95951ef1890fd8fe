//! `cargo xtask bench`: the datapath and control-plane costs of mirrornet, measured against
//! plain forwarding and the hand-built iptables recipe in the same run, in namespaces the
//! bench builds and removes. Writes `docs/bench/results.json`, the plots, and the table of
//! `BENCHMARKS.md`.
//!
//! ```text
//! paths    (a) mirror, (b) plain, (c) recipe: TCP 1/4 streams, 64-byte UDP pps, ping RTT
//! scale    N networks on one middleman: pps and TCP of the first, the last, and unrelated traffic
//! control  apply/delete times, cold start, re-apply, repair delay (run), flows, RSS, idle CPU
//! ```
//!
//! The agent runs with the id ranges in [`RANGES`]: a mark mask wide enough for the largest
//! scale, 1024 networks.

mod agent;
mod control;
mod lab;
mod paths;
mod scale;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What the run measures and how long.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub reps: usize,
    pub seconds: u32,
    pub pings: u32,
    pub control_reps: usize,
    pub cold_reps: usize,
    pub tamperings: usize,
    pub idle_seconds: u64,
    pub flow_reconciles: usize,
    pub scales: Vec<usize>,
}

impl Settings {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                reps: 1,
                seconds: 1,
                pings: 100,
                control_reps: 3,
                cold_reps: 1,
                tamperings: 6,
                idle_seconds: 2,
                flow_reconciles: 2,
                scales: vec![0, 1, 16],
            }
        } else {
            Self {
                quick,
                reps: 5,
                seconds: 3,
                pings: 600,
                control_reps: 20,
                cold_reps: 3,
                tamperings: 50,
                idle_seconds: 20,
                flow_reconciles: 4,
                scales: vec![0, 1, 16, 64, 256, 1024],
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PathResult {
    pub name: String,
    pub tcp1_gbps: f64,
    pub tcp4_gbps: f64,
    pub udp64_kpps: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub samples: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleResult {
    pub networks: usize,
    pub path: String,
    pub udp64_kpps: f64,
    pub tcp1_gbps: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stat {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub n: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    pub kind: String,
    pub network: String,
    pub delay_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ControlResult {
    pub networks: usize,
    pub apply_one_empty: Stat,
    pub delete_one_empty: Stat,
    pub apply_one_present: Stat,
    pub delete_one_present: Stat,
    pub cold_start_all: Stat,
    pub reapply_converged: Stat,
    pub reapply_max_writes: u64,
    pub delete_all: Stat,
    pub repairs: Vec<Repair>,
    pub flow_resets: u64,
    pub flows_survived: bool,
    pub flow_reconciles: usize,
    pub rss_mib_1: f64,
    pub idle_cpu_pct_1: f64,
    pub rss_mib_max: f64,
    pub idle_cpu_pct_max: f64,
    pub agent_metrics: Vec<String>,
}

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Short run for development: one repetition of 1 s, scales 0/1/16, few tamperings.
    #[arg(long)]
    quick: bool,
    /// The agent binary (default: built with `cargo build --release -p mirrornet-agent` in
    /// $CARGO_TARGET_DIR or target/).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Where results.json and the plots go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Skip parts: any of paths, scale, control.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Measure nothing: rebuild the table, the plots and BENCHMARKS.md from a results.json of
    /// an earlier full run (after a change to how results are shown).
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
}

/// The id ranges of the agent's `--table-range`, `--zone-range`, `--rule-priority-range` and
/// `--mark-mask` flags, as `(first, last)`.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub tables: (u32, u32),
    pub zones: (u32, u32),
    pub rule_priorities: (u32, u32),
    pub mark_mask: u32,
}

/// What every agent call of the bench gets: the agent's defaults but for a 12-bit mark mask
/// (4095 marks; the default 0xff000000 holds 255, 127 two-sided networks), so that the 1024
/// networks of the largest scale fit.
pub const RANGES: Ranges = Ranges {
    tables: (20000, 29999),
    zones: (40000, 49999),
    rule_priorities: (500, 999),
    mark_mask: 0xfff0_0000,
};

impl Ranges {
    /// The agent's flags for these ranges.
    pub fn args(&self) -> Vec<String> {
        let range = |(a, b): (u32, u32)| format!("{a}-{b}");
        vec![
            "--table-range".into(),
            range(self.tables),
            "--zone-range".into(),
            range(self.zones),
            "--rule-priority-range".into(),
            range(self.rule_priorities),
            "--mark-mask".into(),
            format!("{:#010x}", self.mark_mask),
        ]
    }

    /// Most two-sided networks one node can hold: every side needs its own mark (the non-zero
    /// values under the mask), table and zone. Rule priorities are shared and bound nothing.
    pub fn max_networks(&self) -> usize {
        let count = |(a, b): (u32, u32)| (b - a) as usize + 1;
        let marks = (self.mark_mask >> self.mark_mask.trailing_zeros()) as usize;
        marks.min(count(self.tables)).min(count(self.zones)) / 2
    }
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    if let Some(file) = &options.render {
        let out_dir = root.join(&options.out);
        let results: Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
        return publish(
            root,
            &out_dir,
            file,
            &results,
            results["quick"] == true,
            &[],
        );
    }
    let settings = Settings::new(options.quick);
    let agent_bin = match options.agent {
        Some(a) => a,
        None => {
            // Release: what a node runs. The test suites (`cargo xtask test`) stay on debug.
            super::run(
                "cargo",
                &["build", "--release", "--package", "mirrornet-agent"],
            )?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("release/mirrornet-agent")
        }
    };
    let agent_bin = std::fs::canonicalize(&agent_bin)
        .with_context(|| format!("agent binary {}", agent_bin.display()))?;
    let out_dir = root.join(&options.out);
    std::fs::create_dir_all(&out_dir)?;
    let work = std::env::temp_dir().join(format!("mirrornet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    lab::remove_stale();
    let started = std::time::Instant::now();
    let machine_before = machine();
    let result = measure_all(&agent_bin, &work, &settings, &options.skip);
    let _ = std::fs::remove_dir_all(&work);
    let mut results = result?;
    results["elapsed_seconds"] = json!(started.elapsed().as_secs());
    results["machine"] = machine_before;
    results["quick"] = json!(settings.quick);
    results["agent_binary"] = json!(agent_bin.display().to_string());
    results["machine"]["load_after"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let file = out_dir.join(if settings.quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&file, serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", file.display());
    publish(
        root,
        &out_dir,
        &file,
        &results,
        settings.quick,
        &options.skip,
    )
}

/// The plots, the table and (for a full run) BENCHMARKS.md from one run's results.
fn publish(
    root: &Path,
    out_dir: &Path,
    file: &Path,
    results: &Value,
    quick: bool,
    skip: &[String],
) -> Result<()> {
    plot(root, file, out_dir, quick)?;
    let table = table(results);
    println!("{table}");
    std::fs::write(
        out_dir.join(if quick { "table-quick.md" } else { "table.md" }),
        &table,
    )?;
    if !quick && skip.is_empty() {
        let page = root.join("BENCHMARKS.md");
        let text = std::fs::read_to_string(&page)?;
        std::fs::write(&page, with_results(&text, results, &table)?)?;
        eprintln!("updated {}", page.display());
    }
    Ok(())
}

const RESULTS_BEGIN: &str = "<!-- results of `cargo xtask bench`: begin -->";
const RESULTS_END: &str = "<!-- results of `cargo xtask bench`: end -->";

/// BENCHMARKS.md with the part between the result markers replaced by this run: the machine
/// and the run's facts, then the table. Only a full run writes it, so the page never shows a
/// quick or partial run's numbers.
fn with_results(page: &str, results: &Value, table: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (page.find(RESULTS_BEGIN), page.find(RESULTS_END)) else {
        bail!("BENCHMARKS.md lacks the result markers {RESULTS_BEGIN} ... {RESULTS_END}");
    };
    let m = &results["machine"];
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let facts = format!(
        "Run on {} ({} s), {} cores ({}), {} RAM, kernel {}, {}, {}, {}. Load average before \
         and after: `{}` / `{}`. Agent: `{}`.\n\n",
        text(&m["date"]),
        results["elapsed_seconds"],
        text(&m["cores"]),
        text(&m["cpu"]),
        text(&m["memory"]),
        text(&m["kernel"]),
        text(&m["nft"]),
        text(&m["iptables"]),
        text(&m["iperf3"]),
        text(&m["load_before"]),
        text(&m["load_after"]),
        results["agent_binary"].as_str().unwrap_or("?"),
    );
    Ok(format!(
        "{}{RESULTS_BEGIN}\n\n{facts}{table}\n{}",
        &page[..begin],
        &page[end..]
    ))
}

fn measure_all(agent_bin: &Path, work: &Path, s: &Settings, skip: &[String]) -> Result<Value> {
    let mut results = json!({});
    let skipped = |part: &str| skip.iter().any(|p| p == part);
    if !skipped("paths") {
        eprintln!("\x1b[1mpaths: mirror, plain, recipe\x1b[0m");
        let mut lab = lab::new("paths");
        let built = paths::build(&mut lab, agent_bin, work)?;
        let measured = paths::measure(&lab, &built, s)?;
        results["paths"] = serde_json::to_value(measured)?;
    }
    let max = RANGES.max_networks();
    let counts: Vec<usize> = s.scales.iter().map(|&n| n.min(max)).collect();
    let mut counts_dedup = counts.clone();
    counts_dedup.dedup();
    let capacity = *counts_dedup.iter().max().unwrap_or(&1) + 1;
    let need_scale = !skipped("scale") || !skipped("control");
    if need_scale {
        let mut lab = lab::new("scale");
        let scale = scale::ScaleLab::build(&mut lab, agent_bin, work, capacity)?;
        // Record what the agent says about networks beyond the id ranges.
        let mut limits = Vec::new();
        for &n in s.scales.iter().filter(|&&n| n > max) {
            let nets: Vec<agent::Net> = (0..n)
                .map(|i| agent::Net {
                    index: i,
                    a: format!("n{i}a"),
                    b: format!("n{i}b"),
                })
                .collect();
            let file = scale.file(&format!("limit-{n}.yaml"), &nets)?;
            let error = scale.agent.plan_error(&lab, &file)?;
            limits.push(json!({"networks": n, "error": error}));
        }
        let over = scale.nets(max + 1);
        let file = scale.file("limit-over.yaml", &over)?;
        let error = scale.agent.plan_error(&lab, &file)?;
        limits.push(json!({"networks": max + 1, "error": error}));
        results["limits"] = json!({"max_networks": max, "requested": s.scales, "beyond": limits});
        if !skipped("scale") {
            eprintln!("\x1b[1mscale: {counts_dedup:?} networks\x1b[0m");
            results["scale"] =
                serde_json::to_value(scale::measure(&lab, &scale, &counts_dedup, s)?)?;
        }
        if !skipped("control") {
            // The largest scale: 1024 networks (16 with --quick).
            let n = *counts_dedup.iter().max().unwrap_or(&1);
            eprintln!("\x1b[1mcontrol plane with {n} networks\x1b[0m");
            results["control"] = serde_json::to_value(control::measure(&mut lab, &scale, n, s)?)?;
        }
    }
    Ok(results)
}

fn machine() -> Value {
    let out = |p: &str, a: &[&str]| {
        Command::new(p)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "kernel": out("uname", &["-r"]),
        "cores": out("nproc", &[]),
        "cpu": cpu,
        "memory": out("sh", &["-c", "free -h | awk '/Mem:/ {print $2}'"]),
        "date": out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "iperf3": out("sh", &["-c", "iperf3 --version | head -1"]),
        "nft": out("nft", &["--version"]),
        "iptables": out("iptables", &["--version"]),
        "load_before": out("cat", &["/proc/loadavg"]),
    })
}

/// Renders the plots with matplotlib from the project venv (`.venv`), created on demand.
fn plot(root: &Path, results: &Path, out_dir: &Path, quick: bool) -> Result<()> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        super::run("python3", &["-m", "venv", &venv.to_string_lossy()])?;
    }
    let has = Command::new(&python)
        .args(["-c", "import matplotlib"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has {
        super::run(
            &python.to_string_lossy(),
            &["-m", "pip", "install", "-q", "matplotlib"],
        )?;
    }
    let script = root.join("docs/bench/plot.py");
    let suffix = if quick { "-quick" } else { "" };
    let status = Command::new(&python)
        .arg(&script)
        .arg(results)
        .arg(out_dir)
        .arg(suffix)
        .status()?;
    if !status.success() {
        bail!("plotting failed");
    }
    Ok(())
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "holds" } else { "**missed**" }
}

/// The results table of BENCHMARKS.md.
fn table(r: &Value) -> String {
    let mut t = String::new();
    let path = |name: &str| {
        r["paths"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (m, p, c) = (path("mirror"), path("plain"), path("recipe"));
    if !m.is_null() {
        t.push_str("| path | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP 64 B kpps | RTT p50 µs | RTT p99 µs |\n|---|---|---|---|---|---|\n");
        for (label, v) in [
            ("(a) mirrored (mirrornet)", &m),
            ("(b) plain forwarding", &p),
            ("(c) hand-built recipe", &c),
        ] {
            t.push_str(&format!(
                "| {label} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |\n",
                f(v, "tcp1_gbps"),
                f(v, "tcp4_gbps"),
                f(v, "udp64_kpps"),
                f(v, "rtt_p50_us"),
                f(v, "rtt_p99_us")
            ));
        }
        t.push('\n');
    }
    t.push_str("| target | measured | verdict |\n|---|---|---|\n");
    let mut row = |name: &str, measured: String, ok: Option<bool>| {
        let v = ok.map_or("not measured", verdict);
        t.push_str(&format!("| {name} | {measured} | {v} |\n"));
    };
    if !m.is_null() {
        for key in ["tcp1_gbps", "tcp4_gbps"] {
            let (vp, vc) = (f(&m, key) / f(&p, key), f(&m, key) / f(&c, key));
            let streams = if key == "tcp1_gbps" { 1 } else { 4 };
            row(
                &format!("mirrored TCP ({streams} stream) >= 0.90x plain"),
                format!("{vp:.2}x"),
                Some(vp >= 0.90),
            );
            row(
                &format!("mirrored TCP ({streams} stream) >= 1.0x recipe"),
                format!("{vc:.2}x"),
                Some(vc >= 1.0),
            );
        }
        let pps = f(&m, "udp64_kpps") / f(&p, "udp64_kpps");
        row(
            "64-byte pps >= 0.80x plain",
            format!(
                "{pps:.2}x (recipe {:.2}x)",
                f(&c, "udp64_kpps") / f(&p, "udp64_kpps")
            ),
            Some(pps >= 0.80),
        );
        let rtt = f(&m, "rtt_p50_us") / f(&p, "rtt_p50_us");
        row(
            "p50 RTT <= 1.5x plain",
            format!("{rtt:.2}x"),
            Some(rtt <= 1.5),
        );
    }
    let max = r["limits"]["max_networks"].as_u64().unwrap_or(0) as usize;
    if let Some(scale) = r["scale"].as_array() {
        let get = |n: usize, path: &str, key: &str| {
            scale
                .iter()
                .find(|s| s["networks"].as_u64() == Some(n as u64) && s["path"] == path)
                .map(|s| f(s, key))
                .unwrap_or(f64::NAN)
        };
        let top = scale
            .iter()
            .filter_map(|s| s["networks"].as_u64())
            .max()
            .unwrap_or(0) as usize;
        // The target names 256 networks; the largest scale is shown beside it.
        let at = if get(256, "last", "udp64_kpps").is_nan() {
            top
        } else {
            256
        };
        let last_first = |n| get(n, "last", "udp64_kpps") / get(n, "first", "udp64_kpps");
        let lf = last_first(at);
        row(
            &format!("last of 256 networks >= 0.95x the first (measured at {at})"),
            format!("{lf:.2}x (pps); at {top}: {:.2}x", last_first(top)),
            (at > 1).then_some(lf >= 0.95),
        );
        // Against no networks at all, and against one: the first network brings conntrack
        // and NAT hooks into the namespace, which every packet then crosses; what grows with
        // the networks is the part after that.
        let unrelated = |n| get(n, "unrelated", "udp64_kpps");
        let un = unrelated(top) / unrelated(0);
        row(
            &format!("unrelated traffic >= 0.95x of a node with no networks (at {top})"),
            format!(
                "{un:.2}x (pps); {:.2}x of a node with one network",
                unrelated(top) / unrelated(1)
            ),
            Some(un >= 0.95),
        );
    }
    let c = &r["control"];
    if !c.is_null() {
        let n = c["networks"].as_u64().unwrap_or(0);
        let s = |k: &str, q: &str| c[k][q].as_f64().unwrap_or(f64::NAN);
        row(
            &format!(
                "one network applied with 1024 present: p50 <= 20 ms, p99 <= 100 ms (measured with {} present)",
                n - 1
            ),
            format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                s("apply_one_present", "p50_ms"),
                s("apply_one_present", "p99_ms")
            ),
            Some(
                s("apply_one_present", "p50_ms") <= 20.0
                    && s("apply_one_present", "p99_ms") <= 100.0,
            ),
        );
        row(
            &format!("cold start of 1024 <= 2 s (measured {n})"),
            format!("{:.2} s", s("cold_start_all", "p50_ms") / 1e3),
            Some(s("cold_start_all", "p50_ms") <= 2000.0),
        );
        let w = c["reapply_max_writes"].as_u64().unwrap_or(0);
        row(
            &format!("converged re-apply <= 20 ms with zero writes ({n} networks)"),
            format!("p50 {:.0} ms, {w} writes", s("reapply_converged", "p50_ms")),
            Some(s("reapply_converged", "p50_ms") <= 20.0 && w == 0),
        );
        let delays: Vec<f64> = c["repairs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["delay_ms"].as_f64()).collect())
            .unwrap_or_default();
        let total = c["repairs"].as_array().map_or(0, Vec::len);
        let p99 = traffic::quantile(&delays, 0.99);
        row(
            &format!("repair p99 <= 100 ms at 1024 networks (measured {n}, {total} tamperings)"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, {} not repaired",
                traffic::quantile(&delays, 0.5),
                p99,
                total - delays.len()
            ),
            Some(p99 <= 100.0 && delays.len() == total),
        );
        let resets = c["flow_resets"].as_u64().unwrap_or(0);
        row(
            "zero resets of established flows",
            format!(
                "{resets} resets, flows {} over {} reconciles",
                if c["flows_survived"].as_bool() == Some(true) {
                    "completed"
                } else {
                    "FAILED"
                },
                c["flow_reconciles"]
            ),
            Some(resets == 0 && c["flows_survived"].as_bool() == Some(true)),
        );
        let rss = c["rss_mib_max"].as_f64().unwrap_or(f64::NAN);
        row(
            &format!("agent RSS <= 30 MiB at 1024 networks (measured {n})"),
            format!(
                "{rss:.1} MiB (1 network: {:.1} MiB)",
                c["rss_mib_1"].as_f64().unwrap_or(f64::NAN)
            ),
            Some(rss <= 30.0),
        );
    }
    if !c.is_null() {
        t.push_str(&format!(
            "\n| control plane ({} networks; wall time of the CLI call, process start included) | p50 ms | p99 ms | n |\n|---|---|---|---|\n",
            c["networks"]
        ));
        for (label, key) in [
            ("apply one network, empty node", "apply_one_empty"),
            ("delete one network, empty node", "delete_one_empty"),
            ("apply one network, the others present", "apply_one_present"),
            (
                "delete one network, the others present",
                "delete_one_present",
            ),
            ("cold start: apply all", "cold_start_all"),
            ("re-apply all, converged", "reapply_converged"),
            ("delete all", "delete_all"),
        ] {
            t.push_str(&format!(
                "| {label} | {:.1} | {:.1} | {} |\n",
                c[key]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                c[key]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                c[key]["n"]
            ));
        }
        for kind in ["rule", "route", "nft"] {
            let d: Vec<f64> = c["repairs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["kind"] == kind)
                        .filter_map(|x| x["delay_ms"].as_f64())
                        .collect()
                })
                .unwrap_or_default();
            t.push_str(&format!(
                "| repair of a deleted {kind} (run) | {:.1} | {:.1} | {} |\n",
                traffic::quantile(&d, 0.5),
                traffic::quantile(&d, 0.99),
                d.len()
            ));
        }
        t.push_str(&format!(
            "\nAgent idle CPU: {:.2} % with 1 network, {:.2} % with {}; RSS {:.1} / {:.1} MiB.\n",
            c["idle_cpu_pct_1"].as_f64().unwrap_or(f64::NAN),
            c["idle_cpu_pct_max"].as_f64().unwrap_or(f64::NAN),
            c["networks"],
            c["rss_mib_1"].as_f64().unwrap_or(f64::NAN),
            c["rss_mib_max"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    if max > 0 {
        t.push_str(&format!(
            "\nAt most {max} two-sided networks fit the bench's id ranges on one node (mark mask \
             {:#010x}; the default 0xff000000 holds 127).\n",
            RANGES.mark_mask
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scale_fits_the_benchs_ranges() {
        assert_eq!(RANGES.max_networks(), 2047);
        for quick in [false, true] {
            let scales = Settings::new(quick).scales;
            assert!(scales.iter().all(|&n| n <= RANGES.max_networks()));
        }
        // The agent's own default mask holds 255 marks.
        let default_mask = Ranges {
            mark_mask: 0xff00_0000,
            ..RANGES
        };
        assert_eq!(default_mask.max_networks(), 127);
        assert_eq!(
            RANGES.args().join(" "),
            "--table-range 20000-29999 --zone-range 40000-49999 --rule-priority-range 500-999 \
             --mark-mask 0xfff00000"
        );
    }
}
