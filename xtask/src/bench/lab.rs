//! Network namespaces the bench creates and removes: every address it uses lives in them,
//! nothing is configured in the namespace the bench runs in.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Prefix of every namespace the bench creates; a leftover one (from a run that was killed)
/// is recognised by it and removed at the start of the next run.
pub const PREFIX: &str = "mnb";

/// A set of namespaces (and the processes started in them) that disappears with the value.
#[derive(Debug)]
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

fn check(command: &mut Command) -> Result<Output> {
    let text = format!("{command:?}").replace('"', "");
    let output = command
        .output()
        .with_context(|| format!("starting {text}"))?;
    if !output.status.success() {
        bail!(
            "{text} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Removes namespaces left behind by bench runs whose process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing stale namespace {name}");
        kill_all_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

impl Lab {
    /// An empty lab named `mnb-<pid>-<tag>`.
    pub fn new(tag: &str) -> Self {
        Self {
            id: format!("{PREFIX}-{}-{tag}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    /// Creates namespace `short`, loopback up, no duplicate address detection.
    pub fn add(&mut self, short: &str) -> Result<()> {
        let name = self.ns(short);
        check(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name);
        self.exec(short, &["ip", "link", "set", "lo", "up"])?;
        self.exec(short, &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])?;
        Ok(())
    }

    pub fn command(&self, short: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(short)]).args(args);
        c
    }

    /// Runs `args` in `short`, failing with its stderr.
    pub fn exec(&self, short: &str, args: &[&str]) -> Result<Output> {
        check(&mut self.command(short, args))
    }

    pub fn stdout(&self, short: &str, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.exec(short, args)?.stdout).into_owned())
    }

    /// Runs a whole `ip -batch` script in `short` (one process for many objects).
    pub fn ip_batch(&self, short: &str, script: &str) -> Result<()> {
        let mut child = self
            .command(short, &["ip", "-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "ip -batch in {short} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts `args` in the background in `short`; killed with the lab.
    pub fn spawn(&mut self, short: &str, args: &[&str]) -> Result<u32> {
        let child = self
            .command(short, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.join(" ")))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Hands a started child to the lab, so it is killed with it.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Stops the background process `pid` (SIGTERM, then waits).
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(i);
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A veth pair `a_name` in `a` and `b_name` in `b`, both up.
    pub fn veth(&self, a: &str, a_name: &str, b: &str, b_name: &str) -> Result<()> {
        check(Command::new("ip").args([
            "link",
            "add",
            "name",
            a_name,
            "netns",
            &self.ns(a),
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            &self.ns(b),
        ]))?;
        self.exec(a, &["ip", "link", "set", a_name, "up"])?;
        self.exec(b, &["ip", "link", "set", b_name, "up"])?;
        Ok(())
    }

    /// A host end: address, default route via `gateway`.
    pub fn host(&self, ns: &str, dev: &str, cidr: &str, gateway: &str) -> Result<()> {
        self.exec(ns, &["ip", "addr", "add", cidr, "dev", dev])?;
        self.exec(ns, &["ip", "route", "add", "default", "via", gateway])?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
