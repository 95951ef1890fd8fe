//! The checks a node makes after a change, before keeping it: does the node still reach what
//! it reached before, and does the path it just built answer?
//!
//! ```text
//! before the change   NodeReach::observe: the kernel's route to every default gateway
//!                     (and, in a cluster, the API server)
//! after the change    the same lookups must give the same interface and next hop;
//!                     the API server must accept a TCP connection;
//!                     every `spec.verify.probes` host must answer a TCP connection made
//!                     inside its side's routing domain (a refusal is an answer too)
//! ```
//!
//! Everything here asks the kernel or sends real packets; nothing re-implements routing. A
//! failed check names itself, so a rollback's reason reads like the check a user would run.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mirrornet_api::{BackendKind, ValidNetwork};
use serde::Serialize;

use crate::netlink::{Link, Netlink};
use crate::plan::{NetworkPlan, vrf_name};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `probe outer 192.168.2.10:22` or `node route to 10.0.0.1`.
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The outcome of every check after one change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub checks: Vec<Check>,
}

impl Verification {
    /// The first check that failed.
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.passed)
    }

    /// One line for logs and conditions.
    pub fn summary(&self) -> String {
        match self.failure() {
            Some(c) => format!("{}: {}", c.name, c.detail),
            None if self.checks.is_empty() => "nothing to check".into(),
            None => format!(
                "{} check(s) passed: {}",
                self.checks.len(),
                self.checks
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// How the node sent to the destinations it must keep reaching, taken before a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReach {
    /// Destination -> (output interface, next hop); destinations the node had no route to
    /// before are not held against the change.
    paths: BTreeMap<IpAddr, (String, Option<IpAddr>)>,
}

impl NodeReach {
    /// The kernel's routes to the default gateways and to `extra` (the API server).
    pub async fn observe(netlink: &Netlink, extra: &[IpAddr]) -> Self {
        let links = netlink.links().await.unwrap_or_default();
        let mut destinations = netlink.default_gateways().await.unwrap_or_default();
        destinations.extend_from_slice(extra);
        let mut paths = BTreeMap::new();
        for destination in destinations {
            if let Some(path) = route(netlink, &links, destination).await {
                paths.insert(destination, path);
            }
        }
        Self { paths }
    }

    /// One check per destination: the same interface and next hop as before.
    pub async fn compare(&self, netlink: &Netlink) -> Vec<Check> {
        let links = netlink.links().await.unwrap_or_default();
        let mut checks = Vec::new();
        for (destination, (interface, via)) in &self.paths {
            let name = format!("node route to {destination}");
            let before = describe(interface, *via);
            let check = match route(netlink, &links, *destination).await {
                Some((i, v)) if i == *interface && v == *via => Check {
                    name,
                    passed: true,
                    detail: before,
                },
                Some((i, v)) => Check {
                    name,
                    passed: false,
                    detail: format!("was {before}, now {}", describe(&i, v)),
                },
                None => Check {
                    name,
                    passed: false,
                    detail: format!("was {before}, now no route"),
                },
            };
            checks.push(check);
        }
        checks
    }
}

fn describe(interface: &str, via: Option<IpAddr>) -> String {
    match via {
        Some(v) => format!("via {v} dev {interface}"),
        None => format!("dev {interface}"),
    }
}

async fn route(
    netlink: &Netlink,
    links: &BTreeMap<String, Link>,
    destination: IpAddr,
) -> Option<(String, Option<IpAddr>)> {
    let (oif, via) = netlink.route_to(destination).await?;
    let name = links
        .values()
        .find(|l| l.index == oif)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("#{oif}"));
    Some((name, via))
}

/// A TCP connection to `target` within `deadline`; a refusal counts as an answer.
pub async fn reach_endpoint(name: &str, target: SocketAddr, deadline: Instant) -> Check {
    connect_until(name.to_owned(), target, deadline, |_| Ok(())).await
}

/// Every probe of `network` (planned as `plan`), each a TCP connection from the node's
/// gateway address made inside the probed side's routing domain: the side's mark selects its
/// table (policy routing), binding to the side's VRF device does the same under VRF.
pub async fn probe_network(
    plan: &NetworkPlan,
    network: &ValidNetwork,
    deadline: Instant,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for probe in &network.probes {
        let Some(side) = plan.sides.iter().find(|s| s.name == probe.side.as_str()) else {
            continue;
        };
        let name = format!(
            "probe {}/{} {}:{}",
            plan.name, side.name, probe.address, probe.port
        );
        let mark = side.ids.mark;
        let device = (plan.backend == BackendKind::Vrf).then(|| vrf_name(side.ids.table));
        let target = SocketAddr::new(probe.address, probe.port);
        checks.push(
            connect_until(name, target, deadline, move |socket| {
                socket.set_mark(mark)?;
                if let Some(device) = &device {
                    socket.bind_device(Some(device.as_bytes()))?;
                }
                Ok(())
            })
            .await,
        );
    }
    checks
}

/// Tries to connect until one attempt gets an answer or `deadline` passes: a host that is
/// still resolving its neighbour, or a route that is still settling, gets every chance the
/// deadline allows.
async fn connect_until(
    name: String,
    target: SocketAddr,
    deadline: Instant,
    prepare: impl Fn(&socket2::Socket) -> std::io::Result<()>,
) -> Check {
    let started = Instant::now();
    let mut last = String::from("no attempt made before the deadline");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Check {
                name,
                passed: false,
                // Whole seconds and no per-attempt timings: the text goes into a status
                // condition, which should not change while the failure stays the same.
                detail: format!(
                    "no answer within {} s: {last}",
                    started.elapsed().as_secs_f64().round()
                ),
            };
        }
        let attempt = (deadline - now).min(Duration::from_secs(1));
        match connect_once(target, attempt, &prepare).await {
            Ok(answer) => {
                return Check {
                    name,
                    passed: true,
                    detail: format!("{answer} after {} ms", started.elapsed().as_millis()),
                };
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(
            Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

async fn connect_once(
    target: SocketAddr,
    timeout: Duration,
    prepare: &impl Fn(&socket2::Socket) -> std::io::Result<()>,
) -> Result<&'static str, String> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| format!("socket: {e}"))?;
    prepare(&socket).map_err(|e| format!("preparing the socket: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    let stream: std::net::TcpStream = socket.into();
    let socket = tokio::net::TcpSocket::from_std_stream(stream);
    match tokio::time::timeout(timeout, socket.connect(target)).await {
        Ok(Ok(_)) => Ok("connected"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Ok("refused (the host answered)")
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// The API server's address inside a pod, from the variables the kubelet sets.
pub fn api_server() -> Option<SocketAddr> {
    let host: IpAddr = std::env::var("KUBERNETES_SERVICE_HOST")
        .ok()?
        .parse()
        .ok()?;
    let port: u16 = std::env::var("KUBERNETES_SERVICE_PORT")
        .ok()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endpoint_that_listens_or_refuses_is_reached_and_silence_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        assert!(reach_endpoint("open", open, deadline).await.passed);
        drop(listener);
        // Nothing listens any more: the kernel refuses, which still proves the path.
        let refused = reach_endpoint("closed", open, deadline).await;
        assert!(refused.passed, "{refused:?}");
        assert!(refused.detail.starts_with("refused"), "{refused:?}");
    }

    #[test]
    fn the_summary_names_the_failing_check() {
        let v = Verification {
            checks: vec![
                Check {
                    name: "node route to 10.0.0.1".into(),
                    passed: true,
                    detail: "via 10.0.0.1 dev eth0".into(),
                },
                Check {
                    name: "probe seed/outer 192.168.2.10:22".into(),
                    passed: false,
                    detail: "no answer within 3 s: timed out".into(),
                },
            ],
        };
        assert_eq!(
            v.summary(),
            "probe seed/outer 192.168.2.10:22: no answer within 3 s: timed out"
        );
    }
}
