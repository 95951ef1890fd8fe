//! Driving the real `mirrornet-agent` binary on a lab's middleman namespace, as a user would.
//!
//! The binary is the one `cargo xtask test` builds (`target/debug/mirrornet-agent`), or
//! `MIRRORNET_AGENT_BIN`. Kernel tests never skip: without root or without the binary they fail
//! and say why.

use std::path::PathBuf;
use std::process::Output;

use mirrornet_agent::lab::{Lab, MIDDLEMAN, Scenario};
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

/// `apply --file F -o json`, which must succeed; returns its JSON report.
pub fn apply(lab: &Lab, spec: &SpecFile, extra: &[&str]) -> Value {
    let mut args = vec!["apply", "--file", spec.path(), "-o", "json"];
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let listening = scenario
            .lab
            .stdout(ns, &["ss", "-Htln"])
            .expect("ss")
            .contains(&format!(":{port} "));
        if listening {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probe server in {ns} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What a probe client got: the server's identity and the client address the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub server: String,
    pub seen_as: String,
}

/// Connects from `ns` to `to` (optionally from a fixed port) and returns the answer.
pub fn connect(lab: &Lab, ns: &str, to: &str, from_port: Option<u16>) -> Result<Answer, String> {
    let bin = agent_bin();
    let port;
    let mut args = vec![bin.to_str().expect("utf-8 path"), "probe", "connect", to];
    if let Some(p) = from_port {
        port = p.to_string();
        args.extend(["--from-port", &port]);
    }
    let out = lab.command(ns, &args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (server, seen_as) = line
        .split_once(' ')
        .ok_or_else(|| format!("unexpected probe answer {line:?}"))?;
    Ok(Answer {
        server: server.into(),
        seen_as: seen_as.into(),
    })
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
