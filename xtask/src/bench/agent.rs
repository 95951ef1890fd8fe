//! The agent under test, driven through its file-mode CLI inside a lab namespace, and the
//! MirrorNetwork files the bench generates for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mirrornet_agent::lab::wait_for;
use serde_json::Value;

use super::lab::Lab;

/// One generated two-sided network: subnet `10.H.L.0/24`, alias `10.(64+H).L.0/24` on both
/// sides (H, L = high and low byte of the index), its own pair of interfaces.
#[derive(Debug, Clone)]
pub struct Net {
    pub index: usize,
    pub a: String,
    pub b: String,
}

impl Net {
    fn octets(&self) -> (usize, usize) {
        (self.index >> 8, self.index & 255)
    }
    pub fn name(&self) -> String {
        format!("bench-{:04}", self.index)
    }
    pub fn subnet(&self) -> String {
        let (h, l) = self.octets();
        format!("10.{h}.{l}.0/24")
    }
    pub fn alias(&self) -> String {
        let (h, l) = self.octets();
        format!("10.{}.{l}.0/24", 64 + h)
    }
    /// `.n` of the subnet.
    pub fn host(&self, n: u8) -> String {
        let (h, l) = self.octets();
        format!("10.{h}.{l}.{n}")
    }
    /// `.n` of the alias prefix.
    pub fn alias_host(&self, n: u8) -> String {
        let (h, l) = self.octets();
        format!("10.{}.{l}.{n}", 64 + h)
    }

    fn yaml(&self) -> String {
        format!(
            "apiVersion: mirrornet.io/v1alpha1\nkind: MirrorNetwork\nmetadata:\n  name: {name}\n\
             spec:\n  nodeSelector:\n    matchLabels:\n      mirrornet.io/gateway: \"true\"\n  \
             subnet: {subnet}\n  gatewayAddress: {gw}\n  sides:\n    \
             - {{name: inner, interface: {a}, aliasPrefix: {alias}}}\n    \
             - {{name: outer, interface: {b}, aliasPrefix: {alias}}}\n",
            name = self.name(),
            subnet = self.subnet(),
            gw = self.host(1),
            a = self.a,
            b = self.b,
            alias = self.alias(),
        )
    }
}

/// Writes `nets` as a multi-document MirrorNetwork file.
pub fn write_file(path: &Path, nets: &[Net]) -> Result<()> {
    let text: Vec<String> = nets.iter().map(Net::yaml).collect();
    std::fs::write(path, text.join("---\n")).with_context(|| format!("writing {}", path.display()))
}

/// The agent binary, run in one lab namespace with its own state directory.
#[derive(Debug, Clone)]
pub struct Agent {
    pub binary: PathBuf,
    pub ns: String,
    pub state_dir: PathBuf,
}

/// What one CLI call took and reported.
#[derive(Debug, Clone)]
pub struct Call {
    pub seconds: f64,
    pub writes: u64,
}

impl Agent {
    /// The agent with `args`, and the bench's id ranges ([`super::RANGES`]) on every call.
    fn command(&self, lab: &Lab, args: &[&str]) -> Command {
        let bin = self.binary.to_string_lossy().into_owned();
        let ranges = super::RANGES.args();
        let mut full = vec![bin.as_str()];
        full.extend(ranges.iter().map(String::as_str));
        full.extend_from_slice(args);
        let mut c = lab.command(&self.ns, &full);
        c.env("MIRRORNET_STATE_DIR", &self.state_dir);
        c
    }

    fn timed(&self, lab: &Lab, verb: &str, file: &Path) -> Result<Call> {
        let f = file.to_string_lossy().into_owned();
        let started = Instant::now();
        let out = self
            .command(lab, &[verb, "--file", &f, "-o", "json"])
            .output()?;
        let seconds = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "agent {verb} --file {f} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let writes = json.get("writes").and_then(Value::as_u64).unwrap_or(0);
        Ok(Call { seconds, writes })
    }

    /// `apply --file`: wall time of the whole command (process start included) and writes.
    pub fn apply(&self, lab: &Lab, file: &Path) -> Result<Call> {
        self.timed(lab, "apply", file)
    }

    pub fn delete(&self, lab: &Lab, file: &Path) -> Result<Call> {
        self.timed(lab, "delete", file)
    }

    /// `plan --file`; the error text when the plan cannot be made.
    pub fn plan_error(&self, lab: &Lab, file: &Path) -> Result<Option<String>> {
        let f = file.to_string_lossy().into_owned();
        let out = self.command(lab, &["plan", "--file", &f]).output()?;
        Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }

    /// `show -o json`.
    pub fn show(&self, lab: &Lab) -> Result<Value> {
        let out = self.command(lab, &["show", "-o", "json"]).output()?;
        if !out.status.success() {
            bail!(
                "agent show: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Starts `run --file`, and waits until `/readyz` answers 2xx.
    pub fn run(&self, lab: &mut Lab, file: &Path, port: u16) -> Result<u32> {
        let f = file.to_string_lossy().into_owned();
        let address = format!("127.0.0.1:{port}");
        let child: Child = self
            .command(lab, &["run", "--file", &f, "--metrics-address", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        lab.adopt(child);
        let bin = self.binary.to_string_lossy().into_owned();
        let ready = || {
            lab.command(&self.ns, &[&bin, "probe", "http-get", &address, "/readyz"])
                .output()
                .is_ok_and(|o| o.status.success())
                .then_some(pid)
        };
        wait_for(Duration::from_secs(120), Duration::from_millis(100), ready)
            .context("agent run did not become ready within 120 s")
    }

    /// Fetches `/metrics` of a running agent.
    pub fn metrics(&self, lab: &Lab, port: u16) -> Result<String> {
        let bin = self.binary.to_string_lossy().into_owned();
        let address = format!("127.0.0.1:{port}");
        Ok(lab.stdout(&self.ns, &[&bin, "probe", "http-get", &address, "/metrics"])?)
    }
}

/// Resident set size of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// CPU seconds (user + system) `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    Ok(ticks / hz)
}
