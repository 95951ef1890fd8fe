//! The agent's narrow, typed window onto rtnetlink: read links, addresses, mirrornet's routes
//! and rules; add and delete exactly those objects. Spoken in-process, because one `ip`
//! command costs about 3 ms, mostly process start (DESIGN.md section 5).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol,
};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, InfoData, InfoVrf, LinkAttribute, LinkExtentMask,
    LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use crate::error::NetlinkError;
use crate::plan::{Address, PROTOCOL, Proxy, Route, Rule, RuleSelector, VrfPlan};

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// What the kernel answers for a link name nobody holds (`ENODEV`; older kernels `ENOENT`).
const ENODEV: i32 = 19;
const ENOENT: i32 = 2;

/// Collects the answers to a dump request; `what` names the request in the error.
async fn dump<T>(
    answers: impl futures::Stream<Item = Result<T, rtnetlink::Error>>,
    what: &str,
) -> Result<Vec<T>> {
    answers.try_collect().await.map_err(ctx(what))
}

/// The first attribute of netlink message `$message` matching `$pattern`, as `$value`.
macro_rules! attr {
    ($message:expr, $pattern:pat => $value:expr) => {
        $message.attributes.iter().find_map(|a| match a {
            $pattern => Some($value),
            _ => None,
        })
    };
}

fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// A link as far as planning cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// Index of the device this one is enslaved to (a VRF, a bridge), if any.
    pub controller: Option<u32>,
    /// The routing table of a VRF device; `None` for any other kind of link.
    pub vrf_table: Option<u32>,
    /// The link's alias (`ip link set X alias ...`): mirrornet names its VRFs' owners there.
    pub alias: Option<String>,
    /// The link's IPv4 and IPv6 settings the dump carries.
    pub conf: LinkConf,
}

#[cfg(test)]
impl Link {
    /// A plain link that is up, for tests that build a node in memory.
    pub(crate) fn up(index: u32, name: &str) -> Self {
        Self {
            index,
            name: name.into(),
            up: true,
            controller: None,
            vrf_table: None,
            alias: None,
            conf: LinkConf::default(),
        }
    }
}

/// The per-interface settings mirrornet plans, as the link dump carries them (IFLA_AF_SPEC):
/// reading them there costs nothing per interface, where /proc/sys costs a file each (a few
/// ms for a few hundred interfaces, on every pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkConf {
    /// `forwarding`, `rp_filter` and `src_valid_mark` under net/ipv4/conf/<link>/.
    pub ipv4: Option<[i32; 3]>,
    /// `forwarding` under net/ipv6/conf/<link>/.
    pub ipv6_forwarding: Option<i32>,
}

impl LinkConf {
    /// The value of `key` under net/<family>/conf/<link>/, if the dump carries it.
    pub fn sysctl(&self, family: &str, key: &str) -> Option<i32> {
        match (family, key) {
            ("ipv4", "forwarding") => self.ipv4.map(|c| c[0]),
            ("ipv4", "rp_filter") => self.ipv4.map(|c| c[1]),
            ("ipv4", "src_valid_mark") => self.ipv4.map(|c| c[2]),
            ("ipv6", "forwarding") => self.ipv6_forwarding,
            _ => None,
        }
    }

    fn of(attributes: &[LinkAttribute]) -> Self {
        let mut conf = Self::default();
        for spec in attributes.iter().filter_map(|a| match a {
            LinkAttribute::AfSpecUnspec(spec) => Some(spec),
            _ => None,
        }) {
            for family in spec {
                match family {
                    AfSpecUnspec::Inet(entries) => {
                        for entry in entries {
                            if let AfSpecInet::DevConf(c) = entry {
                                conf.ipv4 = Some([c.forwarding, c.rp_filter, c.src_vmark]);
                            }
                        }
                    }
                    AfSpecUnspec::Inet6(entries) => {
                        for entry in entries {
                            if let AfSpecInet6::DevConf(c) = entry {
                                conf.ipv6_forwarding = Some(c.forwarding);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        conf
    }
}

/// An address on a link, with the flags we care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedAddress {
    pub interface: String,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub noprefixroute: bool,
    /// Whether the address carries mirrornet's protocol ([`PROTOCOL`]), i.e. we added it.
    pub ours: bool,
}

/// A proxy neighbour entry the kernel holds (`ip neigh show proxy`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObservedProxy {
    pub proxy: Proxy,
    /// Whether it carries mirrornet's protocol ([`PROTOCOL`]), i.e. we added it.
    pub ours: bool,
}

/// What the kernel's neighbour table says of an address on a link, for the conflict probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// A host answered (reachable, stale, being confirmed).
    Answered,
    /// An administrator fixed it (permanent, or no resolution on the link).
    Fixed,
    /// Still being resolved, or nobody answered.
    Unanswered,
}

/// The kernel's `l3mdev` rules ("from all lookup [l3mdev-table]"), by priority: added with the
/// first VRF device of a family and never removed by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct L3mdevRules {
    pub ipv4: Option<u32>,
    pub ipv6: Option<u32>,
}

/// A rtnetlink connection.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the current network namespace.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn links(&self) -> Result<BTreeMap<String, Link>> {
        // Without the counters (RTEXT_FILTER_SKIP_STATS): nothing here reads them, and with
        // two thousand links they were a third of a pass's read of the node.
        let request = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]);
        let messages: Vec<LinkMessage> = dump(request.execute(), "listing links").await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let name = attr!(m, LinkAttribute::IfName(n) => n.clone())?;
                let controller = attr!(m, LinkAttribute::Controller(i) => *i);
                let vrf_table = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                        LinkInfo::Data(InfoData::Vrf(vrf)) => vrf.iter().find_map(|v| match v {
                            InfoVrf::TableId(t) => Some(*t),
                            _ => None,
                        }),
                        _ => None,
                    }),
                    _ => None,
                });
                let alias = attr!(m, LinkAttribute::IfAlias(s) => s.clone());
                let conf = LinkConf::of(&m.attributes);
                Some((
                    name.clone(),
                    Link {
                        index: m.header.index,
                        name,
                        up: m.header.flags.contains(LinkFlags::Up),
                        controller,
                        vrf_table,
                        alias,
                        conf,
                    },
                ))
            })
            .collect())
    }

    /// The index of link `name`, asked for alone (`RTM_GETLINK` by name): a change's steps look
    /// up their interfaces one at a time, and dumping every link for each made a cold start
    /// quadratic in the networks (1024 networks: thousands of steps times thousands of links).
    /// `None` when no link has that name.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let answer = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match answer {
            Ok(message) => Ok(message.map(|m| m.header.index)),
            Err(rtnetlink::Error::NetlinkError(e))
                if [-ENODEV, -ENOENT].contains(&e.raw_code()) =>
            {
                Ok(None)
            }
            Err(source) => Err(ctx(format!("looking up link {name}"))(source)),
        }
    }

    pub async fn addresses(&self, links: &BTreeMap<String, Link>) -> Result<Vec<ObservedAddress>> {
        let by_index: BTreeMap<u32, &str> =
            links.values().map(|l| (l.index, l.name.as_str())).collect();
        let messages: Vec<AddressMessage> =
            dump(self.handle.address().get().execute(), "listing addresses").await?;
        Ok(messages
            .iter()
            .filter_map(|m| address_of(m, &|i| by_index.get(&i).map(|n| n.to_string())))
            .collect())
    }

    async fn dump_routes(&self, family: AddressFamily) -> Result<Vec<RouteMessage>> {
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        dump(self.handle.route().get(message).execute(), "listing routes").await
    }

    /// The main table's default routes as they are now (see [`DefaultRoute`]).
    pub async fn default_routes(
        &self,
        links: &BTreeMap<String, Link>,
    ) -> Result<BTreeSet<DefaultRoute>> {
        let mut routes = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.dump_routes(family).await? {
                routes.extend(default_route(&m, links));
            }
        }
        Ok(routes)
    }

    /// The kernel's answer to "how does this node send to `destination`" (`ip route get`):
    /// the output interface's index and the next hop, or `None` where it has no route.
    pub async fn route_to(&self, destination: IpAddr) -> Option<(u32, Option<IpAddr>)> {
        let mut message = RouteMessage::default();
        let (family, address, len) = match destination {
            IpAddr::V4(ip) => (AddressFamily::Inet, RouteAddress::Inet(ip), 32),
            IpAddr::V6(ip) => (AddressFamily::Inet6, RouteAddress::Inet6(ip), 128),
        };
        message.header.address_family = family;
        message.header.destination_prefix_length = len;
        message
            .attributes
            .push(RouteAttribute::Destination(address));
        let answer: Vec<RouteMessage> = self
            .handle
            .route()
            .get(message)
            .execute()
            .try_collect()
            .await
            .ok()?;
        let m = answer.first()?;
        let oif = attr!(m, RouteAttribute::Oif(i) => *i)?;
        Some((
            oif,
            attr!(m, RouteAttribute::Gateway(a) => a).and_then(ip_of),
        ))
    }

    /// mirrornet's routes (protocol [`PROTOCOL`]) in every table, every table id in use by
    /// anyone (so that allocation avoids foreign tables), and the node's default routes.
    pub async fn routes(
        &self,
        links: &BTreeMap<String, Link>,
    ) -> Result<(Vec<Route>, Vec<u32>, BTreeSet<DefaultRoute>)> {
        let by_index: BTreeMap<u32, &str> =
            links.values().map(|l| (l.index, l.name.as_str())).collect();
        let mut ours = Vec::new();
        let mut tables = Vec::new();
        let mut defaults = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.dump_routes(family).await? {
                tables.push(route_table(&m));
                defaults.extend(default_route(&m, links));
                ours.extend(our_route(&m, &|i| by_index.get(&i).map(|n| n.to_string())));
            }
        }
        tables.sort_unstable();
        tables.dedup();
        Ok((ours, tables, defaults))
    }

    /// mirrornet's rules (protocol [`PROTOCOL`]), the tables every other rule looks up, and
    /// the priorities of the kernel's l3mdev rules (IPv4, IPv6) if present.
    pub async fn rules(&self) -> Result<(Vec<Rule>, Vec<u32>, L3mdevRules)> {
        let mut ours = Vec::new();
        let mut foreign_tables = Vec::new();
        let mut l3mdev = L3mdevRules::default();
        for (ipv6, version) in [
            (false, rtnetlink::IpVersion::V4),
            (true, rtnetlink::IpVersion::V6),
        ] {
            let messages: Vec<RuleMessage> =
                dump(self.handle.rule().get(version).execute(), "listing rules").await?;
            for m in &messages {
                match rule_of(m, ipv6) {
                    RuleSeen::Ours(rule) => ours.push(rule),
                    RuleSeen::L3mdev(priority) if ipv6 => l3mdev.ipv6 = priority,
                    RuleSeen::L3mdev(priority) => l3mdev.ipv4 = priority,
                    RuleSeen::Foreign(table) => foreign_tables.push(table),
                }
            }
        }
        foreign_tables.sort_unstable();
        foreign_tables.dedup();
        Ok((ours, foreign_tables, l3mdev))
    }

    pub async fn add_address(&self, index: u32, a: &Address) -> Result<()> {
        let mut request = self.handle.address().add(index, a.address, a.prefix_len);
        // No prefix route: the subnet exists once per side, so it must not appear in main;
        // each side's copy lives in the side's own table. No DAD: the same address on several
        // links is intended.
        let mut flags = AddressFlags::Noprefixroute;
        if a.address.is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(flags));
        // The address protocol (Linux 5.18+) is how a later run knows the address is ours.
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(PROTOCOL)));
        request
            .execute()
            .await
            .map_err(ctx(format!("adding address {a}")))
    }

    pub async fn del_address(&self, index: u32, a: &Address) -> Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = if a.address.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        message.header.prefix_len = a.prefix_len;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(a.address));
        message
            .attributes
            .push(AddressAttribute::Address(a.address));
        self.handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(ctx(format!("removing address {a}")))
    }

    fn route_message(index: u32, r: &Route) -> RouteMessage {
        let mut m = RouteMessage::default();
        let (family, dst, src) = match (r.destination, r.source) {
            (IpNet::V4(d), IpAddr::V4(s)) => (
                AddressFamily::Inet,
                RouteAddress::Inet(d.network()),
                RouteAddress::Inet(s),
            ),
            (IpNet::V6(d), IpAddr::V6(s)) => (
                AddressFamily::Inet6,
                RouteAddress::Inet6(d.network()),
                RouteAddress::Inet6(s),
            ),
            (IpNet::V4(d), IpAddr::V6(_)) => (
                AddressFamily::Inet,
                RouteAddress::Inet(d.network()),
                RouteAddress::Inet(d.network()),
            ),
            (IpNet::V6(d), IpAddr::V4(_)) => (
                AddressFamily::Inet6,
                RouteAddress::Inet6(d.network()),
                RouteAddress::Inet6(d.network()),
            ),
        };
        m.header.address_family = family;
        m.header.destination_prefix_length = r.destination.prefix_len();
        m.header.protocol = RouteProtocol::Other(PROTOCOL);
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.header.table = if r.table < 256 { r.table as u8 } else { 252 };
        m.attributes.push(RouteAttribute::Table(r.table));
        m.attributes.push(RouteAttribute::Destination(dst));
        m.attributes.push(RouteAttribute::PrefSource(src));
        m.attributes.push(RouteAttribute::Oif(index));
        m
    }

    pub async fn add_route(&self, index: u32, r: &Route) -> Result<()> {
        self.handle
            .route()
            .add(Self::route_message(index, r))
            .execute()
            .await
            .map_err(ctx(format!("adding route {r}")))
    }

    pub async fn del_route(&self, index: u32, r: &Route) -> Result<()> {
        self.handle
            .route()
            .del(Self::route_message(index, r))
            .execute()
            .await
            .map_err(ctx(format!("removing route {r}")))
    }

    /// mirrornet's proxy neighbour entries and everyone else's, both families.
    pub async fn proxies(&self, links: &BTreeMap<String, Link>) -> Result<Vec<ObservedProxy>> {
        let names: BTreeMap<u32, &str> =
            links.values().map(|l| (l.index, l.name.as_str())).collect();
        Ok(self
            .proxy_entries()
            .await?
            .into_iter()
            .filter_map(|(index, address, ours)| {
                Some(ObservedProxy {
                    proxy: Proxy {
                        interface: (*names.get(&index)?).to_owned(),
                        address,
                    },
                    ours,
                })
            })
            .collect())
    }

    /// Every proxy neighbour entry as (link index, address, ours): the dump alone, for a
    /// watch that must stay cheap (the kernel announces no change of these entries).
    pub async fn proxy_entries(&self) -> Result<Vec<(u32, IpAddr, bool)>> {
        let messages: Vec<NeighbourMessage> = dump(
            self.handle.neighbours().get().proxies().execute(),
            "listing proxy neighbour entries",
        )
        .await?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let address = attr!(m, NeighbourAttribute::Destination(a) => neighbour_ip(a))??;
                let ours = attr!(m, NeighbourAttribute::Protocol(p) => *p)
                    == Some(RouteProtocol::Other(PROTOCOL));
                Some((m.header.ifindex, address, ours))
            })
            .collect())
    }

    fn proxy_message(index: u32, address: IpAddr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of_address(address);
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Proxy;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(address)));
        m
    }

    pub async fn add_proxy(&self, index: u32, p: &Proxy) -> Result<()> {
        let mut request = self
            .handle
            .neighbours()
            .add(index, p.address)
            .flags(NeighbourFlags::Proxy)
            .replace();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
        request.execute().await.map_err(ctx(format!("adding {p}")))
    }

    pub async fn del_proxy(&self, index: u32, p: &Proxy) -> Result<()> {
        self.handle
            .neighbours()
            .del(Self::proxy_message(index, p.address))
            .execute()
            .await
            .map_err(ctx(format!("removing {p}")))
    }

    /// Starts resolving `address` on link `index`, as a packet to it would (`NTF_USE`): the
    /// kernel sends an ARP request or a neighbour solicitation from the link's own address.
    pub async fn resolve(&self, index: u32, address: IpAddr) -> Result<()> {
        // State none, not rtnetlink's default (permanent): the kernel's garbage collector
        // must be free to drop what the probe leaves.
        self.handle
            .neighbours()
            .add(index, address)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("resolving {address} on link {index}")))
    }

    /// Forgets the neighbour entry of `address` on link `index`, if there is one.
    pub async fn forget_neighbour(&self, index: u32, address: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of_address(address);
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(address)));
        match self.handle.neighbours().del(m).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ENOENT => Ok(()),
            other => other.map_err(ctx(format!("forgetting neighbour {address}"))),
        }
    }

    /// The neighbour table's state of every address on link `index` it holds.
    pub async fn neighbours(&self, index: u32) -> Result<BTreeMap<IpAddr, Resolution>> {
        let messages: Vec<NeighbourMessage> = dump(
            self.handle.neighbours().get().execute(),
            "listing neighbours",
        )
        .await?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let address = attr!(m, NeighbourAttribute::Destination(a) => neighbour_ip(a))??;
                let resolution = match m.header.state {
                    NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe => Resolution::Answered,
                    NeighbourState::Permanent | NeighbourState::Noarp => Resolution::Fixed,
                    _ => Resolution::Unanswered,
                };
                Some((address, resolution))
            })
            .collect())
    }

    fn rule_message(r: &Rule) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = if r.ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.action = match r.selector {
            RuleSelector::Unmarked { .. } => RuleAction::Goto,
            RuleSelector::SkipTarget => RuleAction::Nop,
            _ => RuleAction::ToTable,
        };
        if m.header.action == RuleAction::ToTable {
            m.header.table = if r.table < 256 { r.table as u8 } else { 252 };
            m.attributes.push(RuleAttribute::Table(r.table));
        }
        m.attributes.push(RuleAttribute::Priority(r.priority));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL)));
        match &r.selector {
            RuleSelector::Mark { value, mask } => {
                m.attributes.push(RuleAttribute::FwMark(*value));
                m.attributes.push(RuleAttribute::FwMask(*mask));
            }
            RuleSelector::Iif(name) => m.attributes.push(RuleAttribute::Iifname(name.clone())),
            RuleSelector::LocalSource(ip) => {
                m.header.src_len = if ip.is_ipv4() { 32 } else { 128 };
                m.attributes.push(RuleAttribute::Source(*ip));
                m.attributes.push(RuleAttribute::Iifname("lo".into()));
            }
            RuleSelector::Unmarked { mask, target } => {
                m.attributes.push(RuleAttribute::FwMark(0));
                m.attributes.push(RuleAttribute::FwMask(*mask));
                m.attributes.push(RuleAttribute::Goto(*target));
            }
            RuleSelector::SkipTarget | RuleSelector::Other => {}
        }
        m
    }

    pub async fn add_rule(&self, r: &Rule) -> Result<()> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = Self::rule_message(r);
        request
            .execute()
            .await
            .map_err(ctx(format!("adding rule {r}")))
    }

    pub async fn del_rule(&self, r: &Rule) -> Result<()> {
        self.handle
            .rule()
            .del(Self::rule_message(r))
            .execute()
            .await
            .map_err(ctx(format!("removing rule {r}")))
    }
}

impl Netlink {
    /// Creates VRF device `vrf.name` for `vrf.table`, up, with the owner in its alias.
    pub async fn add_vrf(&self, vrf: &VrfPlan) -> Result<()> {
        let message = rtnetlink::LinkVrf::new(&vrf.name, vrf.table)
            .alias(vrf.alias.clone())
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(ctx(format!(
                "creating VRF {} (table {})",
                vrf.name, vrf.table
            )))
    }

    pub async fn del_link(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(ctx(format!("deleting link {name}")))
    }

    /// Enslaves link `index` to `controller`, or releases it with `None`.
    pub async fn set_controller(
        &self,
        index: u32,
        name: &str,
        controller: Option<u32>,
    ) -> Result<()> {
        let builder = rtnetlink::LinkUnspec::new_with_index(index);
        let message = match controller {
            Some(c) => builder.controller(c).build(),
            None => builder.nocontroller().build(),
        };
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(ctx(format!(
                "{} {name}",
                if controller.is_some() {
                    "enslaving"
                } else {
                    "releasing"
                }
            )))
    }

    /// Sets one IPv4 per-interface setting (an IPV4_DEVCONF index) over rtnetlink: the way to
    /// change it where /proc/sys is read-only. Built by hand because the library's request
    /// form skips zero values, and restoring a setting often means writing 0.
    pub async fn set_ipv4_devconf(
        &self,
        index: u32,
        interface: &str,
        key: u16,
        value: u32,
    ) -> Result<()> {
        use rtnetlink::packet_core::DefaultNla;
        /// IFLA_INET_CONF inside IFLA_AF_SPEC/AF_INET.
        const IFLA_INET_CONF: u16 = 1;
        let mut entry = Vec::with_capacity(8);
        entry.extend_from_slice(&8u16.to_ne_bytes());
        entry.extend_from_slice(&key.to_ne_bytes());
        entry.extend_from_slice(&value.to_ne_bytes());
        let conf = AfSpecInet::Other(DefaultNla::new(IFLA_INET_CONF, entry));
        let message = rtnetlink::LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                conf,
            ])]))
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(ctx(format!(
                "setting IPv4 devconf {key} = {value} on {interface} over netlink"
            )))
    }

    /// Sets a link's `proxy_delay` (`net.ipv{4,6}.neigh.<link>.proxy_delay`) over netlink,
    /// for a container whose /proc/sys is read-only: the per-link parameters of the ARP or
    /// NDP neighbour table (RTM_SETNEIGHTBL).
    pub async fn set_proxy_delay(
        &self,
        index: u32,
        interface: &str,
        ipv6: bool,
        milliseconds: u64,
    ) -> Result<()> {
        use futures::StreamExt;
        use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_route::neighbour_table::{
            NeighbourTableAttribute, NeighbourTableMessage, NeighbourTableParameter,
        };
        let what = || format!("setting proxy_delay of {interface} over netlink");
        let mut message = NeighbourTableMessage::default();
        message.header.family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        message.attributes = vec![
            NeighbourTableAttribute::Name(if ipv6 { "ndisc_cache" } else { "arp_cache" }.into()),
            NeighbourTableAttribute::Parms(vec![
                NeighbourTableParameter::Ifindex(index),
                NeighbourTableParameter::ProxyDelay(milliseconds),
            ]),
        ];
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::SetNeighbourTable(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(request).map_err(ctx(what()))?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                return Err(ctx(what())(rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    /// Adds the l3mdev rule of one family at `priority`, as the kernel itself does with a
    /// namespace's first VRF device (`ip rule add l3mdev`).
    pub async fn add_l3mdev_rule(&self, ipv6: bool, priority: u32) -> Result<()> {
        let mut request = self.handle.rule().add();
        let m = request.message_mut();
        m.header.family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.action = RuleAction::ToTable;
        // "l3mdev and table are mutually exclusive": the request builder's default of the
        // main table must go.
        m.header.table = 0;
        m.attributes.push(RuleAttribute::Priority(priority));
        m.attributes.push(RuleAttribute::L3MDev(true));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Kernel));
        request.execute().await.map_err(ctx(format!(
            "adding the l3mdev rule at priority {priority}"
        )))
    }

    /// Deletes the kernel's l3mdev rule of one family at `priority`.
    pub async fn del_l3mdev_rule(&self, ipv6: bool, priority: u32) -> Result<()> {
        let mut m = RuleMessage::default();
        m.header.family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.action = RuleAction::ToTable;
        m.attributes.push(RuleAttribute::Priority(priority));
        m.attributes.push(RuleAttribute::L3MDev(true));
        self.handle
            .rule()
            .del(m)
            .execute()
            .await
            .map_err(ctx(format!(
                "removing the l3mdev rule at priority {priority}"
            )))
    }
}

/// A default route of the main table: what the node itself reaches the world through, and
/// so what a change must never take away.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DefaultRoute {
    /// The interface it leaves by (empty for a multipath route, which names none).
    pub interface: String,
    pub gateway: Option<IpAddr>,
}

/// `m` as a [`DefaultRoute`], if it is one.
/// The name of the link with an index: a dump's map, or a lookup in a kept view.
pub(crate) type LinkNames<'a> = &'a dyn Fn(u32) -> Option<String>;

/// An address of a notification or a dump, on a link `name_of` knows.
pub(crate) fn address_of(m: &AddressMessage, name_of: LinkNames<'_>) -> Option<ObservedAddress> {
    let interface = name_of(m.header.index)?;
    let address = attr!(m, AddressAttribute::Address(ip) => *ip)?;
    let noprefixroute = m.attributes.iter().any(
        |a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Noprefixroute)),
    );
    let ours = m.attributes.iter().any(|a| {
        matches!(
            a,
            AddressAttribute::Protocol(AddressProtocol::Other(PROTOCOL))
        )
    });
    Some(ObservedAddress {
        interface,
        address,
        prefix_len: m.header.prefix_len,
        noprefixroute,
        ours,
    })
}

/// The route of a notification or a dump, if it is one of mirrornet's (protocol
/// [`PROTOCOL`]).
pub(crate) fn our_route(m: &RouteMessage, name_of: LinkNames<'_>) -> Option<Route> {
    if m.header.protocol != RouteProtocol::Other(PROTOCOL) {
        return None;
    }
    let destination = attr!(m, RouteAttribute::Destination(a) => a).and_then(ip_of)?;
    let source = attr!(m, RouteAttribute::PrefSource(a) => a).and_then(ip_of);
    let oif = attr!(m, RouteAttribute::Oif(i) => *i)?;
    let destination = IpNet::new(destination, m.header.destination_prefix_length).ok()?;
    Some(Route {
        table: route_table(m),
        destination,
        interface: name_of(oif).unwrap_or_default(),
        source: source.unwrap_or(destination.network()),
    })
}

/// What a rule of a notification or a dump is to mirrornet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuleSeen {
    /// One of ours (protocol [`PROTOCOL`]).
    Ours(Rule),
    /// The kernel's l3mdev rule, at this priority.
    L3mdev(Option<u32>),
    /// Somebody else's, looking up this table.
    Foreign(u32),
}

/// The table a rule looks up: the attribute where the header's byte cannot hold it.
pub(crate) fn rule_table(m: &RuleMessage) -> u32 {
    attr!(m, RuleAttribute::Table(t) => *t).unwrap_or(u32::from(m.header.table))
}

pub(crate) fn rule_of(m: &RuleMessage, ipv6: bool) -> RuleSeen {
    let table = rule_table(m);
    let ours = m
        .attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::Protocol(RouteProtocol::Other(PROTOCOL))));
    if m.attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::L3MDev(true)))
    {
        return RuleSeen::L3mdev(attr!(m, RuleAttribute::Priority(p) => *p));
    }
    if !ours {
        return RuleSeen::Foreign(table);
    }
    let priority = attr!(m, RuleAttribute::Priority(p) => *p).unwrap_or(0);
    let mark = attr!(m, RuleAttribute::FwMark(v) => *v);
    let mask = attr!(m, RuleAttribute::FwMask(v) => *v);
    let iif = attr!(m, RuleAttribute::Iifname(n) => n.clone());
    let source = attr!(m, RuleAttribute::Source(ip) => *ip);
    let goto = attr!(m, RuleAttribute::Goto(t) => *t);
    let selector = match (mark, iif, source) {
        _ if m.header.action == RuleAction::Nop => RuleSelector::SkipTarget,
        // The kernel leaves out a zero mark and sends only the mask.
        (None | Some(0), None, None) if m.header.action == RuleAction::Goto => {
            RuleSelector::Unmarked {
                mask: mask.unwrap_or(u32::MAX),
                target: goto.unwrap_or(0),
            }
        }
        (Some(value), None, None) => RuleSelector::Mark {
            value,
            mask: mask.unwrap_or(u32::MAX),
        },
        (None, Some(name), Some(ip)) if name == "lo" => RuleSelector::LocalSource(ip),
        (None, Some(name), None) => RuleSelector::Iif(name),
        // Something of ours we no longer make: no plan wants it, so it goes.
        _ => RuleSelector::Other,
    };
    RuleSeen::Ours(Rule {
        ipv6,
        priority,
        selector,
        table,
    })
}

fn default_route(m: &RouteMessage, links: &BTreeMap<String, Link>) -> Option<DefaultRoute> {
    if route_table(m) != 254 || m.header.destination_prefix_length != 0 {
        return None;
    }
    let interface = attr!(m, RouteAttribute::Oif(i) => *i)
        .and_then(|i| links.values().find(|l| l.index == i))
        .map(|l| l.name.clone())
        .unwrap_or_default();
    Some(DefaultRoute {
        interface,
        gateway: attr!(m, RouteAttribute::Gateway(a) => a).and_then(ip_of),
    })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

pub(crate) fn route_table(m: &RouteMessage) -> u32 {
    attr!(m, RouteAttribute::Table(t) => *t).unwrap_or(u32::from(m.header.table))
}

fn family_of_address(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neighbour_address(address: IpAddr) -> NeighbourAddress {
    match address {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn neighbour_ip(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(a) => Some((*a).into()),
        NeighbourAddress::Inet6(a) => Some((*a).into()),
        _ => None,
    }
}
