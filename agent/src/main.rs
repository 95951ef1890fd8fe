//! `mirrornet-agent`: programs MirrorNetworks into the network namespace it runs in.
//!
//! File mode (no Kubernetes) is the contract tests and other tools rely on:
//! `apply --file F`, `delete --file F`, `plan --file F`, `show`. Exit status 0 means converged;
//! 1 means nothing was changed (or everything changed was rolled back); the error names the
//! field or kernel object.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;

use mirrornet_agent::allocate::BackendChoice;
use mirrornet_agent::engine::Engine;
use mirrornet_agent::session::{Change, Session};
use mirrornet_agent::{demo, lab, rollback, show};
use mirrornet_api::allocation::{IdRanges, RangeFlags};
use mirrornet_api::file::{self, LoadedNetwork};

#[derive(Debug, Parser)]
#[command(
    name = "mirrornet-agent",
    version,
    about = "Joins networks that reuse the same IP range through alias prefixes",
    after_help = "Id ranges (--table-range, --zone-range, --rule-priority-range, --mark-mask, or \
                  their MIRRORNET_* variables; the operator's flags): where the agent draws the \
                  ids of networks from a file (apply, plan, show, run --file) that do not hold \
                  ids on the node yet. In a cluster the operator allocates ids. Give every \
                  command on one node the same ranges: a network re-applied under another mark \
                  mask gets new ids, and a node holds one mask, so a change that would leave \
                  networks under two is refused; move every network in one apply. New table, \
                  zone or priority ranges leave the networks a node holds as they are (their \
                  re-apply writes nothing); only networks new to the node draw from them."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    ranges: RangeFlags,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Program every MirrorNetwork in the file into this network namespace; exits 0 once
    /// converged. Re-running it on a converged node changes nothing.
    Apply {
        #[arg(long, short)]
        file: PathBuf,
        /// Overrides each network's spec.backend.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove every MirrorNetwork in the file from this node completely.
    Delete {
        #[arg(long, short)]
        file: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show the kernel changes `apply` would make, without making them.
    Plan {
        #[arg(long, short)]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List the networks mirrornet holds on this node and whether they match their spec.
    Show {
        /// Compare with the specs in this file instead of the ones last applied.
        #[arg(long, short)]
        file: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Keep networks converged and repair drift until stopped (SIGTERM leaves the datapath in
    /// place). With --file: the networks in the file, re-read when it changes; networks this
    /// node holds that the file no longer lists are removed. Without: the MirrorNetworks that
    /// select this node, with this node's entry of their status kept up to date.
    Run {
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// This node's name, in-cluster (set it from the downward API: spec.nodeName).
        #[arg(long, env = "NODE_NAME", required_unless_present = "file")]
        node_name: Option<String>,
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Where `/metrics`, `/healthz` and `/readyz` are served.
        #[arg(long, default_value = "127.0.0.1:9090")]
        metrics_address: std::net::SocketAddr,
        /// Full resync period, the backstop behind kernel events.
        #[arg(long, default_value_t = 30)]
        resync_seconds: u64,
    },
    /// What ADDRESS means to a host on side SIDE, and how the other sides see that host.
    Translate {
        address: std::net::IpAddr,
        #[arg(long)]
        from: String,
        /// The networks to look in (default: the ones this node holds).
        #[arg(long, short)]
        file: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The path a packet from SRC to DST entering from side SIDE takes through this node, with
    /// the kernel's own routing answer.
    Trace {
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        /// A new connection's protocol and port (`tcp/22`, `udp/53`, `icmp`), checked against
        /// the network's allow-list.
        flow: Option<mirrornet_agent::trace::Flow>,
        #[arg(long)]
        from: String,
        /// The networks to look in (default: the ones this node holds).
        #[arg(long, short)]
        file: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Build the seed scenario in network namespaces, show traffic crossing, clean up.
    Demo {
        /// The network to demonstrate (default: the built-in seed example).
        #[arg(long, short)]
        file: Option<PathBuf>,
    },
    /// Rolls back the change armed as ID once the agent that armed it lets go of the node,
    /// unless that agent confirmed or undid it. Started by the agent itself.
    #[command(hide = true)]
    RollbackGuard {
        #[arg(long)]
        id: String,
    },
    /// Traffic probe used inside lab namespaces by the demo and the tests.
    #[command(hide = true)]
    Probe {
        #[command(subcommand)]
        probe: ProbeCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ProbeCmd {
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        identity: String,
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    Connect {
        to: std::net::SocketAddr,
        #[arg(long)]
        from_port: Option<u16>,
        /// How long to wait for the connection to open: a test that expects a refusal by a
        /// drop need not wait for the default.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Prints the status code, then the body; exits 0 for 2xx.
    HttpGet {
        address: std::net::SocketAddr,
        path: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRRORNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, &cli.ranges)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<Vec<LoadedNetwork>> {
    Ok(file::load_path(path)?)
}

fn engine(ranges: &IdRanges) -> Result<Engine> {
    Engine::connect(ranges.clone()).context("opening a netlink socket")
}

/// Writes a command's answer to stdout, as JSON or as text. A reader that stops reading
/// (`show | head`) ends the output, not the command: a closed pipe is not an error.
fn print(
    output: Output,
    json: &serde_json::Value,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(json).unwrap_or_default()
        ),
        Output::Text => text(&mut out),
    }
    .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.context("writing to stdout")?),
    }
}

async fn dispatch(command: Cmd, flags: &RangeFlags) -> Result<()> {
    let ranges = &flags.ranges()?;
    match command {
        Cmd::Apply {
            file,
            backend,
            output,
        } => apply(file, backend, output, ranges).await?,
        Cmd::Delete { file, output } => delete(file, output, ranges).await?,
        Cmd::Plan {
            file,
            backend,
            output,
        } => plan(file, backend, output, ranges).await?,
        Cmd::Show { file, output } => {
            let specs = match file {
                Some(f) => load(&f)?,
                None => Vec::new(),
            };
            let engine = engine(ranges)?;
            let mut session = Session::read(&engine).await?;
            // On-link aliases: whether hosts use any of them, asked now.
            let held = show::held_specs(&session.memory);
            let valid: Vec<_> = specs.iter().chain(&held).map(|n| &n.valid).collect();
            // Probing writes the neighbour table: one prober at a time.
            let lock = mirrornet_agent::lock::NodeLock::acquire().await?;
            session.probe_on_link(&valid, Duration::ZERO).await?;
            drop(lock);
            let report = show::show(&session, &specs)?;
            print(output, &serde_json::to_value(&report)?, |out| {
                show::write_text(out, &report)
            })?;
        }
        Cmd::Run {
            file,
            node_name,
            backend,
            metrics_address,
            resync_seconds,
        } => match (file, node_name) {
            (Some(file), _) => {
                let desired = mirrornet_agent::file_source::watch_file(file)?;
                let settings = settings(None, backend, ranges, resync_seconds);
                run(desired, None, settings, metrics_address).await?;
            }
            (None, Some(node)) => {
                let cluster = mirrornet_agent::cluster::Cluster::connect(&node).await?;
                let desired = cluster.desired.clone();
                let settings = settings(Some(&cluster), backend, ranges, resync_seconds);
                run(desired, Some(cluster), settings, metrics_address).await?;
            }
            (None, None) => anyhow::bail!("pass --file, or --node-name (NODE_NAME) in a cluster"),
        },
        Cmd::Demo { file } => demo::run(file.as_deref()).await?,
        Cmd::RollbackGuard { id } => {
            if let Some(outcome) = rollback::guard(&engine(ranges)?, &id).await? {
                eprintln!(
                    "rolled back change {id} ({} kernel writes): its agent died before confirming it",
                    outcome.writes
                );
            }
        }
        Cmd::Trace {
            src,
            dst,
            flow,
            from,
            file,
            output,
        } => trace(src, dst, flow, from, file, output, ranges).await?,
        Cmd::Translate {
            address,
            from,
            file,
            output,
        } => translate(address, &from, file.as_deref(), output, ranges).await?,
        Cmd::Probe { probe } => match probe {
            ProbeCmd::Serve {
                port,
                identity,
                hold_ms,
            } => lab::probe::serve(port, &identity, Duration::from_millis(hold_ms))?,
            ProbeCmd::Connect {
                to,
                from_port,
                timeout_ms,
            } => {
                let limit = Duration::from_millis(timeout_ms);
                println!("{}", lab::probe::connect(to, from_port, limit).await?)
            }
            ProbeCmd::HttpGet { address, path } => {
                let (status, body) = lab::probe::http_get(address, &path)?;
                println!("{status}");
                print!("{body}");
                if !(200..300).contains(&status) {
                    anyhow::bail!("HTTP {status}");
                }
            }
        },
    }
    Ok(())
}

/// `apply`: every network in `file`, checked, or rolled back.
async fn apply(
    file: PathBuf,
    backend: BackendChoice,
    output: Output,
    ranges: &IdRanges,
) -> Result<()> {
    let networks = load(&file)?;
    let engine = engine(ranges)?;
    rollback::recover(&engine).await?;
    let (mut verified, unprobed) = apply_once(&engine, &networks, backend).await?;
    if unprobed {
        // On-link aliases of a side that did not hold the node's address yet: the side is
        // asked now that it does, and the addresses no host uses are claimed.
        let (then, _) = apply_once(&engine, &networks, backend).await?;
        let first = std::mem::replace(&mut verified, then);
        verified.outcome.writes += first.outcome.writes;
        let mut steps = first.outcome.steps;
        steps.append(&mut verified.outcome.steps);
        verified.outcome.steps = steps;
        if verified.verification.is_none() {
            verified.verification = first.verification;
        }
    }
    print(output, &serde_json::to_value(&verified)?, |out| {
        let outcome = &verified.outcome;
        for step in &outcome.steps {
            writeln!(out, "{step}")?;
        }
        if let Some(v) = &verified.verification {
            for c in &v.checks {
                writeln!(out, "check {}: {}", c.name, c.detail)?;
            }
        }
        for n in &outcome.networks {
            writeln!(
                out,
                "{}: converged ({}, {} kernel writes)",
                n.name, n.backend, outcome.writes
            )?;
            for t in &n.taken {
                writeln!(out, "  taken: {t}")?;
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// One locked observe-probe-plan-converge-verify of `networks`; also says whether some
/// on-link alias addresses could not be asked about yet.
async fn apply_once(
    engine: &Engine,
    networks: &[LoadedNetwork],
    backend: BackendChoice,
) -> Result<(rollback::VerifiedOutcome, bool)> {
    let mut session = Session::locked(engine).await?;
    let valid: Vec<_> = networks.iter().map(|n| &n.valid).collect();
    session.probe_on_link(&valid, Duration::ZERO).await?;
    let plans = session.plans(networks, backend)?;
    let specs: Vec<_> = networks.iter().map(|n| &n.object.spec).collect();
    let change = Change {
        plans: &plans,
        specs: &specs,
        networks: &valid,
        remove: &[],
        endpoints: &[],
    };
    let verified = rollback::converge_verified(&session, change).await?;
    Ok((verified, plans.iter().any(|p| p.unprobed > 0)))
}

/// `delete`: every network in `file`, completely.
async fn delete(file: PathBuf, output: Output, ranges: &IdRanges) -> Result<()> {
    let networks = load(&file)?;
    let engine = engine(ranges)?;
    rollback::recover(&engine).await?;
    let session = Session::locked(&engine).await?;
    let names: Vec<String> = networks.iter().map(|n| n.name().to_owned()).collect();
    let change = Change {
        plans: &[],
        specs: &[],
        networks: &[],
        remove: &names,
        endpoints: &[],
    };
    let outcome = rollback::converge_verified(&session, change).await?.outcome;
    print(output, &serde_json::to_value(&outcome)?, |out| {
        for step in &outcome.steps {
            writeln!(out, "{step}")?;
        }
        for name in &names {
            writeln!(out, "{name}: removed ({} kernel writes)", outcome.writes)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// `plan`: the steps `apply` would take, taking none.
async fn plan(
    file: PathBuf,
    backend: BackendChoice,
    output: Output,
    ranges: &IdRanges,
) -> Result<()> {
    let networks = load(&file)?;
    let engine = engine(ranges)?;
    let mut session = Session::read(&engine).await?;
    let valid: Vec<_> = networks.iter().map(|n| &n.valid).collect();
    // Probing writes the neighbour table: one prober at a time.
    let lock = mirrornet_agent::lock::NodeLock::acquire().await?;
    session.probe_on_link(&valid, Duration::ZERO).await?;
    drop(lock);
    let plans = session.plans(&networks, backend)?;
    let changes = session.diff(&plans, &[]);
    print(output, &serde_json::to_value(&changes)?, |out| {
        if changes.is_empty() {
            writeln!(out, "no changes: the node matches the spec")?;
        }
        for step in &changes.steps {
            writeln!(out, "{step}")?;
        }
        for p in plans.iter().filter(|p| p.unprobed > 0) {
            writeln!(
                out,
                "{}: {} on-link alias address(es) not shown: apply asks the sides about them \
                 once the node's address is on them, and claims those no host uses",
                p.name, p.unprobed
            )?;
        }
        for p in &plans {
            for t in &p.taken {
                writeln!(out, "{}: taken: {t}", p.name)?;
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// `trace`: the path a packet takes through this node, stage by stage.
async fn trace(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    flow: Option<mirrornet_agent::trace::Flow>,
    from: String,
    file: Option<PathBuf>,
    output: Output,
    ranges: &IdRanges,
) -> Result<()> {
    let engine = engine(ranges)?;
    let session = Session::read(&engine).await?;
    let networks = match file {
        Some(f) => load(&f)?,
        None => show::held_specs(&session.memory),
    };
    let network = networks
        .iter()
        .find(|n| n.valid.sides.iter().any(|s| s.name.as_str() == from))
        .with_context(|| format!("no network on this node has a side {from:?}"))?;
    let allocation = session.view.recorded_allocation(network.name());
    let hops = mirrornet_agent::trace::trace(
        network,
        allocation.as_ref(),
        &session.view,
        &from,
        src,
        dst,
        flow,
    );
    print(output, &serde_json::to_value(&hops)?, |out| {
        for (i, h) in hops.iter().enumerate() {
            writeln!(
                out,
                "{}. [{}] {}{}",
                i + 1,
                h.stage,
                h.detail,
                if h.ok { "" } else { "   <-- check this" }
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

fn settings(
    cluster: Option<&mirrornet_agent::cluster::Cluster>,
    backend: BackendChoice,
    ranges: &IdRanges,
    resync_seconds: u64,
) -> mirrornet_agent::reconciler::Settings {
    mirrornet_agent::reconciler::Settings {
        backend,
        resync: Duration::from_secs(resync_seconds.max(1)),
        // In a cluster a change must leave the node able to reach the API server.
        endpoints: cluster
            .and_then(|_| mirrornet_agent::verify::api_server())
            .into_iter()
            .collect(),
        ranges: ranges.clone(),
        ..Default::default()
    }
}

async fn run(
    desired: tokio::sync::watch::Receiver<Vec<mirrornet_agent::reconciler::DesiredNetwork>>,
    cluster: Option<mirrornet_agent::cluster::Cluster>,
    settings: mirrornet_agent::reconciler::Settings,
    metrics_address: std::net::SocketAddr,
) -> Result<()> {
    use mirrornet_agent::reconciler::{self, Metrics, NodeReport};
    use std::sync::Arc;
    let engine = engine(&settings.ranges)?;
    // A rollback that fails here is retried before every change (and reported as its
    // error): the loop starts anyway, so the node's status says what is wrong instead of
    // the pod restarting forever.
    match rollback::recover(&engine).await {
        Ok(Some(outcome)) => tracing::warn!(
            writes = outcome.writes,
            "rolled back a change the previous agent never confirmed"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "rolling back an unconfirmed change failed"),
    }
    let metrics = Arc::new(Metrics::default());
    let (report_tx, report_rx) = tokio::sync::watch::channel(NodeReport::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(metrics_address)
        .await
        .with_context(|| format!("listening on {metrics_address}"))?;
    if let Some(cluster) = &cluster {
        cluster.spawn_status_writer(report_rx.clone(), metrics.clone());
    }
    tokio::spawn(mirrornet_agent::endpoints::serve(
        listener,
        metrics.clone(),
        report_rx,
        settings.resync * 3,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop_tx.send(true);
    });
    reconciler::run(
        engine.with_caches(),
        settings,
        desired,
        report_tx,
        metrics,
        stop_rx,
    )
    .await;
    Ok(())
}

async fn translate(
    address: std::net::IpAddr,
    from: &str,
    file: Option<&std::path::Path>,
    output: Output,
    ranges: &IdRanges,
) -> Result<()> {
    let networks: Vec<LoadedNetwork> = match file {
        Some(f) => load(f)?,
        None => {
            let engine = engine(ranges)?;
            show::held_specs(&Session::read(&engine).await?.memory)
        }
    };
    let mut answers = Vec::new();
    for n in &networks {
        if !n.valid.sides.iter().any(|s| s.name.as_str() == from) {
            continue;
        }
        match mirrornet_agent::translate::translate(&n.valid, from, address) {
            Ok(m) => answers.push((n.name().to_owned(), m)),
            Err(e) => tracing::debug!(network = n.name(), error = %e, "no meaning"),
        }
    }
    if answers.is_empty() {
        anyhow::bail!(
            "{address} means nothing to side {from:?} in {} network(s) looked at",
            networks.len()
        );
    }
    let json = serde_json::to_value(
        answers
            .iter()
            .map(|(n, m)| serde_json::json!({"network": n, "meaning": m}))
            .collect::<Vec<_>>(),
    )?;
    print(output, &json, |out| {
        for (network, m) in &answers {
            writeln!(
                out,
                "{network}: from side {from}, {address} is side {}'s host {}",
                m.host_side, m.real
            )?;
            for (side, seen) in &m.seen_by {
                writeln!(out, "  side {side} reaches that host as {seen}")?;
            }
        }
        Ok(())
    })
}
