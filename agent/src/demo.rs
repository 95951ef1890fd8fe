//! `mirrornet-agent demo`: the seed scenario, end to end, in network namespaces.
//!
//! It builds two LANs that both use 192.168.2.0/24 (hosts .10 and .11 on each), a middleman
//! namespace between them, runs this very binary's `apply` there, and shows what a user would
//! want to see: pings crossing with the addresses each host sees (tcpdump on the receiver),
//! the identical 5-tuple opened from both sides at once and answered by the right servers, the
//! conntrack entries in their zones; then `delete` and the namespaces go.
//!
//! Without `--file`, a second act follows: the on-link example, where the hosts have an
//! address and nothing else (no route, no gateway), and still reach their twins, because the
//! middleman answers ARP for the alias addresses inside their own subnet.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mirrornet_api::{ValidNetwork, file};

use crate::lab::{MIDDLEMAN, Scenario, alias_of, wait_for};

const SEED: &str = include_str!("../../examples/seed.yaml");
const ON_LINK: &str = include_str!("../../examples/on-link.yaml");
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
    match file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            play(style, &f.display().to_string(), &text, "demo")?;
        }
        None => {
            play(style, "seed.yaml", SEED, "demo")?;
            println!(
                "\n{}",
                style.paint(
                    "1",
                    "Second act: hosts nobody may touch (examples/on-link.yaml)"
                )
            );
            play(style, "on-link.yaml", ON_LINK, "demo2")?;
        }
    }
    println!(
        "\n{} in {:.1} s; every namespace removed.",
        style.good("done"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One network from `text`, shown end to end in namespaces tagged `tag`.
fn play(style: Style, origin: &str, text: &str, tag: &str) -> Result<()> {
    let networks = file::load_str(origin, text)?;
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
    std::fs::write(&spec_file.0, text)?;
    let agent = std::env::current_exe()?;
    let agent = agent.to_str().context("agent path is not UTF-8")?;
    let spec_path = spec_file.0.to_str().context("temp path is not UTF-8")?;

    let (a, b) = (valid.sides[0].name.as_str(), valid.sides[1].name.as_str());
    introduce(&style, network.name(), valid, a, b);
    let mut demo = Demo {
        scenario: build(&style, valid, tag)?,
        style,
        valid,
        agent,
        spec_path,
        a,
        b,
        act: std::cell::Cell::new(1),
    };
    demo.apply()?;
    if valid.on_link() {
        demo.untouched()?;
        demo.ping_across()?;
        demo.answered()?;
    } else {
        demo.ping_across()?;
        demo.identical_tuples()?;
        demo.zones()?;
    }
    demo.show()?;
    demo.delete()?;
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
    /// The number of the last act shown.
    act: std::cell::Cell<usize>,
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

/// The topology in network namespaces.
fn build(style: &Style, valid: &ValidNetwork, tag: &str) -> Result<Scenario> {
    style.heading(1, "Build the topology in network namespaces");
    let scenario = Scenario::build(tag, valid, &[10, 11], false)?;
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
    /// The heading of the next act.
    fn next(&self, text: &str) {
        self.act.set(self.act.get() + 1);
        self.style.heading(self.act.get(), text);
    }

    /// On-link: what the hosts hold — an address, and no route to anywhere.
    fn untouched(&self) -> Result<()> {
        self.next("The hosts hold an address and nothing else: no route, no gateway");
        for side in [self.a, self.b] {
            let host = format!("{side}-10");
            let routes = self.scenario.lab.stdout(&host, &["ip", "route", "show"])?;
            println!("  {} ip route:", self.style.host(&host));
            for line in routes.lines() {
                println!("    {}", self.style.dim(line));
            }
        }
        Ok(())
    }

    /// On-link: who answered the ARP request for the alias address.
    fn answered(&self) -> Result<()> {
        self.next("Who answered ARP for the alias: the middleman, on each side");
        for (from, to, interface) in [
            (self.a, self.b, self.valid.sides[0].interface.as_str()),
            (self.b, self.a, self.valid.sides[1].interface.as_str()),
        ] {
            let host = format!("{from}-10");
            let target = alias_of(self.valid, to, 11).to_string();
            let entry = self
                .scenario
                .lab
                .stdout(&host, &["ip", "neigh", "show", &target])?;
            let mac = self.scenario.lab.stdout(
                MIDDLEMAN,
                &["cat", &format!("/sys/class/net/{interface}/address")],
            )?;
            println!(
                "  {} ip neigh: {}   (middleman {interface} is {})",
                self.style.host(&host),
                entry.trim(),
                self.style.good(mac.trim())
            );
        }
        let proxies = self
            .scenario
            .lab
            .stdout(MIDDLEMAN, &["ip", "neigh", "show", "proxy"])?;
        let count = proxies.lines().count();
        let first = proxies.lines().next().unwrap_or_default();
        println!(
            "  {}",
            self.style.dim(&format!(
                "middleman: {count} proxy entries (ip neigh show proxy), e.g. {first}"
            ))
        );
        Ok(())
    }

    /// `mirrornet-agent apply` on the middleman.
    fn apply(&self) -> Result<()> {
        let (style, scenario, agent, spec_path) =
            (&self.style, &self.scenario, self.agent, self.spec_path);
        self.next("Apply the network on the middleman: mirrornet-agent apply");
        let out = scenario
            .lab
            .stdout(MIDDLEMAN, &[agent, "apply", "--file", spec_path])?;
        // One line per proxy entry is what `plan` is for; here they are counted.
        let proxies = out
            .lines()
            .filter(|l| l.starts_with("+ neigh proxy"))
            .count();
        for line in out.lines() {
            if line.starts_with("+ neigh proxy") {
                continue;
            }
            if line.contains(": converged") && proxies > 0 {
                println!(
                    "  {}",
                    style.dim(&format!(
                        "+ neigh proxy ... ({proxies} alias addresses answered for)"
                    ))
                );
            }
            println!("  {}", style.dim(line));
        }

        Ok(())
    }

    /// A ping each way, seen from both ends.
    fn ping_across(&self) -> Result<()> {
        let (style, scenario, valid, a, b) =
            (&self.style, &self.scenario, self.valid, self.a, self.b);
        self.next("Ping across, seen from both ends");
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

    /// The identical 5-tuple from both sides at once, each answered by the right server.
    fn identical_tuples(&mut self) -> Result<()> {
        self.next("The same 5-tuple from both sides at once: each reaches the right server");
        let (style, scenario, valid, agent, a, b) = (
            &self.style,
            &mut self.scenario,
            self.valid,
            self.agent,
            self.a,
            self.b,
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

    /// Conntrack on the middleman, one entry per side in its own zone.
    fn zones(&self) -> Result<()> {
        let (style, scenario) = (&self.style, &self.scenario);
        self.next("Conntrack on the middleman: one entry per side, in its own zone");
        let entries = scenario
            .lab
            .stdout(MIDDLEMAN, &["conntrack", "-L", "-p", "tcp"])?;
        for line in entries.lines() {
            println!("  {}", zone_highlight(style, line));
        }

        Ok(())
    }

    /// `mirrornet-agent show`.
    fn show(&self) -> Result<()> {
        let (style, scenario, agent) = (&self.style, &self.scenario, self.agent);
        self.next("What the node holds: mirrornet-agent show");
        let shown = scenario.lab.stdout(MIDDLEMAN, &[agent, "show"])?;
        for line in shown.lines() {
            println!("  {}", style.dim(line));
        }

        Ok(())
    }

    /// `mirrornet-agent delete`, and nothing left.
    fn delete(&self) -> Result<()> {
        let (style, scenario, agent, spec_path) =
            (&self.style, &self.scenario, self.agent, self.spec_path);
        self.next("Remove it: mirrornet-agent delete");
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
