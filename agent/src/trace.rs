//! `mirrornet-agent trace --from SIDE SRC DST`: the path a packet takes through this node, step
//! by step, as in the classic "follow the packet" answer — which element steers it, which mark
//! and zone it gets, how NAT rewrites it, and which table and interface the kernel itself picks
//! (`ip route get` with the packet's mark and ingress interface).

use std::net::IpAddr;
use std::process::Command;

use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, Protocol, ValidNetwork};
use serde::Serialize;

use crate::nft::ObservedNft;
use crate::translate::translate;

/// One step of the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub stage: &'static str,
    pub detail: String,
    /// False where the kernel does not hold what the plan says it should.
    pub ok: bool,
}

/// What a traced packet carries beyond its addresses, for the allow-list: `tcp/22`, `udp/53`,
/// `sctp/9`, `icmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Protocol,
    pub port: Option<u16>,
}

impl std::str::FromStr for Flow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (protocol, port) = match text.split_once('/') {
            Some((p, port)) => (
                p,
                Some(
                    port.parse::<u16>()
                        .map_err(|_| format!("{port:?} is not a port number"))?,
                ),
            ),
            None => (text, None),
        };
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            "icmp" | "icmpv6" => Protocol::Icmp,
            other => return Err(format!("{other:?} is not tcp, udp, sctp or icmp")),
        };
        if protocol == Protocol::Icmp && port.is_some() {
            return Err("icmp has no ports".into());
        }
        Ok(Self { protocol, port })
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}/{p}", self.protocol.as_str()),
            None => f.write_str(self.protocol.as_str()),
        }
    }
}

/// The guardrails a new connection from side `from` meets in the nat prerouting chain (its
/// first packet only; replies always pass): the answer-only drop, then the allow-list.
fn guardrails(valid: &ValidNetwork, name: &str, from: &str, flow: Option<Flow>) -> Vec<Hop> {
    let stage = "nat prerouting (-100)";
    let mut hops = Vec::new();
    if valid.answer_only.contains(from) {
        hops.push(hop(
            stage,
            format!(
                "side {from} may only answer (direction: OneWay): the first packet of a connection                  it opens is dropped in xlate-dst.{name}; replies to connections the other sides                  opened pass"
            ),
            false,
        ));
        return hops;
    }
    if valid.allow.is_empty() {
        return hops;
    }
    let listed = valid
        .allow
        .iter()
        .map(|a| match a.ports {
            Some((first, last)) if first == last => format!("{}/{first}", a.protocol.as_str()),
            Some((first, last)) => format!("{}/{first}-{last}", a.protocol.as_str()),
            None => a.protocol.as_str().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let Some(flow) = flow else {
        hops.push(hop(
            stage,
            format!(
                "allow-list: only new connections to {listed} pass (give PROTO/PORT, e.g. tcp/22,                  to check one)"
            ),
            true,
        ));
        return hops;
    };
    let allowed = valid.allow.iter().any(|a| {
        a.protocol == flow.protocol
            && match (a.ports, flow.port) {
                (None, _) => true,
                (Some((first, last)), Some(p)) => (first..=last).contains(&p),
                (Some(_), None) => false,
            }
    });
    hops.push(hop(
        stage,
        if allowed {
            format!("allow-list: {flow} is allowed ({listed})")
        } else {
            format!(
                "allow-list: {flow} is not in {listed}: the connection's first packet is dropped in                  xlate-dst.{name}"
            )
        },
        allowed,
    ));
    hops
}

/// The path of `src -> dst` (a new connection of `flow`, where given) entering from side
/// `from`.
pub fn trace(
    network: &LoadedNetwork,
    allocation: Option<&Allocation>,
    view: &crate::observe::KernelView,
    from: &str,
    src: IpAddr,
    dst: IpAddr,
    flow: Option<Flow>,
) -> Vec<Hop> {
    let (nft, proxies): (&ObservedNft, _) = (&view.nft, &view.proxies);
    let valid: &ValidNetwork = &network.valid;
    let name = network.name();
    let mut hops = Vec::new();
    let Some(ingress) = valid.sides.iter().find(|s| s.name.as_str() == from) else {
        return vec![hop(
            "input",
            format!("network {name} has no side {from:?}"),
            false,
        )];
    };
    let interface = ingress.interface.as_str();
    hops.push(hop(
        "input",
        format!("{src} -> {dst} enters {interface} (side {from} of {name})"),
        true,
    ));
    if valid.suspend {
        hops.push(hop(
            "prerouting (raw)",
            format!(
                "{name} is suspended (spec.suspend): nothing steers the packet; the node's own                  tables route it"
            ),
            false,
        ));
        hops.push(route_get(dst, src, interface, None));
        return hops;
    }
    let meaning = translate(valid, from, dst).ok();
    let target = meaning
        .as_ref()
        .filter(|m| m.host_side != from)
        .and_then(|m| valid.sides.iter().find(|s| s.name.as_str() == m.host_side));
    let Some((target, meaning)) = target.zip(meaning.as_ref()) else {
        hops.push(hop(
            "prerouting (raw)",
            format!(
                "{dst} is in no other side's alias prefix: not steered, routed by the node's own \
                 tables"
            ),
            true,
        ));
        hops.push(route_get(dst, src, interface, None));
        return hops;
    };
    if valid.on_link() {
        // The host reaches the alias on its own link: the node must answer for it.
        let answered = proxies
            .iter()
            .any(|p| p.ours && p.proxy.interface == interface && p.proxy.address == dst);
        hops.push(hop(
            if dst.is_ipv4() { "arp" } else { "ndp" },
            format!(
                "{dst} is an on-link alias: {}",
                if answered {
                    format!("the node answers for it on {interface} (proxy entry)")
                } else {
                    format!(
                        "the node does NOT answer for it on {interface} (a host there uses it, \
                         see `show`; or the proxy entry is missing)"
                    )
                }
            ),
            answered,
        ));
    }
    let ids = |side: &str| allocation.and_then(|a| a.sides.iter().find(|s| s.side == side));
    let steer = format!("steer.{name}.{from}.{}", target.name.as_str());
    let element_present = nft
        .maps
        .values()
        .flatten()
        .any(|(key, chain)| chain == &steer && key.contains(&format!("\"{interface}\"")));
    hops.push(hop(
        "prerouting (raw, -300)",
        format!(
            "iifname {interface} . daddr {dst} matches the ingress map element for alias {} -> \
             chain {steer}{}",
            target.alias,
            if element_present {
                ""
            } else {
                " — NOT in the kernel's table"
            }
        ),
        element_present,
    ));
    let mark = ids(target.name.as_str()).map(|t| t.mark);
    let zone = ids(from).map(|i| i.zone);
    hops.push(hop(
        "prerouting (raw, -300)",
        format!(
            "meta mark set {} (side {}), ct original zone set {} (side {from})",
            mark.map(|m| format!("{m:#010x}")).unwrap_or("?".into()),
            target.name.as_str(),
            zone.map(|z| z.to_string()).unwrap_or("?".into()),
        ),
        mark.is_some() && zone.is_some(),
    ));
    hops.extend(guardrails(valid, name, from, flow));
    hops.push(hop(
        "nat prerouting (-100)",
        format!(
            "mark -> chain xlate-dst.{name}: dnat {dst} -> {} (prefix {} -> {})",
            meaning.real, target.alias, valid.hosts
        ),
        true,
    ));
    let route = route_get(meaning.real, src, interface, mark);
    hops.push(route);
    // How the target side sees the sender: its host bits under the ingress side's alias.
    let seen_as = translate(valid, from, src).ok().and_then(|m| {
        m.seen_by
            .into_iter()
            .find(|(side, _)| side == target.name.as_str())
            .map(|(_, address)| address)
    });
    hops.push(hop(
        "nat postrouting (100)",
        format!(
            "mark -> chain xlate-src.{name}.{}: saddr in {} and zone {} -> snat {src} -> {} \
             (prefix {} -> {})",
            target.name.as_str(),
            valid.hosts,
            zone.map(|z| z.to_string()).unwrap_or("?".into()),
            seen_as.map(|a| a.to_string()).unwrap_or("?".into()),
            valid.hosts,
            ingress.alias
        ),
        seen_as.is_some(),
    ));
    hops.push(hop(
        "output",
        format!(
            "leaves {} as {} -> {}; the reply is tracked in zone {} and un-NATed on the way back",
            target.interface.as_str(),
            seen_as.map(|a| a.to_string()).unwrap_or("?".into()),
            meaning.real,
            zone.map(|z| z.to_string()).unwrap_or("?".into()),
        ),
        true,
    ));
    hops
}

fn hop(stage: &'static str, detail: String, ok: bool) -> Hop {
    Hop { stage, detail, ok }
}

/// The kernel's own routing decision for the packet as it is after DNAT.
fn route_get(dst: IpAddr, src: IpAddr, iif: &str, mark: Option<u32>) -> Hop {
    let mut args = vec![
        "route".to_owned(),
        "get".into(),
        dst.to_string(),
        "from".into(),
        src.to_string(),
        "iif".into(),
        iif.into(),
    ];
    if let Some(m) = mark {
        args.extend(["mark".into(), format!("{m:#x}")]);
    }
    let shown = format!("ip {}", args.join(" "));
    match Command::new("ip").args(&args).output() {
        Ok(out) if out.status.success() => hop(
            "routing (kernel)",
            format!(
                "{shown}: {}",
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            true,
        ),
        Ok(out) => hop(
            "routing (kernel)",
            format!("{shown}: {}", String::from_utf8_lossy(&out.stderr).trim()),
            false,
        ),
        Err(e) => hop("routing (kernel)", format!("{shown}: {e}"), false),
    }
}

#[cfg(test)]
mod guardrail_tests {
    use super::*;

    fn network(extra: &str) -> ValidNetwork {
        let yaml = format!(
            "apiVersion: mirrornet.io/v1alpha1\nkind: MirrorNetwork\nmetadata: {{name: demo}}\nspec:\n  \
             subnet: 192.168.2.0/24\n  gatewayAddress: 192.168.2.1\n  sides:\n    - {{name: inner, \
             interface: eth1, aliasPrefix: 192.168.3.0/24}}\n    - {{name: outer, interface: eth2, \
             aliasPrefix: 192.168.3.0/24}}\n{extra}"
        );
        mirrornet_api::file::load_str("t", &yaml)
            .unwrap()
            .remove(0)
            .valid
    }

    #[test]
    fn flows_parse_as_users_write_them() {
        assert_eq!(
            "tcp/22".parse::<Flow>(),
            Ok(Flow {
                protocol: Protocol::Tcp,
                port: Some(22)
            })
        );
        assert_eq!("ICMP".parse::<Flow>().unwrap().to_string(), "ICMP");
        assert!("icmp/8".parse::<Flow>().is_err());
        assert!("gre".parse::<Flow>().is_err());
        assert!("udp/x".parse::<Flow>().is_err());
    }

    #[test]
    fn the_allow_list_and_one_way_are_explained_for_a_new_connection() {
        let allow = network(
            "  allow:\n    - {protocol: TCP, port: 22}\n    - {protocol: UDP, port: 5000, endPort: 5100}\n",
        );
        let ok = guardrails(&allow, "n", "inner", "udp/5050".parse().ok());
        assert!(
            ok[0].ok && ok[0].detail.contains("UDP/5050 is allowed"),
            "{ok:?}"
        );
        let dropped = guardrails(&allow, "n", "inner", "tcp/80".parse().ok());
        assert!(
            !dropped[0].ok
                && dropped[0]
                    .detail
                    .contains("TCP/80 is not in TCP/22, UDP/5000-5100"),
            "{dropped:?}"
        );
        let unknown = guardrails(&allow, "n", "inner", None);
        assert!(unknown[0].ok && unknown[0].detail.contains("give PROTO/PORT"));

        let one_way = network("  direction: OneWay\n  answerOnly: [outer]\n");
        assert!(guardrails(&one_way, "n", "inner", None).is_empty());
        let refused = guardrails(&one_way, "n", "outer", None);
        assert!(!refused[0].ok && refused[0].detail.contains("may only answer"));
    }
}
