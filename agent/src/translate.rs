//! `mirrornet-agent translate ADDRESS --from SIDE`: what an address means to a host on one
//! side, and how every other side sees the same host. Pure arithmetic on the spec: the 1:1
//! prefix mapping keeps the host bits and swaps the prefix.

use std::net::IpAddr;

use ipnet::IpNet;
use mirrornet_api::ValidNetwork;
use serde::Serialize;

/// One line of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meaning {
    /// The side whose host this is.
    pub host_side: String,
    /// The host's real address, on its own LAN.
    pub real: IpAddr,
    /// How each other side reaches it: (side, address).
    pub seen_by: Vec<(String, IpAddr)>,
}

/// Why an address means nothing to the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("no side named {0:?} in this network")]
    NoSide(String),
    #[error("{address} is neither in {subnet} nor in an alias prefix side {from} can reach")]
    Outside {
        address: IpAddr,
        subnet: IpNet,
        from: String,
    },
}

/// The same host bits under another prefix of the same length.
fn map(address: IpAddr, from: IpNet, to: IpNet) -> IpAddr {
    match (address, from.network(), to.network()) {
        (IpAddr::V4(a), IpAddr::V4(_), IpAddr::V4(t)) => {
            let host = u32::from(a)
                & !(u32::MAX
                    .checked_shl(32 - u32::from(from.prefix_len()))
                    .unwrap_or(0));
            IpAddr::V4((u32::from(t) | host).into())
        }
        (IpAddr::V6(a), IpAddr::V6(_), IpAddr::V6(t)) => {
            let host = u128::from(a)
                & !(u128::MAX
                    .checked_shl(128 - u32::from(from.prefix_len()))
                    .unwrap_or(0));
            IpAddr::V6((u128::from(t) | host).into())
        }
        _ => address,
    }
}

/// What `address`, used by a host on side `from`, reaches.
pub fn translate(
    network: &ValidNetwork,
    from: &str,
    address: IpAddr,
) -> Result<Meaning, TranslateError> {
    if !network.sides.iter().any(|s| s.name.as_str() == from) {
        return Err(TranslateError::NoSide(from.into()));
    }
    let seen_by = |host_side: &str, real: IpAddr| -> Vec<(String, IpAddr)> {
        let own_alias = network
            .sides
            .iter()
            .find(|s| s.name.as_str() == host_side)
            .map(|s| s.alias);
        network
            .sides
            .iter()
            .filter(|s| s.name.as_str() != host_side)
            .filter_map(|s| Some((s.name.to_string(), map(real, network.hosts, own_alias?))))
            .collect()
    };
    // Its own LAN: the address is what it says (with on-link aliases, the hosts' part of it).
    if network.hosts.contains(&address) {
        return Ok(Meaning {
            host_side: from.into(),
            real: address,
            seen_by: seen_by(from, address),
        });
    }
    // Another side's alias: the host with the same host bits on that side.
    for side in network.sides.iter().filter(|s| s.name.as_str() != from) {
        if side.alias.contains(&address) {
            let real = map(address, side.alias, network.hosts);
            return Ok(Meaning {
                host_side: side.name.to_string(),
                real,
                seen_by: seen_by(side.name.as_str(), real),
            });
        }
    }
    Err(TranslateError::Outside {
        address,
        subnet: network.hosts,
        from: from.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> ValidNetwork {
        mirrornet_api::file::load_str("t", text).unwrap()[0]
            .valid
            .clone()
    }

    #[test]
    fn seed_aliases_map_host_bits_across() {
        let n = network(include_str!("../../examples/seed.yaml"));
        let m = translate(&n, "inner", "192.168.3.11".parse().unwrap()).unwrap();
        assert_eq!(
            (m.host_side.as_str(), m.real.to_string()),
            ("outer", "192.168.2.11".into())
        );
        assert_eq!(
            m.seen_by,
            vec![("inner".into(), "192.168.3.11".parse().unwrap())]
        );
        let own = translate(&n, "inner", "192.168.2.10".parse().unwrap()).unwrap();
        assert_eq!(own.host_side, "inner");
        assert_eq!(
            own.seen_by,
            vec![("outer".into(), "192.168.3.10".parse().unwrap())]
        );
        assert!(translate(&n, "inner", "10.0.0.1".parse().unwrap()).is_err());
        assert!(translate(&n, "nobody", "192.168.3.1".parse().unwrap()).is_err());
    }

    #[test]
    fn on_link_aliases_map_the_hosts_part_only() {
        let n = network(include_str!("../../examples/on-link.yaml"));
        let m = translate(&n, "inner", "192.168.2.138".parse().unwrap()).unwrap();
        assert_eq!(
            (m.host_side.as_str(), m.real.to_string()),
            ("outer", "192.168.2.10".into())
        );
        assert_eq!(
            m.seen_by,
            vec![("inner".into(), "192.168.2.138".parse().unwrap())]
        );
        let own = translate(&n, "outer", "192.168.2.10".parse().unwrap()).unwrap();
        assert_eq!(own.host_side, "outer");
        // In the subnet but neither a host nor an alias: nothing.
        assert!(translate(&n, "inner", "192.168.2.100".parse().unwrap()).is_err());
    }

    #[test]
    fn three_sides_and_ipv6() {
        let n = network(include_str!("../../examples/three-sides.yaml"));
        let m = translate(&n, "prod", "10.23.0.7".parse().unwrap()).unwrap();
        assert_eq!(
            (m.host_side.as_str(), m.real.to_string()),
            ("twin-b", "10.20.0.7".into())
        );
        assert_eq!(
            m.seen_by,
            vec![
                ("prod".into(), "10.23.0.7".parse().unwrap()),
                ("twin-a".into(), "10.23.0.7".parse().unwrap())
            ]
        );
        let v6 = network(include_str!("../../examples/ipv6.yaml"));
        let m = translate(&v6, "outer", "fd00:3::1:2".parse().unwrap()).unwrap();
        assert_eq!(m.real.to_string(), "fd00:2::1:2");
    }
}
