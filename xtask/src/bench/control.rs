//! Control-plane costs on the scale lab's middleman: apply and delete times, cold start,
//! converged re-apply, repair delay under `run`, established flows across a reconcile of
//! another network, and the agent's memory and idle CPU.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::agent::{Agent, cpu_seconds, rss_mib};
use super::lab::Lab;
use super::scale::{MM, ScaleLab};
use super::traffic::quantile;
use super::{ControlResult, Repair, Settings, Stat};

fn stat(values: &[f64]) -> Stat {
    Stat {
        p50_ms: quantile(values, 0.5) * 1e3,
        p99_ms: quantile(values, 0.99) * 1e3,
        n: values.len(),
    }
}

/// Runs every control-plane measurement with up to `max` networks.
pub fn measure(lab: &mut Lab, scale: &ScaleLab, max: usize, s: &Settings) -> Result<ControlResult> {
    let agent = &scale.agent;
    let all = scale.nets(max);
    let one_file = scale.file("one.yaml", &all[..1])?;
    let all_file = scale.file("all.yaml", &all)?;
    let rest_file = scale.file("rest.yaml", &all[..max - 1])?;
    let extra_file = scale.file("extra.yaml", &all[max - 1..])?;
    let mut r = ControlResult {
        networks: max,
        ..ControlResult::default()
    };

    eprintln!("  apply/delete one network on an empty node");
    let (mut apply, mut delete) = (Vec::new(), Vec::new());
    for _ in 0..s.control_reps {
        apply.push(agent.apply(lab, &one_file)?.seconds);
        delete.push(agent.delete(lab, &one_file)?.seconds);
    }
    r.apply_one_empty = stat(&apply);
    r.delete_one_empty = stat(&delete);

    eprintln!("  agent run with 1 network: memory and idle CPU");
    let (rss, cpu) = idle(lab, agent, &one_file, s)?;
    r.rss_mib_1 = rss;
    r.idle_cpu_pct_1 = cpu;
    agent.delete(lab, &one_file)?;

    eprintln!("  cold start of {max} networks, converged re-apply, delete");
    let (mut cold, mut del_all, mut reapply) = (Vec::new(), Vec::new(), Vec::new());
    let mut writes = Vec::new();
    for rep in 0..s.cold_reps {
        cold.push(agent.apply(lab, &all_file)?.seconds);
        for _ in 0..s.control_reps / s.cold_reps.max(1) + usize::from(rep == 0) {
            let call = agent.apply(lab, &all_file)?;
            reapply.push(call.seconds);
            writes.push(call.writes);
        }
        del_all.push(agent.delete(lab, &all_file)?.seconds);
    }
    r.cold_start_all = stat(&cold);
    r.reapply_converged = stat(&reapply);
    r.reapply_max_writes = writes.iter().copied().max().unwrap_or(0);
    r.delete_all = stat(&del_all);

    eprintln!("  apply/delete one network with {} present", max - 1);
    agent.apply(lab, &rest_file)?;
    let (mut apply, mut delete) = (Vec::new(), Vec::new());
    for _ in 0..s.control_reps {
        apply.push(agent.apply(lab, &extra_file)?.seconds);
        delete.push(agent.delete(lab, &extra_file)?.seconds);
    }
    r.apply_one_present = stat(&apply);
    r.delete_one_present = stat(&delete);

    eprintln!("  agent run with {max} networks: memory, idle CPU, repair, flows");
    let port = 9391;
    let pid = agent.run(lab, &all_file, port)?;
    std::thread::sleep(Duration::from_secs(2));
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(s.idle_seconds));
    r.idle_cpu_pct_max = (cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    r.rss_mib_max = rss_mib(pid)?;
    r.repairs = repair(lab, agent, max, s.tamperings)?;
    r.rss_mib_max = r.rss_mib_max.max(rss_mib(pid)?);
    let (resets, survived, reconciles) = flows(lab, scale, &all_file, &rest_file, s)?;
    r.flow_resets = resets;
    r.flows_survived = survived;
    r.flow_reconciles = reconciles;
    r.rss_mib_max = r.rss_mib_max.max(rss_mib(pid)?);
    if let Ok(m) = agent.metrics(lab, port) {
        r.agent_metrics = m
            .lines()
            .filter(|l| {
                l.starts_with("mirrornet_agent_repairs")
                    || l.starts_with("mirrornet_agent_kernel_writes")
                    || l.starts_with("mirrornet_agent_reconcile_passes_total")
                    || l.starts_with("mirrornet_agent_reconcile_pass_seconds_sum")
                    || l.starts_with("mirrornet_agent_reconcile_pass_seconds_count")
            })
            .map(str::to_owned)
            .collect();
    }
    lab.stop(pid);
    agent.delete(lab, &all_file)?;
    Ok(r)
}

/// Starts `run` on `file`, and returns its RSS (MiB) and idle CPU (%) once converged.
fn idle(lab: &mut Lab, agent: &Agent, file: &std::path::Path, s: &Settings) -> Result<(f64, f64)> {
    let pid = agent.run(lab, file, 9390)?;
    std::thread::sleep(Duration::from_secs(2));
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(s.idle_seconds));
    let cpu = (cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib(pid)?;
    lab.stop(pid);
    Ok((rss, cpu))
}

/// Recognises one monitor line.
type Matcher = Box<dyn Fn(&str) -> bool>;

/// A line from one of the monitors, stamped when it arrived.
type Event = (Instant, String);

fn monitor(lab: &mut Lab, args: &[&str], tx: mpsc::Sender<Event>) -> Result<()> {
    let mut child = lab
        .command(MM, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("monitor stdout")?;
    lab.adopt(child);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Waits for an event matching `pred`; `None` after `timeout`.
fn wait_for(
    rx: &mpsc::Receiver<Event>,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok((t, line)) if pred(&line) => return Some(t),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Deletes one ip rule, route or nft rule of a pseudo-randomly chosen network at a time,
/// `count` times, and measures from the kernel's deletion notification to the one of the
/// object's return (both seen by `ip monitor` / `nft monitor` in the middleman).
fn repair(lab: &mut Lab, agent: &Agent, max: usize, count: usize) -> Result<Vec<Repair>> {
    let show = agent.show(lab)?;
    let (tx, rx) = mpsc::channel();
    monitor(
        lab,
        &["stdbuf", "-oL", "ip", "monitor", "rule", "route"],
        tx.clone(),
    )?;
    monitor(lab, &["stdbuf", "-oL", "nft", "monitor", "rules"], tx)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut out = Vec::new();
    for k in 0..count {
        let i = (k * 37 + 5) % max;
        let name = format!("bench-{i:04}");
        let net = show
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name.as_str()))
            .with_context(|| format!("{name} not in `show`"))?;
        let side = &net["allocation"]["sides"][0];
        let table = side["table"].as_u64().unwrap_or_default();
        let prio = side["rule_priority"]
            .as_u64()
            .or_else(|| side["rulePriority"].as_u64())
            .unwrap_or_default();
        let nets = super::agent::Net {
            index: i,
            a: String::new(),
            b: String::new(),
        };
        let subnet = nets.subnet();
        while rx.try_recv().is_ok() {}
        let kind = ["rule", "route", "nft"][k % 3];
        let (args, deleted, added): (Vec<String>, Matcher, Matcher) = match kind {
            "rule" => {
                // Sides share priorities: the side's table names its mark rule alone (its iif
                // rule sits 1000 higher).
                let p = format!("{prio}:");
                let t = format!("lookup {table} ");
                let (p2, t2) = (p.clone(), t.clone());
                (
                    vec![
                        "ip".into(),
                        "rule".into(),
                        "del".into(),
                        "priority".into(),
                        prio.to_string(),
                        "lookup".into(),
                        table.to_string(),
                    ],
                    Box::new(move |l| l.starts_with(&format!("Deleted {p}")) && l.contains(&t)),
                    Box::new(move |l| l.starts_with(&p2) && l.contains(&t2)),
                )
            }
            "route" => {
                let t = format!("table {table}");
                let (s1, t1) = (subnet.clone(), t.clone());
                (
                    vec![
                        "ip".into(),
                        "route".into(),
                        "del".into(),
                        subnet.clone(),
                        "table".into(),
                        table.to_string(),
                    ],
                    Box::new(move |l| {
                        l.starts_with("Deleted") && l.contains(&s1) && l.contains(&t1)
                    }),
                    Box::new(move |l| l.starts_with(&subnet) && l.contains(&t)),
                )
            }
            _ => {
                // One rule of a steer chain, by handle. (Deleting a map element would be
                // the smaller change, but nft 1.0.6's monitor crashes printing elements of
                // a concatenated interval map.)
                let chain = format!("steer.{name}.inner.outer");
                let listing = lab.stdout(
                    MM,
                    &["nft", "-a", "list", "chain", "inet", "mirrornet", &chain],
                )?;
                let handle = listing
                    .lines()
                    .filter_map(|l| l.split("# handle ").nth(1))
                    .next_back()
                    .with_context(|| format!("no rule in {chain}"))?
                    .trim()
                    .to_owned();
                let del = format!("delete rule inet mirrornet {chain} handle {handle}");
                let add = format!("add rule inet mirrornet {chain} ");
                (
                    vec![
                        "nft".into(),
                        "delete".into(),
                        "rule".into(),
                        "inet".into(),
                        "mirrornet".into(),
                        chain.clone(),
                        "handle".into(),
                        handle,
                    ],
                    Box::new(move |l| l.starts_with(&del)),
                    Box::new(move |l| l.starts_with(&add) && l.contains("ct original zone")),
                )
            }
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.exec(MM, &argv)
            .with_context(|| format!("tampering: {}", args.join(" ")))?;
        let t_del = wait_for(&rx, Duration::from_secs(5), deleted);
        let t_add = t_del.and_then(|_| wait_for(&rx, Duration::from_secs(10), added));
        let delay_ms = match (t_del, t_add) {
            (Some(d), Some(a)) => Some(a.duration_since(d).as_secs_f64() * 1e3),
            _ => None,
        };
        eprintln!(
            "    tamper {k}: {kind} of {name}: {}",
            delay_ms.map_or("not repaired within 10 s".into(), |d| format!("{d:.1} ms"))
        );
        out.push(Repair {
            kind: kind.to_owned(),
            network: name,
            delay_ms,
        });
        // Let the agent settle (its follow-up resync) before the next tampering.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(out)
}

fn nstat(lab: &Lab, ns: &str) -> Result<u64> {
    let out = lab.stdout(
        ns,
        &["nstat", "-asz", "TcpEstabResets", "TcpExtTCPAbortOnData"],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

/// Keeps 4 TCP flows through network 0 busy while `run` reconciles another network away and
/// back (the file rewritten each time); returns (resets seen, flows that completed, reconciles).
fn flows(
    lab: &mut Lab,
    scale: &ScaleLab,
    all: &std::path::Path,
    rest: &std::path::Path,
    s: &Settings,
) -> Result<(u64, bool, usize)> {
    let all_text = std::fs::read_to_string(all)?;
    let rest_text = std::fs::read_to_string(rest)?;
    let before = nstat(lab, "c0")? + nstat(lab, "s0")?;
    let seconds = (s.flow_reconciles as u64 * 2 + 4).to_string();
    let client = lab
        .command(
            "c0",
            &[
                "iperf3",
                "-c",
                &scale.first.target,
                "-P",
                "4",
                "-t",
                &seconds,
                "-J",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    for k in 0..s.flow_reconciles {
        let text = if k % 2 == 0 { &rest_text } else { &all_text };
        std::fs::write(all, text)?;
        std::thread::sleep(Duration::from_secs(2));
    }
    std::fs::write(all, &all_text)?;
    let out = client.wait_with_output()?;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let survived = out.status.success() && json.get("error").is_none();
    let after = nstat(lab, "c0")? + nstat(lab, "s0")?;
    if !survived {
        eprintln!(
            "    flows did not survive: {}",
            json.get("error").unwrap_or(&Value::Null)
        );
    }
    if after < before {
        bail!("nstat counters went backwards");
    }
    Ok((after - before, survived, s.flow_reconciles))
}
