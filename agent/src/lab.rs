//! Network-namespace labs: the seed topology (and any other network's) built from namespaces
//! and veth pairs, for the demo and the scenario tests.
//!
//! ```text
//!  <side>-10 ─┐                                    ┌─ <side2>-10
//!  <side>-11 ─┤ <side>-lan (bridge) ─ eth1 ┐  ┌ eth2 ─ <side2>-lan (bridge) ├─ <side2>-11
//!                                          mm (middleman: the node mirrornet programs)
//! ```
//!
//! Every name starts with a prefix unique to the lab (process id and a counter), so labs run
//! in parallel; every namespace is deleted, and every process started in it killed, when the
//! [`Lab`] is dropped, on success and on failure. Nothing is configured in the namespace the
//! lab was created from: veth ends are created directly inside their namespaces.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use mirrornet_api::ValidNetwork;

/// A failed lab command, with its output.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

type Result<T, E = LabError> = std::result::Result<T, E>;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces that disappears with the value.
#[derive(Debug)]
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// The agent's state directory for everything run in this lab (`MIRRORNET_STATE_DIR`), so
    /// a lab leaves nothing under /run/mirrornet.
    state_dir: std::path::PathBuf,
}

fn run(command: &mut Command) -> Result<Output> {
    let text = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| LabError::Spawn {
        command: text.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::Failed {
            command: text,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

impl Lab {
    /// An empty lab; `tag` makes its namespaces recognisable in `ip netns`.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self::named(format!("mn-{tag}-{}-{n}", std::process::id()))
    }

    /// An empty lab whose namespaces are all named `<id>-<short>`; `id` must be unique to the
    /// lab (the bench's `mnb-<pid>-<tag>`, which lets it sweep what a killed run left).
    pub fn named(id: String) -> Self {
        Self {
            state_dir: std::env::temp_dir().join(format!("{id}-state")),
            id,
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The full name of the lab's namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    /// Creates namespace `short` with its loopback up.
    pub fn add_namespace(&mut self, short: &str) -> Result<String> {
        let name = self.ns(short);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        self.exec(short, &["ip", "link", "set", "lo", "up"])?;
        // No duplicate address detection: a fresh lab's links would otherwise hold tentative
        // addresses for a second or two, delaying the first packets and the snapshots.
        self.exec(
            short,
            &[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        Ok(name)
    }

    /// The agent's state directory in this lab.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// A command that runs `args` inside namespace `short`.
    pub fn command(&self, short: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(short)]).args(args);
        c.env("MIRRORNET_STATE_DIR", &self.state_dir);
        c
    }

    /// Runs `args` inside namespace `short`; fails with its stderr when it fails.
    pub fn exec(&self, short: &str, args: &[&str]) -> Result<Output> {
        run(&mut self.command(short, args))
    }

    /// Runs `args` inside namespace `short` and returns its stdout.
    pub fn stdout(&self, short: &str, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.exec(short, args)?.stdout).into_owned())
    }

    /// Starts `args` in the background inside `short`; killed when the lab goes. Returns its
    /// process id, for [`Lab::stop`].
    pub fn spawn(&mut self, short: &str, args: &[&str]) -> Result<u32> {
        let mut command = self.command(short, args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|source| LabError::Spawn {
            command: args.join(" "),
            source,
        })?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Hands a child started from [`Lab::command`] to the lab, so it is killed with it.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Stops the background process `pid`: SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self, pid: u32) {
        let Some(i) = self.children.iter().position(|c| c.id() == pid) else {
            return;
        };
        let mut child = self.children.remove(i);
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let exited = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs an `ip -batch` script inside `short`: one process for many objects (a few hundred
    /// veth pairs take a second this way, against ~3 ms per `ip` command).
    pub fn ip_batch(&self, short: &str, script: &str) -> Result<()> {
        batch(&mut self.command(short, &["ip", "-batch", "-"]), script)
    }

    /// A veth pair per name in `names` between `a` and `b`, each named the same at both ends,
    /// all up: many links in three `ip -batch` processes.
    pub fn veth_pairs(&self, a: &str, b: &str, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let peer_ns = self.ns(b);
        let (mut create, mut up) = (String::new(), String::new());
        for name in names {
            create.push_str(&format!(
                "link add {name} type veth peer name {name} netns {peer_ns}\n"
            ));
            up.push_str(&format!("link set {name} up\n"));
        }
        self.ip_batch(a, &create)?;
        self.ip_batch(a, &up)?;
        self.ip_batch(b, &up)?;
        // A veth end reports NO-CARRIER until the kernel has seen its peer up, a moment after
        // the batch returns: a snapshot taken in that moment differs from every later one.
        let wanted: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let carrying = || {
            let links = self.stdout(a, &["ip", "-o", "link", "show"]).ok()?;
            let waiting = links.lines().any(|l| {
                let name = l.split(':').nth(1).unwrap_or("").trim();
                let name = name.split('@').next().unwrap_or(name);
                wanted.contains(name) && l.contains("NO-CARRIER")
            });
            (!waiting).then_some(())
        };
        wait_for(Duration::from_secs(10), Duration::from_millis(20), carrying).ok_or_else(|| {
            LabError::Failed {
                command: format!("veth pairs {a} <-> {b}"),
                status: "no carrier after 10 s".into(),
                stderr: String::new(),
            }
        })
    }

    /// A veth pair with one end in each namespace, both up.
    pub fn veth(&self, a: &str, a_name: &str, b: &str, b_name: &str) -> Result<()> {
        let (a_full, b_full) = (self.ns(a), self.ns(b));
        run(Command::new("ip").args([
            "link", "add", "name", a_name, "netns", &a_full, "type", "veth", "peer", "name",
            b_name, "netns", &b_full,
        ]))?;
        self.exec(a, &["ip", "link", "set", a_name, "up"])?;
        self.exec(b, &["ip", "link", "set", b_name, "up"])?;
        Ok(())
    }

    /// Makes `short` a host: `address` (with its prefix length) on its `eth0`, default route
    /// via `gateway`.
    pub fn host(&self, short: &str, address: IpNet, gateway: IpAddr) -> Result<()> {
        self.untouched_host(short, address)?;
        let (family, gw) = (family(address.addr()), gateway.to_string());
        self.exec(
            short,
            &["ip", family, "route", "add", "default", "via", &gw],
        )?;
        Ok(())
    }

    /// Makes `short` a host that nobody configured beyond its address: `address` on its
    /// `eth0`, no route and no gateway (a PLC, a drive, a lab appliance).
    pub fn untouched_host(&self, short: &str, address: IpNet) -> Result<()> {
        let with_len = address.to_string();
        let mut add = vec![
            "ip",
            family(address.addr()),
            "addr",
            "add",
            &with_len,
            "dev",
            "eth0",
        ];
        if address.addr().is_ipv6() {
            add.push("nodad");
        }
        self.exec(short, &add)?;
        Ok(())
    }
}

/// `ip`'s family flag for `address`.
fn family(address: IpAddr) -> &'static str {
    if address.is_ipv6() { "-6" } else { "-4" }
}

/// Feeds `script` to `command` (an `ip -batch -`) on its stdin; fails with its stderr.
fn batch(command: &mut Command, script: &str) -> Result<()> {
    let text = format!("{command:?}").replace('"', "");
    let spawned = |source| LabError::Spawn {
        command: text.clone(),
        source,
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawned)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawned)?;
    }
    let output = child.wait_with_output().map_err(spawned)?;
    if !output.status.success() {
        return Err(LabError::Failed {
            command: text,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Deletes network namespace `name` (its full name), first killing every process in it (e.g.
/// processes a probe forked), which would otherwise keep it.
pub fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Checks `check` every `every` until it yields a value; `None` once `limit` has passed. How
/// labs, tests and the bench wait for a condition: with a deadline, never a bare sleep.
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A host on a side's LAN.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short namespace name, `<side>-<n>`.
    pub ns: String,
    pub address: IpAddr,
}

/// One side as built: its LAN and hosts.
#[derive(Debug, Clone)]
pub struct SideLan {
    pub name: String,
    pub interface: String,
    pub alias: IpNet,
    pub hosts: Vec<Host>,
}

impl SideLan {
    /// The host whose address ends in `n`.
    pub fn host(&self, n: u32) -> &Host {
        let subnet_host = |h: &&Host| host_number(h.address) == n;
        self.hosts
            .iter()
            .find(subnet_host)
            .unwrap_or_else(|| panic!("side {} has no host {n}", self.name))
    }
}

/// The last bits of an address (what stays the same under 1:1 prefix translation).
fn host_number(address: IpAddr) -> u32 {
    match address {
        IpAddr::V4(a) => u32::from(a) & 0xff,
        IpAddr::V6(a) => (u128::from(a) & 0xff) as u32,
    }
}

/// `host` (e.g. 11) inside `net`.
pub fn nth(net: IpNet, host: u32) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + host).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + u128::from(host)).into()),
    }
}

/// The address by which the other sides reach host `host` of side `to`: its number inside
/// `to`'s alias prefix, as it is its number inside the hosts' part of the subnet
/// ([`Scenario::build`]).
pub fn alias_of(network: &ValidNetwork, to: &str, host: u32) -> IpAddr {
    let side = network
        .sides
        .iter()
        .find(|s| s.name.as_str() == to)
        .expect("side exists");
    nth(side.alias, host)
}

/// A network's topology built in a lab: a middleman namespace `mm` holding every side's
/// interface, and per side a bridged LAN with hosts that all use the same addresses.
#[derive(Debug)]
pub struct Scenario {
    pub lab: Lab,
    pub sides: Vec<SideLan>,
    pub network: ValidNetwork,
}

/// Short name of the middleman namespace.
pub const MIDDLEMAN: &str = "mm";

impl Scenario {
    /// Builds the topology of `network` with hosts `host_numbers` (e.g. `[10, 11]`) on every
    /// side; `extra_interface` adds an unrelated `eth9` LAN (192.0.2.0/24 / 2001:db8::/64,
    /// middleman .1, one host .10) that mirrornet must leave alone.
    pub fn build(
        tag: &str,
        network: &ValidNetwork,
        host_numbers: &[u32],
        extra_interface: bool,
    ) -> Result<Self> {
        let mut lab = Lab::new(tag);
        lab.add_namespace(MIDDLEMAN)?;
        let v6 = network.is_ipv6();
        let mut sides = Vec::new();
        for side in &network.sides {
            let lan = format!("{}-lan", side.name.as_str());
            lab.add_namespace(&lan)?;
            lab.exec(&lan, &["ip", "link", "add", "br0", "type", "bridge"])?;
            lab.exec(&lan, &["ip", "link", "set", "br0", "up"])?;
            lab.veth(MIDDLEMAN, side.interface.as_str(), &lan, "uplink")?;
            lab.exec(&lan, &["ip", "link", "set", "uplink", "master", "br0"])?;
            let mut hosts = Vec::new();
            for &n in host_numbers {
                let ns = format!("{}-{n}", side.name.as_str());
                lab.add_namespace(&ns)?;
                let port = format!("h{n}");
                lab.veth(&ns, "eth0", &lan, &port)?;
                lab.exec(&lan, &["ip", "link", "set", &port, "master", "br0"])?;
                // Numbered inside the hosts' part of the subnet (all of it, unless on-link).
                let address = nth(network.hosts, n);
                // On-link aliases are for hosts nobody may touch: they get no route at all.
                if network.on_link() {
                    lab.untouched_host(&ns, with_prefix(address, network.subnet))?;
                } else {
                    lab.host(&ns, with_prefix(address, network.subnet), network.gateway)?;
                }
                hosts.push(Host { ns, address });
            }
            sides.push(SideLan {
                name: side.name.to_string(),
                interface: side.interface.to_string(),
                alias: side.alias,
                hosts,
            });
        }
        if extra_interface {
            let (net, gw): (IpNet, IpAddr) = if v6 {
                (
                    "2001:db8::/64".parse().unwrap(),
                    "2001:db8::1".parse().unwrap(),
                )
            } else {
                (
                    "192.0.2.0/24".parse().unwrap(),
                    "192.0.2.1".parse().unwrap(),
                )
            };
            lab.add_namespace("other-10")?;
            lab.veth(MIDDLEMAN, "eth9", "other-10", "eth0")?;
            let with_len = format!("{gw}/{}", net.prefix_len());
            let mut args = vec!["ip", "addr", "add", &with_len, "dev", "eth9"];
            if v6 {
                args.push("nodad");
            }
            lab.exec(MIDDLEMAN, &args)?;
            lab.host("other-10", with_prefix(nth(net, 10), net), gw)?;
        }
        Ok(Self {
            lab,
            sides,
            network: network.clone(),
        })
    }

    pub fn side(&self, name: &str) -> &SideLan {
        self.sides
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no side {name}"))
    }
}

/// `address` with `subnet`'s prefix length.
pub fn with_prefix(address: IpAddr, subnet: IpNet) -> IpNet {
    IpNet::new(address, subnet.prefix_len()).expect("a subnet's prefix length fits its address")
}

/// The ruleset as one JSON object per line, without what carries no state: handles (renumbered
/// when a rule is re-added), counter values, and the order of set elements (the kernel's).
fn canonical_ruleset(json: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_owned();
    };
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("handle");
                // Counters count traffic; they are not state.
                o.remove("packets");
                o.remove("bytes");
                if let Some(serde_json::Value::Array(elems)) = o.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
                o.values_mut().for_each(scrub);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut value);
    let mut out = String::new();
    for item in value["nftables"].as_array().into_iter().flatten() {
        if item.get("metainfo").is_none() {
            out.push_str(&item.to_string());
            out.push('\n');
        }
    }
    out
}

/// Everything a network could leave behind in a namespace, as text: links, addresses, rules,
/// every routing table, the whole nft ruleset and the networking sysctls. Two snapshots equal
/// means no residue.
pub fn snapshot(lab: &Lab, ns: &str) -> Result<String> {
    let mut out = String::new();
    for args in [
        &["ip", "-d", "link", "show"][..],
        &["ip", "addr", "show"],
        &["ip", "-4", "rule", "show"],
        &["ip", "-6", "rule", "show"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "-4", "neigh", "show", "proxy"],
        &["ip", "-6", "neigh", "show", "proxy"],
    ] {
        out.push_str(&format!("### {}\n", args.join(" ")));
        let text = lab.stdout(ns, args)?;
        if args.contains(&"route") {
            // Distinct routes listed in a different order are the same routing state (the
            // local table lists by insertion); sorting makes the comparison about content.
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort_unstable();
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        } else {
            out.push_str(&text);
        }
    }
    out.push_str("### nft -j list ruleset (canonical)\n");
    out.push_str(&canonical_ruleset(
        &lab.stdout(ns, &["nft", "-j", "list", "ruleset"])?,
    ));
    out.push_str("### sysctls\n");
    let sysctls = lab.stdout(ns, &["sysctl", "-a"])?;
    for line in sysctls.lines() {
        let networking = line.starts_with("net.ipv4.conf.")
            || line.starts_with("net.ipv6.conf.")
            || line.starts_with("net.ipv4.neigh.")
            || line.starts_with("net.ipv6.neigh.")
            || line.starts_with("net.ipv4.ip_forward");
        let touched = [
            "forwarding",
            "rp_filter",
            "ip_forward",
            "src_valid_mark",
            "proxy_ndp",
            "proxy_delay",
        ]
        .iter()
        .any(|k| line.contains(k));
        if networking && touched {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Traffic probes run inside lab namespaces (`mirrornet-agent probe ...`): a TCP server that
/// tells each client who it is and whom it saw, and a client that can pin its source port so
/// two sides can open the very same 5-tuple.
pub mod probe {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::time::Duration;

    /// Serves forever: each connection gets `"<identity> <peer address>:<peer port>\n"`, held
    /// open for `hold` so concurrent connections overlap.
    pub fn serve(port: u16, identity: &str, hold: Duration) -> std::io::Result<()> {
        let listener = TcpListener::bind(("::", port))?;
        for stream in listener.incoming() {
            let mut stream = stream?;
            let identity = identity.to_owned();
            std::thread::spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|p| canonical(p).to_string())
                    .unwrap_or_default();
                let _ = writeln!(stream, "{identity} {peer}");
                std::thread::sleep(hold);
            });
        }
        Ok(())
    }

    /// IPv4 peers of a dual-stack socket appear as `::ffff:a.b.c.d`; show them as IPv4.
    fn canonical(addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => addr,
            },
            v4 => v4,
        }
    }

    /// `GET path` from `address` over plain HTTP/1.0: the status code and the body. For the
    /// agent's own endpoints inside a lab namespace, where no curl need exist.
    pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Connects to `to` (from `from_port` if given) and returns the server's line; gives up
    /// when the connection has not opened within `limit`.
    pub async fn connect(
        to: SocketAddr,
        from_port: Option<u16>,
        limit: Duration,
    ) -> std::io::Result<String> {
        let socket = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Some(port) = from_port {
            let any: SocketAddr = if to.is_ipv4() {
                ([0, 0, 0, 0], port).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, port).into()
            };
            socket.bind(any)?;
        }
        let stream = tokio::time::timeout(limit, socket.connect(to))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let mut stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        let mut buf = [0u8; 256];
        while !line.ends_with('\n') {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            line.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(line.trim().to_owned())
    }
}
