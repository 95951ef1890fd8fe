//! The three paths compared hop for hop: client ─ veth ─ middleman ─ veth ─ server.
//!
//! ```text
//! (a) mirror   10.0.0.10 ──eth0 │ a-a  mm  a-b │ eth0── 10.0.0.10   programmed by mirrornet,
//!              dst 10.64.0.10                                          alias 10.64.0.0/24
//! (b) plain    10.1.0.10 ──eth0 │ b-a  mm  b-b │ eth0── 10.2.0.10   ip_forward, two subnets
//! (c) recipe   10.0.0.10 ──eth0 │ c-a  mm  c-b │ eth0── 10.0.0.10   iptables NETMAP, MARK,
//!              dst 10.64.0.10                                          CT --zone-orig, ip rule fwmark
//! ```

use std::path::Path as FsPath;

use anyhow::Result;

use super::agent::{Agent, Net, write_file};
use super::lab::Lab;
use super::traffic::{self, Path};
use super::{PathResult, Settings};

pub const NAMES: [&str; 3] = ["mirror", "plain", "recipe"];

/// The hand-built recipe as the classic answer writes it, policy-routing variant (no VRF):
/// per-side tables for the connected routes, `ip rule iif` per side and `ip rule fwmark` per
/// target side, MARK and CT --zone-orig in PREROUTING, NETMAP both ways.
fn recipe(lab: &Lab, mm: &str, a: &str, b: &str) -> Result<()> {
    let cmds: Vec<Vec<String>> = [
        "ip addr add 10.0.0.1/24 dev A noprefixroute",
        "ip addr add 10.0.0.1/24 dev B noprefixroute",
        "ip route add 10.0.0.0/24 dev A table 101 src 10.0.0.1",
        "ip route add 10.0.0.0/24 dev B table 102 src 10.0.0.1",
        "ip rule add fwmark 1 lookup 101 pref 100",
        "ip rule add fwmark 2 lookup 102 pref 101",
        "ip rule add iif A lookup 101 pref 200",
        "ip rule add iif B lookup 102 pref 201",
        "iptables -t raw -A PREROUTING -i A -j CT --zone-orig 1",
        "iptables -t raw -A PREROUTING -i B -j CT --zone-orig 2",
        "iptables -t mangle -A PREROUTING -i A -d 10.64.0.0/24 -j MARK --set-mark 2",
        "iptables -t mangle -A PREROUTING -i B -d 10.64.0.0/24 -j MARK --set-mark 1",
        "iptables -t nat -A PREROUTING -i A -d 10.64.0.0/24 -j NETMAP --to 10.0.0.0/24",
        "iptables -t nat -A PREROUTING -i B -d 10.64.0.0/24 -j NETMAP --to 10.0.0.0/24",
        "iptables -t nat -A POSTROUTING -m mark --mark 2 -s 10.0.0.0/24 -j NETMAP --to 10.64.0.0/24",
        "iptables -t nat -A POSTROUTING -m mark --mark 1 -s 10.0.0.0/24 -j NETMAP --to 10.64.0.0/24",
        "sysctl -qw net.ipv4.ip_forward=1",
    ]
    .iter()
    .map(|c| {
        c.split_whitespace()
            .map(|w| match w {
                "A" => a.to_owned(),
                "B" => b.to_owned(),
                w => w.to_owned(),
            })
            .collect()
    })
    .collect();
    for c in cmds {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        lab.exec(mm, &args)?;
    }
    Ok(())
}

/// Builds the three paths in one lab and returns them in [`NAMES`] order.
pub fn build(lab: &mut Lab, agent_bin: &FsPath, dir: &FsPath) -> Result<Vec<Path>> {
    let mut paths = Vec::new();
    for (tag, name) in ["a", "b", "c"].iter().zip(NAMES) {
        let (c, m, s) = (format!("{tag}c"), format!("{tag}m"), format!("{tag}s"));
        for ns in [&c, &m, &s] {
            lab.add_namespace(ns)?;
        }
        let (ia, ib) = (format!("{tag}-a"), format!("{tag}-b"));
        lab.veth(&c, "eth0", &m, &ia)?;
        lab.veth(&m, &ib, &s, "eth0")?;
        let target = match name {
            "plain" => {
                lab.host(&c, "10.1.0.10/24".parse()?, "10.1.0.1".parse()?)?;
                lab.host(&s, "10.2.0.10/24".parse()?, "10.2.0.1".parse()?)?;
                lab.exec(&m, &["ip", "addr", "add", "10.1.0.1/24", "dev", &ia])?;
                lab.exec(&m, &["ip", "addr", "add", "10.2.0.1/24", "dev", &ib])?;
                lab.exec(&m, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
                "10.2.0.10".to_owned()
            }
            _ => {
                lab.host(&c, "10.0.0.10/24".parse()?, "10.0.0.1".parse()?)?;
                lab.host(&s, "10.0.0.10/24".parse()?, "10.0.0.1".parse()?)?;
                if name == "recipe" {
                    recipe(lab, &m, &ia, &ib)?;
                } else {
                    let net = Net {
                        index: 0,
                        a: ia.clone(),
                        b: ib.clone(),
                    };
                    let file = dir.join("path-mirror.yaml");
                    write_file(&file, &[net])?;
                    let agent = Agent {
                        binary: agent_bin.to_path_buf(),
                        ns: m.clone(),
                        state_dir: dir.join("state-path-mirror"),
                    };
                    agent.apply(lab, &file)?;
                }
                "10.64.0.10".to_owned()
            }
        };
        let path = Path {
            client: c,
            server: s,
            target,
        };
        traffic::serve(lab, &path)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Measures every path `settings.reps` times, rotating the order each repetition so that
/// drift of the machine (other work on it, thermal state) hits every path alike.
pub fn measure(lab: &Lab, paths: &[Path], settings: &Settings) -> Result<Vec<PathResult>> {
    let n = paths.len();
    let mut tcp1 = vec![Vec::new(); n];
    let mut tcp4 = vec![Vec::new(); n];
    let mut pps = vec![Vec::new(); n];
    let mut rtt = vec![Vec::new(); n];
    for rep in 0..settings.reps {
        for k in 0..n {
            let i = (rep + k) % n;
            let p = &paths[i];
            eprintln!("  path {} rep {}/{}", NAMES[i], rep + 1, settings.reps);
            tcp1[i].push(traffic::tcp_gbps(lab, p, settings.seconds, 1)?);
            tcp4[i].push(traffic::tcp_gbps(lab, p, settings.seconds, 4)?);
            pps[i].push(traffic::udp_pps(lab, p, settings.seconds)?);
            rtt[i].extend(traffic::rtts_us(lab, p, settings.pings)?);
        }
    }
    Ok((0..n)
        .map(|i| PathResult {
            name: NAMES[i].to_owned(),
            tcp1_gbps: traffic::median(&tcp1[i]),
            tcp4_gbps: traffic::median(&tcp4[i]),
            udp64_kpps: traffic::median(&pps[i]) / 1e3,
            rtt_p50_us: traffic::quantile(&rtt[i], 0.5),
            rtt_p99_us: traffic::quantile(&rtt[i], 0.99),
            samples: settings.reps,
        })
        .collect())
}
