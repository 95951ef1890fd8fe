//! `mirrornet-agent trace --from SIDE SRC DST`: the path a packet takes through this node, step
//! by step, as in the classic "follow the packet" answer — which element steers it, which mark
//! and zone it gets, how NAT rewrites it, and which table and interface the kernel itself picks
//! (`ip route get` with the packet's mark and ingress interface).

use std::net::IpAddr;
use std::process::Command;

use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::{Allocation, ValidNetwork};
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

/// The path of `src -> dst` entering from side `from`.
pub fn trace(
    network: &LoadedNetwork,
    allocation: Option<&Allocation>,
    nft: &ObservedNft,
    from: &str,
    src: IpAddr,
    dst: IpAddr,
) -> Vec<Hop> {
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
    hops.push(hop(
        "nat prerouting (-100)",
        format!(
            "mark -> chain xlate-dst.{name}: dnat {dst} -> {} (prefix {} -> {})",
            meaning.real, target.alias, valid.subnet
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
            valid.subnet,
            zone.map(|z| z.to_string()).unwrap_or("?".into()),
            seen_as.map(|a| a.to_string()).unwrap_or("?".into()),
            valid.subnet,
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
