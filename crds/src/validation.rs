//! The one validation of a MirrorNetwork spec, shared by the operator and by the agent (which
//! runs without an API server in file mode).
//!
//! `validate` turns the user's strings into a [`ValidNetwork`] of parsed, typed values, so that
//! nothing downstream parses an address again and nothing invalid can reach a kernel. Every
//! problem found is reported, each with the field path and the reason; the CEL rules in the
//! CRD schema mirror what can be checked there, so `kubectl apply` rejects most of it early.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::v1alpha1::{Backend, MirrorNetworkSpec, Protocol, SideKernelIds};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;
/// Most sides one network may have: bounds the per-packet work and the CEL cost in the schema.
pub const MAX_SIDES: usize = 16;

/// One reason a spec was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.sides[1].aliasPrefix`.
    pub field: String,
    /// What is wrong with it, in words a user can act on.
    pub reason: String,
}

/// Every problem found in one spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<FieldError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Name of a side: a DNS label, unique in its network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SideName(String);

impl SideName {
    /// Checks that `name` is a DNS label (RFC 1123): 1-63 of `[a-z0-9-]`, no '-' at either end.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 63 {
            return Err(format!("{name:?} must be 1 to 63 characters long"));
        }
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok_chars || name.starts_with('-') || name.ends_with('-') {
            return Err(format!(
                "{name:?} is not a DNS label (lower case letters, digits and '-', starting and ending with a letter or digit)"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SideName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Name of a network interface as the kernel accepts it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Checks the kernel's rules for link names (`dev_valid_name`): 1-15 bytes, not `.` or
    /// `..`, no '/', ':' , whitespace or control characters.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.len() > MAX_INTERFACE_NAME {
            return Err(format!(
                "{name:?} is {} bytes long; the kernel allows at most {MAX_INTERFACE_NAME}",
                name.len()
            ));
        }
        if name == "." || name == ".." {
            return Err(format!("{name:?} is not a valid interface name"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{name:?} contains {c:?}; interface names cannot contain '/', ':', whitespace or control characters"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A side after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSide {
    pub name: SideName,
    pub interface: InterfaceName,
    /// How this side appears to the others; same length as the subnet, host bits clear.
    pub alias: IpNet,
    /// Ids the user fixed for this side.
    pub kernel_ids: SideKernelIds,
    /// The user allowed an interface the node itself uses.
    pub take_over_node_interface: bool,
}

/// A spec after validation: parsed, typed, and consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNetwork {
    pub subnet: IpNet,
    /// The part of `subnet` the hosts use: all of it, unless `spec.hostPrefix` places the
    /// aliases inside `subnet` (see [`ValidNetwork::on_link`]). The 1:1 mapping translates
    /// between it and the alias prefixes.
    pub hosts: IpNet,
    pub gateway: IpAddr,
    pub sides: Vec<ValidSide>,
    pub backend: Backend,
    /// Sides that may only answer (`direction: OneWay`); empty for `Both`.
    pub answer_only: std::collections::BTreeSet<String>,
    /// What a side may open towards another; empty: everything.
    pub allow: Vec<ValidAllow>,
    /// The datapath is withdrawn; the ids stay.
    pub suspend: bool,
    /// Hosts to reach after a change before keeping it.
    pub probes: Vec<ValidProbe>,
    /// How long the checks after a change may take.
    pub verify_timeout: std::time::Duration,
}

/// Default of `spec.verify.timeoutSeconds`.
pub const DEFAULT_VERIFY_TIMEOUT_SECONDS: u32 = 10;
/// Largest `spec.verify.timeoutSeconds`: a node holds a change unconfirmed for at most this.
pub const MAX_VERIFY_TIMEOUT_SECONDS: u32 = 300;

/// One allow-list entry after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidAllow {
    pub protocol: Protocol,
    /// First and last destination port; `None`: every port (or a protocol without ports).
    pub ports: Option<(u16, u16)>,
}

/// One probe after validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidProbe {
    pub side: SideName,
    pub address: IpAddr,
    pub port: u16,
}

impl ValidNetwork {
    /// True for an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.subnet, IpNet::V6(_))
    }

    /// The aliases lie inside `subnet`, where the hosts reach them without a route: the node
    /// answers address resolution for them on every side.
    pub fn on_link(&self) -> bool {
        self.hosts != self.subnet
    }
}

/// Most addresses one on-link alias prefix may cover: the node answers for, and probes,
/// each one on each side (and the kernel's neighbour table keeps 1024 entries by default).
pub const MAX_ON_LINK_ALIAS_ADDRESSES: u32 = 256;

/// Parses a prefix and insists on the canonical form (host bits clear), because a prefix with
/// host bits set is nearly always a typo for another network.
fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR prefix (expected e.g. 192.168.2.0/24)"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

/// Validates a spec. Returns every problem found, not only the first.
pub fn validate(spec: &MirrorNetworkSpec) -> Result<ValidNetwork, SpecErrors> {
    let mut errors = Vec::new();
    let mut err = |field: String, reason: String| errors.push(FieldError { field, reason });

    let subnet = match parse_prefix(&spec.subnet) {
        Ok(net) => Some(net),
        Err(reason) => {
            err("spec.subnet".into(), reason);
            None
        }
    };

    let gateway = match spec.gateway_address.trim().parse::<IpAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            err(
                "spec.gatewayAddress".into(),
                format!("{:?} is not an IP address", spec.gateway_address),
            );
            None
        }
    };
    if let (Some(subnet), Some(gateway)) = (subnet, gateway) {
        if subnet.addr().is_ipv4() != gateway.is_ipv4() {
            err(
                "spec.gatewayAddress".into(),
                format!(
                    "{gateway} is {} but spec.subnet {subnet} is {}; IPv4 and IPv6 cannot be mixed in one network",
                    if gateway.is_ipv4() { "IPv4" } else { "IPv6" },
                    family(&subnet)
                ),
            );
        } else if !subnet.contains(&gateway) {
            err(
                "spec.gatewayAddress".into(),
                format!("{gateway} is outside spec.subnet {subnet}"),
            );
        } else if gateway == subnet.network() && subnet.prefix_len() < subnet.max_prefix_len() - 1 {
            err(
                "spec.gatewayAddress".into(),
                format!("{gateway} is the network address of {subnet}; pick a host address"),
            );
        } else if matches!(subnet, IpNet::V4(_))
            && gateway == subnet.broadcast()
            && subnet.prefix_len() < 31
        {
            err(
                "spec.gatewayAddress".into(),
                format!("{gateway} is the broadcast address of {subnet}; pick a host address"),
            );
        }
    }

    // The hosts' part of the subnet: all of it, or the `hostPrefix` that leaves room for
    // on-link aliases.
    let hosts = match (subnet, spec.host_prefix.as_deref()) {
        (subnet, None) => subnet,
        (None, Some(_)) => None,
        (Some(subnet), Some(text)) => match parse_prefix(text) {
            Ok(hosts) if family(&hosts) != family(&subnet) => {
                err(
                    "spec.hostPrefix".into(),
                    format!(
                        "{hosts} is {} but spec.subnet {subnet} is {}; IPv4 and IPv6 cannot be mixed in one network",
                        family(&hosts),
                        family(&subnet)
                    ),
                );
                None
            }
            Ok(hosts) if !subnet.contains(&hosts) || hosts.prefix_len() == subnet.prefix_len() => {
                err(
                    "spec.hostPrefix".into(),
                    format!(
                        "{hosts} is not a smaller part of spec.subnet {subnet}; it must leave room in the subnet for the alias prefixes"
                    ),
                );
                None
            }
            Ok(hosts) if hosts.max_prefix_len() - hosts.prefix_len() > 8 => {
                err(
                    "spec.hostPrefix".into(),
                    format!(
                        "{hosts} covers more than {MAX_ON_LINK_ALIAS_ADDRESSES} addresses, the most an on-link alias prefix may (an IPv4 /24 or longer, an IPv6 /120 or longer); for larger ranges leave spec.hostPrefix out and route alias prefixes outside spec.subnet"
                    ),
                );
                None
            }
            Ok(hosts) => Some(hosts),
            Err(reason) => {
                err("spec.hostPrefix".into(), reason);
                None
            }
        },
    };
    let on_link = spec.host_prefix.is_some();
    if on_link
        && let (Some(hosts), Some(gateway)) = (hosts, gateway)
        && hosts.contains(&gateway)
    {
        err(
            "spec.gatewayAddress".into(),
            format!(
                "{gateway} is inside spec.hostPrefix {hosts}; the node needs an address no host uses"
            ),
        );
    }

    if spec.sides.len() < 2 {
        err(
            "spec.sides".into(),
            format!(
                "has {} side(s); a mirror network needs at least two",
                spec.sides.len()
            ),
        );
    }
    if spec.sides.len() > MAX_SIDES {
        err(
            "spec.sides".into(),
            format!(
                "has {} sides; at most {MAX_SIDES} are supported",
                spec.sides.len()
            ),
        );
    }

    let mut names = BTreeSet::new();
    let mut interfaces = BTreeSet::new();
    let mut aliases: Vec<(usize, IpNet)> = Vec::new();
    let mut sides = Vec::new();
    for (i, side) in spec.sides.iter().enumerate() {
        let at = |field: &str| format!("spec.sides[{i}].{field}");
        let name = match SideName::new(&side.name) {
            Ok(n) => {
                if !names.insert(n.clone()) {
                    err(
                        at("name"),
                        format!("{:?} is used by another side", side.name),
                    );
                }
                Some(n)
            }
            Err(reason) => {
                err(at("name"), reason);
                None
            }
        };
        let interface = match InterfaceName::new(&side.interface) {
            Ok(n) => {
                if !interfaces.insert(n.clone()) {
                    err(
                        at("interface"),
                        format!("{:?} is used by another side", side.interface),
                    );
                }
                Some(n)
            }
            Err(reason) => {
                err(at("interface"), reason);
                None
            }
        };
        let alias = match parse_prefix(&side.alias_prefix) {
            Ok(alias) => {
                let mut ok = true;
                if let Some(subnet) = subnet {
                    if family(&alias) != family(&subnet) {
                        err(
                            at("aliasPrefix"),
                            format!(
                                "{alias} is {} but spec.subnet {subnet} is {}; IPv4 and IPv6 cannot be mixed in one network",
                                family(&alias),
                                family(&subnet)
                            ),
                        );
                        ok = false;
                    } else if on_link {
                        ok = hosts.is_none_or(|hosts| {
                            on_link_alias(&mut err, &at("aliasPrefix"), alias, subnet, hosts)
                        });
                        if let Some(gateway) = gateway.filter(|g| alias.contains(g)) {
                            err(
                                "spec.gatewayAddress".into(),
                                format!(
                                    "{gateway} is inside spec.sides[{i}].aliasPrefix {alias}; the node needs an address no alias stands for"
                                ),
                            );
                        }
                    } else if alias.prefix_len() != subnet.prefix_len() {
                        err(
                            at("aliasPrefix"),
                            format!(
                                "{alias} is a /{} but spec.subnet {subnet} is a /{}; a 1:1 mapping needs equal lengths",
                                alias.prefix_len(),
                                subnet.prefix_len()
                            ),
                        );
                        ok = false;
                    } else if alias.contains(&subnet) || subnet.contains(&alias) {
                        err(
                            at("aliasPrefix"),
                            format!(
                                "{alias} overlaps spec.subnet {subnet}; to place the aliases inside the subnet, set spec.hostPrefix to the part the hosts use"
                            ),
                        );
                        ok = false;
                    }
                }
                aliases.push((i, alias));
                ok.then_some(alias)
            }
            Err(reason) => {
                err(at("aliasPrefix"), reason);
                None
            }
        };
        if let Some(ids) = &side.kernel_ids {
            if ids.table.is_some_and(|t| matches!(t, 0 | 253..=255)) {
                err(
                    at("kernelIds.table"),
                    "0, 253 (default), 254 (main) and 255 (local) are the kernel's own tables"
                        .into(),
                );
            }
            if ids.mark == Some(0) {
                err(
                    at("kernelIds.mark"),
                    "0 is the mark of unmarked packets".into(),
                );
            }
            if ids.zone == Some(0) {
                err(
                    at("kernelIds.zone"),
                    "0 is the default conntrack zone".into(),
                );
            }
            if ids.rule_priority.is_some_and(|p| p == 0 || p >= 32766) {
                err(
                    at("kernelIds.rulePriority"),
                    "must be between 1 and 32765, before the main table's rule".into(),
                );
            }
        }
        if let (Some(name), Some(interface), Some(alias)) = (name, interface, alias) {
            sides.push(ValidSide {
                name,
                interface,
                alias,
                kernel_ids: side.kernel_ids.clone().unwrap_or_default(),
                take_over_node_interface: side.take_over_node_interface,
            });
        }
    }

    if spec.sides.len() >= 3 {
        for (n, (i, a)) in aliases.iter().enumerate() {
            if let Some((j, _)) = aliases[..n].iter().find(|(_, b)| b == a) {
                err(
                    format!("spec.sides[{i}].aliasPrefix"),
                    format!(
                        "{a} is also the alias of spec.sides[{j}]; with three or more sides every alias must be distinct"
                    ),
                );
            }
        }
    }
    // Aliases of different families or lengths than the subnet are already reported; two
    // distinct equal-length aliases cannot partially overlap, so equality is the only clash.

    match spec.direction {
        crate::v1alpha1::Direction::Both => {
            if !spec.answer_only.is_empty() {
                err(
                    "spec.answerOnly".into(),
                    "only meaningful with direction: OneWay".into(),
                );
            }
        }
        crate::v1alpha1::Direction::OneWay => {
            if spec.answer_only.is_empty() {
                err(
                    "spec.answerOnly".into(),
                    "direction: OneWay needs the sides that may only answer".into(),
                );
            }
            for (i, name) in spec.answer_only.iter().enumerate() {
                if !spec.sides.iter().any(|s| s.name == *name) {
                    err(
                        format!("spec.answerOnly[{i}]"),
                        format!("{name:?} is not the name of a side"),
                    );
                }
            }
            if !spec.sides.is_empty()
                && spec
                    .sides
                    .iter()
                    .all(|s| spec.answer_only.contains(&s.name))
            {
                err(
                    "spec.answerOnly".into(),
                    "every side would only answer: no connection could ever start".into(),
                );
            }
        }
    }

    let mut allow = Vec::new();
    for (i, entry) in spec.allow.iter().enumerate() {
        let at = |field: &str| format!("spec.allow[{i}].{field}");
        let has_ports = matches!(
            entry.protocol,
            Protocol::Tcp | Protocol::Udp | Protocol::Sctp
        );
        let ports = match (entry.port, entry.end_port) {
            (None, None) => None,
            (None, Some(_)) => {
                err(
                    at("endPort"),
                    "needs port, the first port of the range".into(),
                );
                None
            }
            (Some(0), _) | (_, Some(0)) => {
                err(at("port"), "0 is not a port".into());
                None
            }
            (Some(first), end) => {
                let last = end.unwrap_or(first);
                if last < first {
                    err(at("endPort"), format!("{last} is below port {first}"));
                }
                Some((first, last))
            }
        };
        if ports.is_some() && !has_ports {
            err(
                at("port"),
                format!(
                    "{} has no ports; only TCP, UDP and SCTP do",
                    entry.protocol.as_str()
                ),
            );
        }
        allow.push(ValidAllow {
            protocol: entry.protocol,
            ports,
        });
    }

    let mut probes = Vec::new();
    let mut verify_timeout = DEFAULT_VERIFY_TIMEOUT_SECONDS;
    if let Some(verify) = &spec.verify {
        if let Some(t) = verify.timeout_seconds {
            if t == 0 || t > MAX_VERIFY_TIMEOUT_SECONDS {
                err(
                    "spec.verify.timeoutSeconds".into(),
                    format!("{t} is not between 1 and {MAX_VERIFY_TIMEOUT_SECONDS} seconds"),
                );
            }
            verify_timeout = t;
        }
        for (i, probe) in verify.probes.iter().enumerate() {
            let at = |field: &str| format!("spec.verify.probes[{i}].{field}");
            let side = spec.sides.iter().find(|s| s.name == probe.side);
            if side.is_none() {
                err(
                    at("side"),
                    format!("{:?} is not the name of a side", probe.side),
                );
            }
            let address = match probe.address.trim().parse::<IpAddr>() {
                Ok(a) => {
                    if on_link
                        && hosts
                            .is_some_and(|h| h.addr().is_ipv4() == a.is_ipv4() && !h.contains(&a))
                    {
                        err(
                            at("address"),
                            format!(
                                "{a} is outside spec.hostPrefix {}; probe a host by its own address on its side",
                                spec.host_prefix.as_deref().unwrap_or_default()
                            ),
                        );
                    } else if subnet.is_some_and(|n| !n.contains(&a)) {
                        err(
                            at("address"),
                            format!(
                                "{a} is outside spec.subnet {}; probe a host by its own address on its side",
                                spec.subnet
                            ),
                        );
                    } else if gateway == Some(a) {
                        err(
                            at("address"),
                            format!("{a} is the node's own gateway address; probe a host"),
                        );
                    }
                    Some(a)
                }
                Err(_) => {
                    err(
                        at("address"),
                        format!("{:?} is not an IP address", probe.address),
                    );
                    None
                }
            };
            if probe.port == 0 {
                err(at("port"), "0 is not a port".into());
            }
            if let (Some(_), Some(address), Ok(side)) = (side, address, SideName::new(&probe.side))
            {
                probes.push(ValidProbe {
                    side,
                    address,
                    port: probe.port,
                });
            }
        }
    }

    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    match (subnet, hosts, gateway) {
        (Some(subnet), Some(hosts), Some(gateway)) => Ok(ValidNetwork {
            subnet,
            hosts,
            gateway,
            sides,
            backend: spec.backend,
            answer_only: spec.answer_only.iter().cloned().collect(),
            allow,
            suspend: spec.suspend,
            probes,
            verify_timeout: std::time::Duration::from_secs(verify_timeout.into()),
        }),
        _ => unreachable!("a missing subnet, host prefix or gateway was reported as an error"),
    }
}

/// Checks an alias prefix placed inside the subnet (`spec.hostPrefix` is set): the hosts'
/// length, inside the subnet, apart from the hosts. True when it passes.
fn on_link_alias(
    err: &mut impl FnMut(String, String),
    field: &str,
    alias: IpNet,
    subnet: IpNet,
    hosts: IpNet,
) -> bool {
    let reason = if alias.prefix_len() != hosts.prefix_len() {
        format!(
            "{alias} is a /{} but spec.hostPrefix {hosts} is a /{}; a 1:1 mapping needs equal lengths",
            alias.prefix_len(),
            hosts.prefix_len()
        )
    } else if !subnet.contains(&alias) {
        format!(
            "{alias} is outside spec.subnet {subnet}; with spec.hostPrefix the aliases lie inside the subnet, where hosts reach them without a route"
        )
    } else if alias == hosts {
        format!("{alias} is spec.hostPrefix; an alias must not cover the hosts' own addresses")
    } else if let IpNet::V4(v4) = subnet
        && let Some(edge) = [v4.network(), v4.broadcast()]
            .into_iter()
            .find(|a| alias.contains(&IpAddr::V4(*a)))
    {
        format!(
            "{alias} covers {edge}, the network or broadcast address of spec.subnet {subnet}: hosts send broadcasts there, which must not be forwarded; choose an alias prefix that leaves it out"
        )
    } else {
        return true;
    };
    err(field.into(), reason);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::load_str;

    const ON_LINK: &str = include_str!("../../examples/on-link.yaml");

    #[test]
    fn on_link_aliases_map_the_hosts_part_of_the_subnet() {
        let valid = &load_str("on-link", ON_LINK).unwrap()[0].valid;
        assert!(valid.on_link());
        assert_eq!(valid.hosts, "192.168.2.0/26".parse::<IpNet>().unwrap());
        let routed = &load_str("seed", include_str!("../../examples/seed.yaml")).unwrap()[0].valid;
        assert!(!routed.on_link());
        assert_eq!(routed.hosts, routed.subnet);
    }

    /// An alias over the subnet's broadcast address would turn a host's broadcast into a
    /// unicast to a twin: refused, though CEL cannot compute the address to say so.
    #[test]
    fn an_on_link_alias_over_the_broadcast_address_is_refused() {
        let text = ON_LINK
            .replace("192.168.2.128/26", "192.168.2.192/26")
            .replace("192.168.2.254", "192.168.2.190");
        let errors = match load_str("broadcast", &text) {
            Err(crate::file::FileError::Invalid { errors, .. }) => errors.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(
            errors.contains("spec.sides[0].aliasPrefix: 192.168.2.192/26 covers 192.168.2.255"),
            "{errors}"
        );
    }
}
