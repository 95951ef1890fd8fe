//! Many networks on one middleman, and what each costs the packets of the first network, of
//! the last one, and of unrelated traffic through the same node.
//!
//! ```text
//!  c0 ── f-a ┐                         ┌ f-b ── s0      network 0 (first), measured
//!  cl ── l-a ┤                         ├ l-b ── sl      network N-1 (last), measured
//!  cu ── u-a ┤  mm (the agent's node)  ├ u-b ── su      unrelated: plain forwarding,
//!            │                         │                172.16.1.0/24 -> 172.16.2.0/24
//!  sink ─ nIa┘   networks 1..N-2       └ nIb ─ sink     programmed only; their veth peers
//!                                                       sit in one sink namespace
//! ```
//!
//! Every network has its own interfaces (veth: this kernel has no dummy devices) and its own
//! subnet and alias, so the ingress map and the rules hold N distinct entries.

use std::path::{Path as FsPath, PathBuf};

use anyhow::Result;

use super::agent::{Agent, Net, write_file};
use super::lab::Lab;
use super::traffic::{self, Path};
use super::{ScaleResult, Settings};

/// The scale lab: the middleman, its measured hosts, and the networks' interfaces.
#[derive(Debug)]
pub struct ScaleLab {
    pub agent: Agent,
    pub dir: PathBuf,
    pub first: Path,
    pub unrelated: Path,
}

pub const MM: &str = "mm";

/// How long a freshly applied network may take to pass its first ping.
const REACHABLE: std::time::Duration = std::time::Duration::from_secs(10);

impl ScaleLab {
    pub fn build(lab: &mut Lab, agent_bin: &FsPath, dir: &FsPath, capacity: usize) -> Result<Self> {
        for ns in [MM, "sink", "c0", "s0", "cl", "sl", "cu", "su"] {
            lab.add_namespace(ns)?;
        }
        lab.veth("c0", "eth0", MM, "f-a")?;
        lab.veth(MM, "f-b", "s0", "eth0")?;
        lab.veth("cl", "eth0", MM, "l-a")?;
        lab.veth(MM, "l-b", "sl", "eth0")?;
        lab.veth("cu", "eth0", MM, "u-a")?;
        lab.veth(MM, "u-b", "su", "eth0")?;
        let first = Net {
            index: 0,
            a: "f-a".into(),
            b: "f-b".into(),
        };
        lab.host(
            "c0",
            format!("{}/24", first.host(10)).parse()?,
            first.host(1).parse()?,
        )?;
        lab.host(
            "s0",
            format!("{}/24", first.host(10)).parse()?,
            first.host(1).parse()?,
        )?;
        // Unrelated traffic: forwarding enabled on just these two interfaces, as the agent
        // does for its sides, so the node forwards nothing else.
        lab.exec(MM, &["ip", "addr", "add", "172.16.1.1/24", "dev", "u-a"])?;
        lab.exec(MM, &["ip", "addr", "add", "172.16.2.1/24", "dev", "u-b"])?;
        lab.exec(
            MM,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.conf.u-a.forwarding=1",
                "net.ipv4.conf.u-b.forwarding=1",
            ],
        )?;
        lab.host("cu", "172.16.1.10/24".parse()?, "172.16.1.1".parse()?)?;
        lab.host("su", "172.16.2.10/24".parse()?, "172.16.2.1".parse()?)?;
        // The programmed-only networks' interfaces, a few ip processes for all of them.
        let names: Vec<String> = (1..capacity)
            .flat_map(|i| ["a", "b"].map(|side| format!("n{i}{side}")))
            .collect();
        lab.veth_pairs(MM, "sink", &names)?;
        let agent = Agent {
            binary: agent_bin.to_path_buf(),
            ns: MM.to_owned(),
            state_dir: dir.join("state-scale"),
        };
        let first = Path {
            client: "c0".into(),
            server: "s0".into(),
            target: first.alias_host(10),
        };
        let unrelated = Path {
            client: "cu".into(),
            server: "su".into(),
            target: "172.16.2.10".into(),
        };
        lab.spawn("s0", &["iperf3", "-s"])?;
        lab.spawn("sl", &["iperf3", "-s"])?;
        traffic::serve(lab, &unrelated)?;
        Ok(Self {
            agent,
            dir: dir.to_path_buf(),
            first,
            unrelated,
        })
    }

    /// The first `n` networks: network 0 and network n-1 on the measured interfaces, the others
    /// on sink-backed ones.
    pub fn nets(&self, n: usize) -> Vec<Net> {
        (0..n)
            .map(|i| {
                let (a, b) = if i == 0 {
                    ("f-a".to_owned(), "f-b".to_owned())
                } else if i == n - 1 {
                    ("l-a".to_owned(), "l-b".to_owned())
                } else {
                    (format!("n{i}a"), format!("n{i}b"))
                };
                Net { index: i, a, b }
            })
            .collect()
    }

    pub fn file(&self, name: &str, nets: &[Net]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        write_file(&path, nets)?;
        Ok(path)
    }

    /// Re-addresses the last network's hosts for network `last`.
    fn address_last(&self, lab: &Lab, last: &Net) -> Result<Path> {
        for ns in ["cl", "sl"] {
            lab.exec(ns, &["ip", "addr", "flush", "dev", "eth0"])?;
            lab.host(
                ns,
                format!("{}/24", last.host(10)).parse()?,
                last.host(1).parse()?,
            )?;
        }
        Ok(Path {
            client: "cl".into(),
            server: "sl".into(),
            target: last.alias_host(10),
        })
    }
}

/// For each count in `counts` (0 = no networks): apply that many networks, then measure the
/// first network's, the last network's and the unrelated path's 64-byte packet rate and
/// single-stream TCP, alternating, medians of `settings.reps`.
pub fn measure(
    lab: &Lab,
    scale: &ScaleLab,
    counts: &[usize],
    settings: &Settings,
) -> Result<Vec<ScaleResult>> {
    let mut results = Vec::new();
    let mut held: Option<PathBuf> = None;
    for &n in counts {
        if let Some(file) = held.take() {
            scale.agent.delete(lab, &file)?;
        }
        let nets = scale.nets(n);
        let mut paths: Vec<(&str, Path)> = Vec::new();
        if n > 0 {
            let file = scale.file(&format!("scale-{n}.yaml"), &nets)?;
            let call = scale.agent.apply(lab, &file)?;
            eprintln!("  {n} networks applied in {:.2} s", call.seconds);
            held = Some(file);
            paths.push(("first", scale.first.clone()));
            if n > 1 {
                let last = scale.address_last(lab, &nets[n - 1])?;
                traffic::wait_reachable(lab, &last, REACHABLE)?;
                paths.push(("last", last));
            }
            traffic::wait_reachable(lab, &scale.first, REACHABLE)?;
        }
        paths.push(("unrelated", scale.unrelated.clone()));
        let k = paths.len();
        let mut pps = vec![Vec::new(); k];
        let mut tcp = vec![Vec::new(); k];
        for rep in 0..settings.reps {
            for j in 0..k {
                let i = (rep + j) % k;
                eprintln!(
                    "  {n} networks: {} rep {}/{}",
                    paths[i].0,
                    rep + 1,
                    settings.reps
                );
                pps[i].push(traffic::udp_pps(lab, &paths[i].1, settings.seconds)?);
                tcp[i].push(traffic::tcp_gbps(lab, &paths[i].1, settings.seconds, 1)?);
            }
        }
        for (i, (which, _)) in paths.iter().enumerate() {
            results.push(ScaleResult {
                networks: n,
                path: (*which).to_owned(),
                udp64_kpps: traffic::median(&pps[i]) / 1e3,
                tcp1_gbps: traffic::median(&tcp[i]),
            });
        }
    }
    if let Some(file) = held {
        scale.agent.delete(lab, &file)?;
    }
    Ok(results)
}
