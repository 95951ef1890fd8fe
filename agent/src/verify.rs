//! The checks a node makes after a change, before keeping it: does the node still reach what
//! it reached before, and does the path it just built answer?
//!
//! ```text
//! before the change   NodeReach::observe: the main table's default routes, and the
//!                     kernel's route to each non-link-local gateway (and, in a cluster,
//!                     to the API server)
//! after the change    the default routes must still be there and the same lookups must
//!                     give the same interface and next hop;
//!                     the API server must accept a TCP connection (a refusal does not
//!                     count: kube-proxy refuses for a Service without endpoints);
//!                     every `spec.verify.probes` host must answer a TCP connection made
//!                     inside its side's routing domain (a refusal is an answer there)
//! ```
//!
//! Everything here asks the kernel or sends real packets; nothing re-implements routing. A
//! failed check names itself, so a rollback's reason reads like the check a user would run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mirrornet_api::{BackendKind, ValidNetwork};
use serde::Serialize;

use crate::netlink::{DefaultRoute, Link, Netlink};
use crate::observe::KernelView;
use crate::plan::{NetworkPlan, vrf_name};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `probe outer 192.168.2.10:22` or `node route to 10.0.0.1`.
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// The network a probe belongs to; `None` for the node's own checks, which concern
    /// every change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
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
    /// The main table's default routes.
    defaults: BTreeSet<DefaultRoute>,
    /// Destination -> (output interface, next hop): the default gateways that are not
    /// link-local (a link-local address means nothing without its interface) and the extra
    /// destinations. Destinations the node had no route to before are not held against the
    /// change.
    paths: BTreeMap<IpAddr, (String, Option<IpAddr>)>,
}

impl NodeReach {
    /// The node's default routes as `state` observed them, and the kernel's routes to their
    /// gateways and to `extra` (the API server).
    pub async fn observe(netlink: &Netlink, state: &KernelView, extra: &[IpAddr]) -> Self {
        let defaults = state.default_routes.clone();
        let mut destinations: Vec<IpAddr> = defaults
            .iter()
            .filter_map(|r| r.gateway)
            .filter(|g| !is_link_local(g))
            .collect();
        destinations.extend_from_slice(extra);
        let mut paths = BTreeMap::new();
        for destination in destinations {
            if let Some(path) = route(netlink, &state.links, destination).await {
                paths.insert(destination, path);
            }
        }
        Self { defaults, paths }
    }

    /// One check per default route (still there) and per destination (the same interface
    /// and next hop as before).
    pub async fn compare(&self, netlink: &Netlink) -> Vec<Check> {
        let links = netlink.links().await.unwrap_or_default();
        let defaults_now = netlink.default_routes(&links).await.unwrap_or_default();
        let mut checks: Vec<Check> = self
            .defaults
            .iter()
            .map(|r| {
                let passed = defaults_now.contains(r);
                Check {
                    name: format!("node route default {}", describe(&r.interface, r.gateway)),
                    passed,
                    detail: if passed {
                        "still in the main table".into()
                    } else {
                        "gone from the main table".into()
                    },
                    network: None,
                }
            })
            .collect();
        for (destination, (interface, via)) in &self.paths {
            let name = format!("node route to {destination}");
            let before = describe(interface, *via);
            let (passed, detail) = match route(netlink, &links, *destination).await {
                Some((i, v)) if i == *interface && v == *via => (true, before),
                Some((i, v)) => (false, format!("was {before}, now {}", describe(&i, v))),
                None => (false, format!("was {before}, now no route")),
            };
            checks.push(Check {
                name,
                passed,
                detail,
                network: None,
            });
        }
        checks
    }
}

fn is_link_local(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
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

/// A TCP connection to `target` (the API server) within `deadline`. A refusal does not
/// count: a kube-proxy REJECT for a Service without endpoints refuses too.
pub async fn reach_endpoint(name: &str, target: SocketAddr, deadline: Instant) -> Check {
    connect_until(name.to_owned(), None, target, deadline, false, |_| Ok(())).await
}

/// Every probe of `network` (planned as `plan`): a TCP connection from the node's gateway
/// address made inside the probed side's routing domain. The socket is bound to the side's
/// interface (or, under VRF, to its VRF device) and carries the side's mark, so the SYN can
/// only leave, and the answer only arrive, on that side: a twin host with the same address
/// on another side cannot answer in its place. A suspended network has no path to probe.
pub async fn probe_network(
    plan: &NetworkPlan,
    network: &ValidNetwork,
    deadline: Instant,
) -> Vec<Check> {
    let mut checks = Vec::new();
    if plan.suspended {
        return checks;
    }
    for probe in &network.probes {
        let Some(side) = plan.sides.iter().find(|s| s.name == probe.side.as_str()) else {
            continue;
        };
        let name = format!(
            "probe {}/{} {}:{}",
            plan.name, side.name, probe.address, probe.port
        );
        let mark = side.ids.mark;
        let device = if plan.backend == BackendKind::Vrf {
            vrf_name(side.ids.table)
        } else {
            side.interface.clone()
        };
        let target = SocketAddr::new(probe.address, probe.port);
        checks.push(
            connect_until(
                name,
                Some(plan.name.clone()),
                target,
                deadline,
                true,
                move |socket| {
                    socket.set_mark(mark)?;
                    socket.bind_device(Some(device.as_bytes()))
                },
            )
            .await,
        );
    }
    checks
}

/// Why one connection attempt did not count.
enum Attempt {
    /// The socket could not be made as asked: retrying will not help.
    Setup(String),
    /// No answer (yet): a host still resolving its neighbour, a route still settling.
    NoAnswer(String),
}

/// Tries to connect until one attempt gets an answer or `deadline` passes. `refusal_counts`:
/// a refusal (RST) proves the host answered.
async fn connect_until(
    name: String,
    network: Option<String>,
    target: SocketAddr,
    deadline: Instant,
    refusal_counts: bool,
    prepare: impl Fn(&socket2::Socket) -> std::io::Result<()>,
) -> Check {
    let started = Instant::now();
    let mut last = String::from("no attempt made before the deadline");
    let failed = |detail: String| Check {
        name: name.clone(),
        passed: false,
        detail,
        network: network.clone(),
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            // Whole seconds and no per-attempt timings: the text goes into a status
            // condition, which should not change while the failure stays the same.
            return failed(format!(
                "no answer within {} s: {last}",
                started.elapsed().as_secs_f64().round()
            ));
        }
        let attempt = (deadline - now).min(Duration::from_secs(1));
        match connect_once(target, attempt, refusal_counts, &prepare).await {
            Ok(answer) => {
                return Check {
                    name,
                    passed: true,
                    detail: format!("{answer} after {} ms", started.elapsed().as_millis()),
                    network,
                };
            }
            Err(Attempt::Setup(e)) => return failed(e),
            Err(Attempt::NoAnswer(e)) => last = e,
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
    refusal_counts: bool,
    prepare: &impl Fn(&socket2::Socket) -> std::io::Result<()>,
) -> Result<&'static str, Attempt> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| Attempt::Setup(format!("socket: {e}")))?;
    prepare(&socket).map_err(|e| Attempt::Setup(format!("preparing the socket: {e}")))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| Attempt::Setup(format!("socket: {e}")))?;
    let stream: std::net::TcpStream = socket.into();
    let socket = tokio::net::TcpSocket::from_std_stream(stream);
    match tokio::time::timeout(timeout, socket.connect(target)).await {
        Ok(Ok(_)) => Ok("connected"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused && refusal_counts => {
            Ok("refused (the host answered)")
        }
        Ok(Err(e)) => Err(Attempt::NoAnswer(e.to_string())),
        Err(_) => Err(Attempt::NoAnswer("timed out".into())),
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
    async fn an_endpoint_is_reached_only_when_something_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(reach_endpoint("open", open, deadline).await.passed);
        drop(listener);
        // Nothing listens any more: a refusal is not an API server.
        let refused = reach_endpoint("closed", open, deadline).await;
        assert!(!refused.passed, "{refused:?}");
        assert!(refused.detail.contains("refused"), "{refused:?}");
    }

    #[tokio::test]
    async fn a_socket_that_cannot_be_made_fails_at_once() {
        let started = Instant::now();
        let check = connect_until(
            "bad device".into(),
            None,
            "127.0.0.1:9".parse().unwrap(),
            started + Duration::from_secs(5),
            true,
            |s| s.bind_device(Some(b"no-such-dev0")),
        )
        .await;
        assert!(!check.passed && check.detail.starts_with("preparing the socket"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn the_summary_names_the_failing_check() {
        let v = Verification {
            checks: vec![
                Check {
                    name: "node route to 10.0.0.1".into(),
                    passed: true,
                    detail: "via 10.0.0.1 dev eth0".into(),
                    network: None,
                },
                Check {
                    name: "probe seed/outer 192.168.2.10:22".into(),
                    passed: false,
                    detail: "no answer within 3 s: timed out".into(),
                    network: Some("seed".into()),
                },
            ],
        };
        assert_eq!(
            v.summary(),
            "probe seed/outer 192.168.2.10:22: no answer within 3 s: timed out"
        );
    }
}
