//! Driving the real `mirrornet-agent` binary on a lab's middleman namespace, as a user would.
//!
//! The binary is the one `cargo xtask test` builds (`target/debug/mirrornet-agent`), or
//! `MIRRORNET_AGENT_BIN`. Kernel tests never skip: without root or without the binary they fail
//! and say why.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use mirrornet_agent::lab::{Lab, MIDDLEMAN, Scenario, wait_for};
use mirrornet_agent::nft::ObservedNft;
use mirrornet_agent::nft::nfnetlink::Nfnetlink;
use mirrornet_api::file::{LoadedNetwork, load_str};
use serde_json::Value;

/// Fails the test unless it runs as root: namespaces need it, and a kernel test that cannot
/// run must not pass.
pub fn require_root() {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("running id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "kernel scenario tests must run as root (cargo xtask test)"
    );
}

/// The agent binary under test.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MIRRORNET_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/mirrornet-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p mirrornet-agent` (cargo xtask test does) \
         or point MIRRORNET_AGENT_BIN at it",
        bin.display()
    );
    bin
}

/// A spec file on disk for the agent to read, removed on drop.
#[derive(Debug)]
pub struct SpecFile {
    pub path: PathBuf,
    pub networks: Vec<LoadedNetwork>,
}

impl SpecFile {
    pub fn new(tag: &str, yaml: &str) -> Self {
        let networks = load_str(tag, yaml).expect("test spec is valid");
        Self::raw(tag, yaml, networks)
    }

    /// A file whose content is not necessarily valid.
    pub fn raw(tag: &str, yaml: &str, networks: Vec<LoadedNetwork>) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "mirrornet-e2e-{tag}-{}-{n}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, yaml).expect("writing spec file");
        Self { path, networks }
    }

    /// The same file with its text rewritten (and re-read).
    pub fn with_text(self, edit: impl FnOnce(&str) -> String) -> Self {
        let text = edit(&std::fs::read_to_string(&self.path).expect("reading spec file"));
        std::fs::write(&self.path, &text).expect("writing spec file");
        let networks = load_str("edited", &text).unwrap_or_default();
        Self {
            path: self.path.clone(),
            networks,
        }
        .keep(self)
    }

    fn keep(self, old: Self) -> Self {
        // The old value's Drop would remove the file both now share.
        std::mem::forget(old);
        self
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs the agent with `args` in the middleman namespace; returns its output whatever the
/// exit status.
pub fn agent(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = agent_bin();
    let mut command = lab.command(MIDDLEMAN, &[bin.to_str().expect("utf-8 path")]);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("running the agent")
}

/// The backend the suite runs with: `MIRRORNET_E2E_BACKEND` (`vrf`, `policy-routing`), else
/// the agent's own choice (`auto`). The VM tests run the same suites with `vrf`.
pub fn backend() -> String {
    std::env::var("MIRRORNET_E2E_BACKEND").unwrap_or_else(|_| "auto".into())
}

/// Whether the suite runs with VRF devices.
pub fn vrf() -> bool {
    backend() == "vrf"
}

/// The seed example (examples/seed.yaml).
pub const SEED: &str = include_str!("../../examples/seed.yaml");

/// The seed network again as a second network of the same node: named `lab-twin`, on eth3 and
/// eth4, subnet 172.16.2.0/24 with alias 172.16.3.0/24.
pub fn second_seed() -> String {
    seed_as("lab-twin", ["eth3", "eth4"], "172.16")
}

/// The seed as network `name` on the side interfaces `interfaces` (inner, outer), with subnet
/// `<prefix>.2.0/24` and alias `<prefix>.3.0/24`, so that one node can hold several.
pub fn seed_as(name: &str, interfaces: [&str; 2], prefix: &str) -> String {
    SEED.replace("name: plant-twin", &format!("name: {name}"))
        .replace("eth1", interfaces[0])
        .replace("eth2", interfaces[1])
        .replace("192.168.2.", &format!("{prefix}.2."))
        .replace("192.168.3.", &format!("{prefix}.3."))
}

/// The seed topology (hosts .10 and .11 on each side, optionally the unrelated `eth9` LAN) and
/// its spec file. Fails unless root.
pub fn seed_scenario(tag: &str, extra_interface: bool) -> (Scenario, SpecFile) {
    scenario_of(tag, SEED, extra_interface)
}

/// The topology of the first network in `yaml` (hosts .10 and .11 on every side) and the file.
pub fn scenario_of(tag: &str, yaml: &str, extra_interface: bool) -> (Scenario, SpecFile) {
    require_root();
    let spec = SpecFile::new(tag, yaml);
    let scenario = Scenario::build(tag, &spec.networks[0].valid, &[10, 11], extra_interface)
        .expect("building the scenario's topology");
    (scenario, spec)
}

/// The middleman's nft table as the agent reads it (over nfnetlink) and as the listing
/// `nft -j list table` gives parses, both read in the middleman: a test thread enters its
/// namespace (the socket and the nft process both belong to the namespace of the thread that
/// makes them).
pub fn nft_table_both_ways(lab: &Lab) -> (ObservedNft, ObservedNft) {
    let path = format!("/run/netns/{}", lab.ns(MIDDLEMAN));
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).expect("opening the middleman's namespace");
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the middleman's namespace");
        let (_, read) = Nfnetlink::open()
            .and_then(|mut reader| reader.observe())
            .expect("reading the table over nfnetlink");
        let listed = mirrornet_agent::nft::command::list()
            .expect("nft -j list table")
            .map(|listing| mirrornet_agent::nft::parse_listing(&listing))
            .unwrap_or_default();
        (read, listed)
    })
    .join()
    .expect("the reading thread")
}

/// Builds `network`'s side LANs on a lab that already has a middleman, so that one node holds
/// several networks: per side a bridged LAN `<tag>-<side>-lan` joined to the middleman by the
/// side's interface, and hosts `<tag>-<side>-<n>` at `.n` of the subnet, routed via the
/// gateway.
pub fn add_network(lab: &mut Lab, network: &mirrornet_api::ValidNetwork, tag: &str, hosts: &[u32]) {
    for side in &network.sides {
        let lan = format!("{tag}-{}-lan", side.name.as_str());
        lab.add_namespace(&lan).expect("adding a LAN");
        for cmd in ["link add br0 type bridge", "link set br0 up"] {
            ip(lab, &lan, cmd);
        }
        lab.veth(MIDDLEMAN, side.interface.as_str(), &lan, "uplink")
            .expect("joining the LAN to the middleman");
        ip(lab, &lan, "link set uplink master br0");
        for &n in hosts {
            let host = format!("{tag}-{}-{n}", side.name.as_str());
            lab.add_namespace(&host).expect("adding a host");
            let port = format!("h{n}");
            lab.veth(&host, "eth0", &lan, &port)
                .expect("joining the host");
            ip(lab, &lan, &format!("link set {port} master br0"));
            let address = mirrornet_agent::lab::nth(network.hosts, n);
            let address = mirrornet_agent::lab::with_prefix(address, network.subnet);
            lab.host(&host, address, network.gateway)
                .unwrap_or_else(|e| panic!("in {host}: {e}"));
        }
    }
}

fn ip(lab: &Lab, ns: &str, command: &str) {
    run_ip(lab, ns, &command.split(' ').collect::<Vec<_>>());
}

fn run_ip(lab: &Lab, ns: &str, args: &[&str]) {
    let mut full = vec!["ip"];
    full.extend(args);
    lab.exec(ns, &full)
        .unwrap_or_else(|e| panic!("in {ns}: {e}"));
}

/// How many steps `apply` would take now (`plan -o json`): how tests enumerate failure points.
pub fn planned_steps(lab: &Lab, spec: &SpecFile) -> usize {
    let out = agent(lab, &["plan", "--file", spec.path(), "-o", "json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("plan -o json prints JSON");
    v["steps"].as_array().map(Vec::len).unwrap_or_default()
}

/// `apply --file F -o json`, which must succeed; returns its JSON report. `extra` may name a
/// `--backend`; otherwise the suite's [`backend`] is used.
pub fn apply(lab: &Lab, spec: &SpecFile, extra: &[&str]) -> Value {
    let mut args = vec!["apply", "--file", spec.path(), "-o", "json"];
    let backend = backend();
    if !extra.contains(&"--backend") {
        args.extend(["--backend", backend.as_str()]);
    }
    args.extend(extra);
    let out = agent(lab, &args, &[]);
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("apply -o json prints JSON")
}

/// `delete --file F -o json`, which must succeed.
pub fn delete(lab: &Lab, spec: &SpecFile) -> Value {
    let out = agent(lab, &["delete", "--file", spec.path(), "-o", "json"], &[]);
    assert!(
        out.status.success(),
        "delete failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("delete -o json prints JSON")
}

/// The conntrack zone allocated to `side` in an apply report.
pub fn zone_of(report: &Value, side: &str) -> u64 {
    report["networks"][0]["allocation"]["sides"]
        .as_array()
        .expect("allocation sides")
        .iter()
        .find(|s| s["side"] == side)
        .and_then(|s| s["zone"].as_u64())
        .unwrap_or_else(|| panic!("no zone for side {side} in {report}"))
}

/// Starts a probe server on `ns` that answers with `identity` and the peer it saw.
pub fn serve(scenario: &mut Scenario, ns: &str, port: u16, hold_ms: u64) {
    let bin = agent_bin();
    let (port_s, hold) = (port.to_string(), hold_ms.to_string());
    scenario
        .lab
        .spawn(
            ns,
            &[
                bin.to_str().expect("utf-8 path"),
                "probe",
                "serve",
                "--port",
                &port_s,
                "--identity",
                ns,
                "--hold-ms",
                &hold,
            ],
        )
        .expect("starting probe server");
    let listening = || {
        let sockets = scenario.lab.stdout(ns, &["ss", "-Htln"]).expect("ss");
        sockets.contains(&format!(":{port} ")).then_some(())
    };
    wait_for(Duration::from_secs(5), Duration::from_millis(10), listening)
        .unwrap_or_else(|| panic!("probe server in {ns} did not start"));
}

/// What a probe client got: the server's identity and the client address the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub server: String,
    pub seen_as: String,
}

impl Answer {
    /// The probe client's line, `<server identity> <address:port it saw>`.
    pub fn parse(line: &str) -> Result<Self, String> {
        let (server, seen_as) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("unexpected probe answer {line:?}"))?;
        Ok(Self {
            server: server.into(),
            seen_as: seen_as.into(),
        })
    }
}

/// The original-direction conntrack zone (`zone-orig=`, where mirrornet sets it) of each entry
/// of a `conntrack -L` listing, in listing order; an entry without one yields nothing.
pub fn conntrack_zones(listing: &str) -> Vec<u64> {
    listing
        .lines()
        .filter_map(|entry| {
            entry
                .split_whitespace()
                .find_map(|t| t.strip_prefix("zone-orig=")?.parse().ok())
        })
        .collect()
}

/// Connects from `ns` to `to` (optionally from a fixed port) and returns the answer.
pub fn connect(lab: &Lab, ns: &str, to: &str, from_port: Option<u16>) -> Result<Answer, String> {
    connect_within(lab, ns, to, from_port, std::time::Duration::from_secs(5))
}

/// [`connect`], giving up when the connection has not opened within `limit`: a connection the
/// middleman drops never opens, and a test expecting that need not wait long.
pub fn connect_within(
    lab: &Lab,
    ns: &str,
    to: &str,
    from_port: Option<u16>,
    limit: std::time::Duration,
) -> Result<Answer, String> {
    let bin = agent_bin();
    let port;
    let timeout = limit.as_millis().to_string();
    let mut args = vec![
        bin.to_str().expect("utf-8 path"),
        "probe",
        "connect",
        to,
        "--timeout-ms",
        &timeout,
    ];
    if let Some(p) = from_port {
        port = p.to_string();
        args.extend(["--from-port", &port]);
    }
    let out = lab.command(ns, &args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Answer::parse(&String::from_utf8_lossy(&out.stdout))
}

/// Pings `to` once from `ns`; true when a reply came back.
pub fn ping(lab: &Lab, ns: &str, to: &str) -> bool {
    lab.command(ns, &["ping", "-c", "1", "-W", "2", to])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Splits `ip:port` text as printed by the probe (IPv6 in brackets).
pub fn host_of(seen_as: &str) -> &str {
    let host = seen_as.rsplit_once(':').map(|(h, _)| h).unwrap_or(seen_as);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub use mirrornet_agent::lab::{alias_of, snapshot};

/// Asserts two snapshots are equal, printing a unified diff when they are not.
#[track_caller]
pub fn assert_same(expected: &str, actual: &str, context: &str) {
    if expected == actual {
        return;
    }
    let dir = std::env::temp_dir();
    let id = format!("{}-{:?}", std::process::id(), std::thread::current().id());
    let (a, b) = (
        dir.join(format!("mn-expected-{id}")),
        dir.join(format!("mn-actual-{id}")),
    );
    std::fs::write(&a, expected).expect("writing snapshot");
    std::fs::write(&b, actual).expect("writing snapshot");
    let diff = std::process::Command::new("diff")
        .arg("-u")
        .args([&a, &b])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    panic!("{context}: the namespace differs from the expected snapshot\n{diff}");
}

/// `mirrornet-agent run --file F` in the middleman namespace, killed on drop.
#[derive(Debug)]
pub struct RunningAgent {
    child: Option<std::process::Child>,
    args: Vec<String>,
    log: PathBuf,
}

/// Where the running agent serves its endpoints, inside the middleman namespace.
pub const ENDPOINTS: &str = "127.0.0.1:9090";

impl RunningAgent {
    pub fn start(lab: &Lab, spec: &SpecFile, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "run",
            "--file",
            spec.path(),
            "--metrics-address",
            ENDPOINTS,
            "--backend",
            &backend(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = spec.path.with_extension("log");
        let mut me = Self {
            child: None,
            args,
            log,
        };
        me.spawn(lab);
        me
    }

    fn spawn(&mut self, lab: &Lab) {
        let bin = agent_bin();
        let mut command = lab.command(MIDDLEMAN, &[bin.to_str().expect("utf-8 path")]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        command
            .args(&self.args)
            .env("MIRRORNET_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("starting the agent"));
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, lab: &Lab) {
        let mut last = (0, String::new());
        let ready = || {
            last = self.get(lab, "/readyz");
            (last.0 == 200).then_some(())
        };
        if wait_for(Duration::from_secs(10), Duration::from_millis(20), ready).is_none() {
            let (status, body) = last;
            panic!(
                "the agent did not become ready: /readyz last answered {status} {body:?}\n{}",
                self.log_text()
            );
        }
    }

    /// `GET path` on the agent's endpoints: status and body (status 0 when unreachable).
    pub fn get(&self, lab: &Lab, path: &str) -> (u16, String) {
        let bin = agent_bin();
        let out = lab
            .command(
                MIDDLEMAN,
                &[
                    bin.to_str().expect("utf-8"),
                    "probe",
                    "http-get",
                    ENDPOINTS,
                    path,
                ],
            )
            .output()
            .expect("running the http probe");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.split_once('\n') {
            Some((status, body)) => (status.trim().parse().unwrap_or(0), body.to_owned()),
            // Unreachable: the probe's own words say why (refused, timed out, no such netns).
            None => (0, String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }

    /// The value of a counter or gauge in `/metrics`.
    pub fn metric(&self, lab: &Lab, name: &str) -> f64 {
        let (_, text) = self.get(lab, "/metrics");
        metric_sum(&text, name).unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to end; returns its exit status.
    pub fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        child.wait().expect("waiting for the agent")
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self, lab: &Lab) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn(lab);
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The sum of the samples of metric `name` in a Prometheus text exposition, `None` when it
/// has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Polls `check` every millisecond until it holds; the time it took, or `None` after `limit`.
pub fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = std::time::Instant::now();
    wait_for(limit, Duration::from_millis(1), || {
        check().then(|| started.elapsed())
    })
}

/// Every host of each seed side reaches every host of the other by its alias, on `port`,
/// and the receiver sees the sender by its alias too.
pub fn crosses_both_ways_to_every_host(s: &mut Scenario, port: u16) {
    for side in ["inner", "outer"] {
        for n in [10, 11] {
            serve(s, &format!("{side}-{n}"), port, 0);
        }
    }
    for (from, to) in [("inner", "outer"), ("outer", "inner")] {
        for client in [10, 11] {
            for server in [10, 11] {
                let answer = connect(
                    &s.lab,
                    &format!("{from}-{client}"),
                    &format!("192.168.3.{server}:{port}"),
                    None,
                )
                .unwrap_or_else(|e| panic!("{from}-{client} -> {to}-{server}: {e}"));
                assert_eq!(answer.server, format!("{to}-{server}"));
                assert_eq!(host_of(&answer.seen_as), format!("192.168.3.{client}"));
            }
        }
    }
}

/// Host .10 of each side of a two-sided scenario pings host .11 of the other side by its alias,
/// and connects to it on `port`: the other side's .11 answers, and sees .10 by its alias, not
/// by its real (colliding) address.
pub fn tens_reach_the_other_sides_elevens(s: &mut Scenario, port: u16) {
    let net = s.network.clone();
    for side in &net.sides {
        serve(s, &format!("{}-11", side.name.as_str()), port, 0);
    }
    for (from, to) in [("inner", "outer"), ("outer", "inner")] {
        let target = alias_of(&net, to, 11);
        let client = format!("{from}-10");
        assert!(
            ping(&s.lab, &client, &target.to_string()),
            "{client} pings {target}"
        );
        let answer = connect(
            &s.lab,
            &client,
            &std::net::SocketAddr::new(target, port).to_string(),
            None,
        )
        .unwrap_or_else(|e| panic!("{client} -> {target}: {e}"));
        assert_eq!(answer.server, format!("{to}-11"));
        assert_eq!(
            host_of(&answer.seen_as),
            alias_of(&net, from, 10).to_string()
        );
    }
}

/// DESIGN §4.2: inner 2.10 and outer 2.10 open the identical 5-tuple (client port
/// `client_port` to 3.11:`port`) at the same time; each reaches the other side's .11, and
/// the middleman holds two conntrack entries, one in each side's zone (`zones`: inner's,
/// outer's).
pub fn identical_tuples_land_in_two_zones(
    s: &mut Scenario,
    zones: (u64, u64),
    port: u16,
    client_port: u16,
) {
    serve(s, "inner-11", port, 500);
    serve(s, "outer-11", port, 500);
    let net = s.network.clone();
    let alias = |side: &str, n: u32| alias_of(&net, side, n);
    let to_outer = std::net::SocketAddr::new(alias("outer", 11), port).to_string();
    let to_inner = std::net::SocketAddr::new(alias("inner", 11), port).to_string();
    let (a, b) = std::thread::scope(|scope| {
        let lab = &s.lab;
        let (to_outer, to_inner) = (to_outer.as_str(), to_inner.as_str());
        let a = scope.spawn(move || connect(lab, "inner-10", to_outer, Some(client_port)));
        let b = scope.spawn(move || connect(lab, "outer-10", to_inner, Some(client_port)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a.expect("inner-10 connects"), b.expect("outer-10 connects"));
    assert_eq!(
        a.server, "outer-11",
        "inner's connection must reach outer-11"
    );
    assert_eq!(
        b.server, "inner-11",
        "outer's connection must reach inner-11"
    );
    assert_eq!(host_of(&a.seen_as), alias("inner", 10).to_string());
    assert_eq!(host_of(&b.seen_as), alias("outer", 10).to_string());
    let entries = s
        .lab
        .stdout(
            MIDDLEMAN,
            &[
                "conntrack",
                "-L",
                "-p",
                "tcp",
                "--orig-port-src",
                &client_port.to_string(),
            ],
        )
        .unwrap();
    let lines: Vec<&str> = entries.lines().collect();
    assert_eq!(lines.len(), 2, "two conntrack entries expected:\n{entries}");
    let mut seen = conntrack_zones(&entries);
    seen.sort_unstable();
    let mut want = [zones.0, zones.1];
    want.sort_unstable();
    assert_eq!(seen, want, "one entry in each side's zone:\n{entries}");
    // The identical original tuple, where both sides use one alias prefix.
    let real = mirrornet_agent::lab::nth(net.hosts, 10);
    let tuple = format!(
        "src={real} dst={} sport={client_port} dport={port}",
        alias("outer", 11)
    );
    for line in lines {
        assert!(
            alias("outer", 11) != alias("inner", 11) || line.contains(&tuple),
            "both entries carry the identical original tuple: {line}"
        );
    }
}
