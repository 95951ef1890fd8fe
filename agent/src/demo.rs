//! `mirrornet-agent demo`: the seed scenario, end to end, in network namespaces.
//!
//! It builds two LANs that both use 192.168.2.0/24 (hosts .10 and .11 on each), a middleman
//! namespace between them, runs this very binary's `apply` there, and shows what a user would
//! want to see: pings crossing with the addresses each host sees (tcpdump on the receiver),
//! the identical 5-tuple opened from both sides at once and answered by the right servers, the
//! conntrack entries in their zones; then `delete` and the namespaces go.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mirrornet_api::{ValidNetwork, file};

use crate::lab::{MIDDLEMAN, Scenario, alias_of, wait_for};

const SEED: &str = include_str!("../../examples/seed.yaml");
const PORT: u16 = 7000;
const CLIENT_PORT: u16 = 40000;

#[derive(Debug, Clone, Copy)]
struct Style {
    colour: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn heading(&self, n: usize, text: &str) {
        println!("\n{}", self.paint("1;36", &format!("{n}. {text}")));
    }
    fn host(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn good(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// Deletes the temporary spec file however the demo ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn run(file: Option<&Path>) -> Result<()> {
    for tool in ["ip", "nft", "conntrack", "ping", "tcpdump"] {
        if which(tool).is_none() {
            bail!(
                "the demo needs `{tool}` (Debian: apt-get install iproute2 nftables conntrack \
                 iputils-ping tcpdump; `cargo xtask demo` installs them)"
            );
        }
    }
    let started = Instant::now();
    let style = Style {
        colour: std::io::stdout().is_terminal(),
    };
    let text = match file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => SEED.to_owned(),
    };
    let networks = file::load_str(
        &file
            .map(|f| f.display().to_string())
            .unwrap_or("seed.yaml".into()),
        &text,
    )?;
    let network = networks
        .first()
        .context("the file holds no MirrorNetwork")?;
    let valid = &network.valid;
    // The demo's hosts are .10 and .11 of the subnet.
    let host_bits = match valid.subnet {
        ipnet::IpNet::V4(n) => 32 - u32::from(n.prefix_len()),
        ipnet::IpNet::V6(n) => 128 - u32::from(n.prefix_len()),
    };
    if host_bits < 4 {
        bail!(
            "the demo puts hosts .10 and .11 on each side; {} is too small for them",
            valid.subnet
        );
    }
    if valid.sides.len() != 2 {
        bail!(
            "the demo shows two-sided networks; this one has {}",
            valid.sides.len()
        );
    }
    let spec_file =
        TempFile(std::env::temp_dir().join(format!("mirrornet-demo-{}.yaml", std::process::id())));
    std::fs::write(&spec_file.0, &text)?;
    let agent = std::env::current_exe()?;
    let agent = agent.to_str().context("agent path is not UTF-8")?;
    let spec_path = spec_file.0.to_str().context("temp path is not UTF-8")?;

    let (a, b) = (valid.sides[0].name.as_str(), valid.sides[1].name.as_str());
    introduce(&style, network.name(), valid, a, b);
    let mut demo = Demo {
        scenario: build(&style, valid)?,
        style,
        valid,
        agent,
        spec_path,
        a,
        b,
    };
    demo.apply()?;
    demo.ping_across()?;
    demo.identical_tuples()?;
    demo.zones()?;
    demo.show()?;
    demo.delete()?;
    drop(demo);
    println!(
        "\n{} in {:.1} s; every namespace removed.",
        style.good("done"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What every act of the demo works with.
struct Demo<'a> {
    style: Style,
    scenario: Scenario,
    valid: &'a ValidNetwork,
    agent: &'a str,
    spec_path: &'a str,
    a: &'a str,
    b: &'a str,
}

/// The opening lines: which network joins which LANs, and how each side sees the other.
fn introduce(style: &Style, name: &str, valid: &ValidNetwork, a: &str, b: &str) {
    println!(
        "{}",
        style.paint(
            "1",
            &format!(
                "mirrornet demo: network {:?} joins two LANs that both use {}",
                name, valid.subnet
            )
        )
    );
    println!(
        "{a} reaches {b}'s hosts as {}, {b} reaches {a}'s hosts as {}.",
        valid.sides[1].alias, valid.sides[0].alias
    );
}

/// Act 1: the topology in network namespaces.
fn build(style: &Style, valid: &ValidNetwork) -> Result<Scenario> {
    style.heading(1, "Build the topology in network namespaces");
    let scenario = Scenario::build("demo", valid, &[10, 11], false)?;
    for side in &scenario.sides {
        let hosts: Vec<String> = side
            .hosts
            .iter()
            .map(|h| format!("{} {}", style.host(&h.ns), h.address))
            .collect();
        println!(
            "  {:<8} middleman {} ── LAN ── {}",
            side.name,
            side.interface,
            hosts.join(", ")
        );
    }
    println!(
        "  {}",
        style.dim(&format!(
            "(namespaces {}-*)",
            scenario.lab.ns("").trim_end_matches('-')
        ))
    );

    Ok(scenario)
}

impl Demo<'_> {
    /// Act 2: `mirrornet-agent apply` on the middleman.
    fn apply(&self) -> Result<()> {
        let (style, scenario, agent, spec_path) =
            (&self.style, &self.scenario, self.agent, self.spec_path);
        style.heading(
            2,
            "Apply the network on the middleman: mirrornet-agent apply",
        );
        let out = scenario
            .lab
            .stdout(MIDDLEMAN, &[agent, "apply", "--file", spec_path])?;
        for line in out.lines() {
            println!("  {}", style.dim(line));
        }

        Ok(())
    }

    /// Act 3: a ping each way, seen from both ends.
    fn ping_across(&self) -> Result<()> {
        let (style, scenario, valid, a, b) =
            (&self.style, &self.scenario, self.valid, self.a, self.b);
        style.heading(3, "Ping across, seen from both ends");
        for (from, to) in [(a, b), (b, a)] {
            let target = alias_of(valid, to, 11);
            let receiver = format!("{to}-11");
            let sender = format!("{from}-10");
            let capture = Capture::start(scenario, &receiver)?;
            let ping = scenario.lab.stdout(
                &sender,
                &["ping", "-c", "1", "-W", "2", &target.to_string()],
            )?;
            let seen = capture.finish()?;
            println!(
                "  {} pings {}:",
                style.host(&sender),
                style.good(&target.to_string())
            );
            if let Some(reply) = ping.lines().find(|l| l.contains("bytes from")) {
                println!("    {} sees    {}", style.host(&sender), reply.trim());
            }
            for line in seen.lines().filter(|l| l.contains("ICMP")) {
                println!("    {} sees   {}", style.host(&receiver), line.trim());
            }
        }

        Ok(())
    }

    /// Act 4: the identical 5-tuple from both sides at once, each answered by the right server.
    fn identical_tuples(&mut self) -> Result<()> {
        let (style, scenario, valid, agent, a, b) = (
            &self.style,
            &mut self.scenario,
            self.valid,
            self.agent,
            self.a,
            self.b,
        );
        style.heading(
            4,
            "The same 5-tuple from both sides at once: each reaches the right server",
        );
        for side in [a, b] {
            let identity = format!("{side}-11");
            scenario.lab.spawn(
                &identity,
                &[
                    agent,
                    "probe",
                    "serve",
                    "--port",
                    &PORT.to_string(),
                    "--identity",
                    &identity,
                    "--hold-ms",
                    "300",
                ],
            )?;
        }
        wait_listening(scenario, &[format!("{a}-11"), format!("{b}-11")])?;
        let mut clients = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            let target = format!("{}:{PORT}", alias_of(valid, to, 11));
            let mut command = scenario.lab.command(
                &format!("{from}-10"),
                &[
                    agent,
                    "probe",
                    "connect",
                    &target,
                    "--from-port",
                    &CLIENT_PORT.to_string(),
                ],
            );
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            clients.push((from, target, command.spawn()?));
        }
        for (from, target, child) in clients {
            let output = child.wait_with_output()?;
            let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if !output.status.success() {
                bail!(
                    "{from}-10 -> {target} failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let (server, peer) = answer.split_once(' ').unwrap_or((&answer, ""));
            println!(
                "  {} {}:{CLIENT_PORT} -> {target}   answered by {}, which saw the client as {}",
                style.host(&format!("{from}-10")),
                scenario.side(from).host(10).address,
                style.good(server),
                style.good(peer)
            );
        }

        Ok(())
    }

    /// Act 5: conntrack on the middleman, one entry per side in its own zone.
    fn zones(&self) -> Result<()> {
        let (style, scenario) = (&self.style, &self.scenario);
        style.heading(
            5,
            "Conntrack on the middleman: one entry per side, in its own zone",
        );
        let entries = scenario
            .lab
            .stdout(MIDDLEMAN, &["conntrack", "-L", "-p", "tcp"])?;
        for line in entries.lines() {
            println!("  {}", zone_highlight(style, line));
        }

        Ok(())
    }

    /// Act 6: `mirrornet-agent show`.
    fn show(&self) -> Result<()> {
        let (style, scenario, agent) = (&self.style, &self.scenario, self.agent);
        style.heading(6, "What the node holds: mirrornet-agent show");
        let shown = scenario.lab.stdout(MIDDLEMAN, &[agent, "show"])?;
        for line in shown.lines() {
            println!("  {}", style.dim(line));
        }

        Ok(())
    }

    /// Act 7: `mirrornet-agent delete`, and nothing left.
    fn delete(&self) -> Result<()> {
        let (style, scenario, agent, spec_path) =
            (&self.style, &self.scenario, self.agent, self.spec_path);
        style.heading(7, "Remove it: mirrornet-agent delete");
        let out = scenario
            .lab
            .stdout(MIDDLEMAN, &[agent, "delete", "--file", spec_path])?;
        println!("  {}", style.dim(out.lines().last().unwrap_or("removed")));
        let show = scenario.lab.stdout(MIDDLEMAN, &[agent, "show"])?;
        println!("  {}", style.dim(show.trim()));
        Ok(())
    }
}

fn zone_highlight(style: &Style, line: &str) -> String {
    line.split(' ')
        .map(|w| {
            if w.starts_with("zone") {
                style.good(w)
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// tcpdump on a host's eth0 for the duration of one exchange.
struct Capture {
    child: std::process::Child,
}

impl Capture {
    fn start(scenario: &Scenario, ns: &str) -> Result<Self> {
        let mut command = scenario.lab.command(
            ns,
            &[
                "tcpdump",
                "-l",
                "-n",
                "-i",
                "eth0",
                "-c",
                "2",
                "icmp or icmp6",
            ],
        );
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().context("starting tcpdump")?;
        // tcpdump says "listening on" once its capture is attached.
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("tcpdump did not start listening")?;
        Ok(Self { child })
    }

    fn finish(mut self) -> Result<String> {
        // tcpdump exits by itself once it has its packet (`-c`); a capture that saw nothing
        // is stopped after 3 s.
        let child = &mut self.child;
        wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
            child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let output = self.child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn wait_listening(scenario: &Scenario, namespaces: &[String]) -> Result<()> {
    for ns in namespaces {
        let listening = || {
            let out = scenario.lab.stdout(ns, &["ss", "-Htln"]).ok()?;
            out.contains(&format!(":{PORT}")).then_some(())
        };
        if wait_for(Duration::from_secs(5), Duration::from_millis(20), listening).is_none() {
            bail!("the probe server in {ns} did not start");
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}
