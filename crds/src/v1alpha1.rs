//! The `mirrornet.io/v1alpha1` MirrorNetwork resource: what a user declares and what the
//! operator and the agents report back.
//!
//! Field names follow the sketch in DESIGN.md (`subnet`, `gatewayAddress`, `sides[].name`,
//! `sides[].interface`, `sides[].aliasPrefix`, `nodeSelector`): users, docs and tools rely on
//! them. Doc comments on fields become `kubectl explain` output, so they are written for the
//! person running it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A network and its copies that reuse the same address range, joined on the selected nodes.
///
/// Every node selected by `nodeSelector` becomes a middleman: each side keeps its own routing
/// domain, and a host on one side reaches a host on another side through that side's alias
/// prefix (1:1 prefix NAT keeps the host bits).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mirrornet.io",
    version = "v1alpha1",
    kind = "MirrorNetwork",
    plural = "mirrornetworks",
    shortname = "mnet",
    category = "mirrornet",
    category = "networking",
    status = "MirrorNetworkStatus",
    cel,
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: must be a DNS label (at most 63 lower case letters, digits and '-'): it names kernel objects"),
    printcolumn = r#"{"name":"Ready","type":"integer","description":"Nodes where the network is programmed","jsonPath":".status.readyNodes"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Nodes the network selects","jsonPath":".status.desiredNodes"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","description":"Datapath backend in use on the nodes","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","priority":1,"description":"The address range every side uses","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","description":"Why the network is or is not Ready","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("isCIDR(self.subnet)").message("spec.subnet: not a CIDR prefix (expected e.g. 192.168.2.0/24)").field_path(".subnet"),
    validation = Rule::new("!isCIDR(self.subnet) || cidr(self.subnet).masked() == cidr(self.subnet)").message("spec.subnet: host bits are set; write the network address of the prefix").field_path(".subnet"),
    validation = Rule::new("isIP(self.gatewayAddress)").message("spec.gatewayAddress: not an IP address").field_path(".gatewayAddress"),
    validation = Rule::new("!isCIDR(self.subnet) || !isIP(self.gatewayAddress) || ip(self.gatewayAddress).family() != cidr(self.subnet).ip().family() || cidr(self.subnet).containsIP(self.gatewayAddress)").message("spec.gatewayAddress: must lie inside spec.subnet").field_path(".gatewayAddress"),
    validation = Rule::new("!isCIDR(self.subnet) || !isIP(self.gatewayAddress) || ip(self.gatewayAddress).family() == cidr(self.subnet).ip().family()").message("spec.gatewayAddress: IPv4 and IPv6 are mixed; use the family of spec.subnet").field_path(".gatewayAddress"),
    validation = Rule::new("!isCIDR(self.subnet) || self.sides.all(s, !isCIDR(s.aliasPrefix) || cidr(s.aliasPrefix).ip().family() == cidr(self.subnet).ip().family())").message("spec.sides[].aliasPrefix: IPv4 and IPv6 are mixed; use the family of spec.subnet").field_path(".sides"),
    validation = Rule::new("has(self.hostPrefix) || !isCIDR(self.subnet) || self.sides.all(s, !isCIDR(s.aliasPrefix) || cidr(s.aliasPrefix).ip().family() != cidr(self.subnet).ip().family() || cidr(s.aliasPrefix).prefixLength() == cidr(self.subnet).prefixLength())").message("spec.sides[].aliasPrefix: prefix length must equal the length of spec.subnet").field_path(".sides"),
    validation = Rule::new("has(self.hostPrefix) || !isCIDR(self.subnet) || self.sides.all(s, !isCIDR(s.aliasPrefix) || cidr(s.aliasPrefix).ip().family() != cidr(self.subnet).ip().family() || !(cidr(s.aliasPrefix).containsCIDR(self.subnet) || cidr(self.subnet).containsCIDR(s.aliasPrefix)))").message("spec.sides[].aliasPrefix: overlaps spec.subnet (to place aliases inside it, set spec.hostPrefix)").field_path(".sides"),
    validation = Rule::new("!has(self.hostPrefix) || isCIDR(self.hostPrefix)").message("spec.hostPrefix: not a CIDR prefix (expected e.g. 192.168.2.0/26)").field_path(".hostPrefix"),
    validation = Rule::new("!has(self.hostPrefix) || !isCIDR(self.hostPrefix) || cidr(self.hostPrefix).masked() == cidr(self.hostPrefix)").message("spec.hostPrefix: host bits are set; write the network address of the prefix").field_path(".hostPrefix"),
    validation = Rule::new("!has(self.hostPrefix) || !isCIDR(self.hostPrefix) || !isCIDR(self.subnet) || (cidr(self.hostPrefix).ip().family() == cidr(self.subnet).ip().family() && cidr(self.subnet).containsCIDR(self.hostPrefix) && cidr(self.hostPrefix).prefixLength() > cidr(self.subnet).prefixLength())").message("spec.hostPrefix: must be a smaller part of spec.subnet, leaving room for the alias prefixes").field_path(".hostPrefix"),
    validation = Rule::new("!has(self.hostPrefix) || !isCIDR(self.hostPrefix) || cidr(self.hostPrefix).prefixLength() >= (cidr(self.hostPrefix).ip().family() == 4 ? 24 : 120)").message("spec.hostPrefix: on-link aliases cover at most 256 addresses (an IPv4 /24 or longer, an IPv6 /120 or longer)").field_path(".hostPrefix"),
    validation = Rule::new("!has(self.hostPrefix) || !isCIDR(self.hostPrefix) || !isCIDR(self.subnet) || self.sides.all(s, !isCIDR(s.aliasPrefix) || cidr(s.aliasPrefix).ip().family() != cidr(self.subnet).ip().family() || (cidr(s.aliasPrefix).prefixLength() == cidr(self.hostPrefix).prefixLength() && cidr(self.subnet).containsCIDR(s.aliasPrefix) && !cidr(self.hostPrefix).containsCIDR(s.aliasPrefix)))").message("spec.sides[].aliasPrefix: with spec.hostPrefix, every alias prefix has its length and lies inside spec.subnet, outside spec.hostPrefix").field_path(".sides"),
    validation = Rule::new("!has(self.hostPrefix) || !isCIDR(self.hostPrefix) || !isIP(self.gatewayAddress) || ip(self.gatewayAddress).family() != cidr(self.hostPrefix).ip().family() || (!cidr(self.hostPrefix).containsIP(self.gatewayAddress) && self.sides.all(s, !isCIDR(s.aliasPrefix) || cidr(s.aliasPrefix).ip().family() != ip(self.gatewayAddress).family() || !cidr(s.aliasPrefix).containsIP(self.gatewayAddress)))").message("spec.gatewayAddress: with spec.hostPrefix it must lie outside spec.hostPrefix and every alias prefix").field_path(".gatewayAddress"),
    validation = Rule::new("!has(self.hostPrefix) || !isCIDR(self.hostPrefix) || !has(self.verify) || !has(self.verify.probes) || self.verify.probes.all(p, !isIP(p.address) || ip(p.address).family() != cidr(self.hostPrefix).ip().family() || cidr(self.hostPrefix).containsIP(p.address))").message("spec.verify.probes[].address: must be a host's address inside spec.hostPrefix").field_path(".verify"),
    validation = Rule::new("self.sides.all(a, self.sides.exists_one(b, b.name == a.name))").message("spec.sides[].name: side names must be unique").field_path(".sides"),
    validation = Rule::new("self.sides.all(a, self.sides.exists_one(b, b.interface == a.interface))").message("spec.sides[].interface: interface names must be unique in the network").field_path(".sides"),
    validation = Rule::new("size(self.sides) < 3 || self.sides.all(a, self.sides.exists_one(b, b.aliasPrefix == a.aliasPrefix))").message("spec.sides[].aliasPrefix: with three or more sides every alias prefix must be distinct").field_path(".sides"),
    validation = Rule::new("!has(self.answerOnly) || self.answerOnly.all(n, self.sides.exists(s, s.name == n))").message("spec.answerOnly: every entry must be the name of a side").field_path(".answerOnly"),
    validation = Rule::new("!has(self.answerOnly) || size(self.answerOnly) == 0 || (has(self.direction) && self.direction == 'OneWay')").message("spec.answerOnly: only meaningful with direction: OneWay").field_path(".answerOnly"),
    validation = Rule::new("!has(self.verify) || !has(self.verify.probes) || self.verify.probes.all(p, self.sides.exists(s, s.name == p.side))").message("spec.verify.probes[].side: must be the name of a side").field_path(".verify"),
    validation = Rule::new("!has(self.verify) || !has(self.verify.probes) || !isCIDR(self.subnet) || self.verify.probes.all(p, isIP(p.address) && ip(p.address).family() == cidr(self.subnet).ip().family() && cidr(self.subnet).containsIP(p.address))").message("spec.verify.probes[].address: must be an IP address inside spec.subnet").field_path(".verify"),
    validation = Rule::new("!has(self.direction) || self.direction != 'OneWay' || (has(self.answerOnly) && size(self.answerOnly) > 0 && self.sides.exists(s, !(s.name in self.answerOnly)))").message("spec.answerOnly: direction: OneWay needs the sides that may only answer, and at least one side left to initiate").field_path(".answerOnly"),
)]
pub struct MirrorNetworkSpec {
    /// Nodes that become middlemen for this network. An empty selector (`{}`) selects every
    /// node; when the field is absent no node is selected. Ignored by the agent's file mode,
    /// which always programs the machine it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// The address range every side uses, as a CIDR prefix with host bits clear, for example
    /// `192.168.2.0/24` or `fd00:2::/64`.
    #[schemars(length(max = 43))]
    pub subnet: String,

    /// The middleman's own address on every side; it must lie inside `subnet`. Hosts route the
    /// alias prefixes via this address (with `hostPrefix`, they need no route at all).
    #[schemars(length(max = 39))]
    pub gateway_address: String,

    /// The part of `subnet` the hosts use, when the alias prefixes lie inside `subnet` too
    /// (on-link aliases): hosts then reach the other sides with no route and no gateway,
    /// because the node answers ARP (IPv4) and neighbour solicitations (IPv6) for the alias
    /// addresses on each side. Each alias prefix then has the length of `hostPrefix`, lies in
    /// `subnet` outside it, and covers at most 256 addresses; `gatewayAddress` lies outside
    /// all of them. An alias address a host already uses is not claimed, and is reported.
    /// Absent: the hosts may use all of `subnet`, and the aliases lie outside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43))]
    pub host_prefix: Option<String>,

    /// The networks that share `subnet`: two or more, each reached by the others through its
    /// alias prefix. The list is keyed by side name.
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sides: Vec<Side>,

    /// How each side's routing domain is built on a node: `VRF` (a VRF device per side, the
    /// kernel needs CONFIG_NET_VRF), `PolicyRouting` (per-side routing tables selected by ip
    /// rules, for kernels without VRF) or `Auto` (VRF where the kernel can create one).
    #[serde(default)]
    pub backend: Backend,

    /// `Both` (default): every side may open connections to every other. `OneWay`: the sides
    /// named in `answerOnly` may only answer connections the other sides open, never start
    /// their own (a twin that must not reach into production). Enforced with conntrack: only
    /// a connection's first packet is judged, replies always pass.
    #[serde(default)]
    pub direction: Direction,

    /// With `direction: OneWay`, the sides that may only answer. At least one side must be left
    /// able to initiate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub answer_only: Vec<String>,

    /// The traffic one side may open towards another, in the shape of a NetworkPolicy's
    /// `ports`. Empty or absent: everything. Only a connection's first packet is judged, so
    /// replies always pass; a connection nothing allows is dropped on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow: Vec<AllowedTraffic>,

    /// Withdraw the datapath from every node while keeping this object, its allocated ids and
    /// its status; set back to `false` to bring the same datapath back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// How a node proves that a change worked before keeping it. After programming, the agent
    /// checks that the node still reaches what it reached before (its default gateways and, in
    /// a cluster, the API server) and that every probe here answers; if a check fails within
    /// `timeoutSeconds`, the node goes back to what it held before the change. The rollback
    /// is armed before the first kernel write, so it also happens if the agent dies part-way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Traffic a side may open towards another side.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.port) || self.protocol in ['TCP', 'UDP', 'SCTP']").message("port: only TCP, UDP and SCTP have ports").field_path(".port"),
    validation = Rule::new("!has(self.endPort) || (has(self.port) && self.endPort >= self.port)").message("endPort: needs port, and must not be below it").field_path(".endPort"),
)]
pub struct AllowedTraffic {
    /// `TCP` (default), `UDP`, `SCTP` or `ICMP` (ICMPv6 in an IPv6 network).
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination port; absent: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// With `port`, the last port of a range `port`..=`endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<u16>,
}

/// A transport protocol an allow-list entry names.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    /// ICMP in an IPv4 network, ICMPv6 in an IPv6 one.
    #[serde(rename = "ICMP")]
    Icmp,
}

impl Protocol {
    /// The name as written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
        }
    }
}

/// The checks a node makes after a change before keeping it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// Hosts the node must reach on a side after a change: a TCP connection from the
    /// node's gateway address to `address`:`port` on side `side`. Any answer counts, a refusal
    /// too: it proves the side's interface, address, route and rules work both ways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub probes: Vec<Probe>,
    /// How long every check together may take before the change is rolled back (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<u32>,
}

/// One host the node must reach on one side after a change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// Name of the side the host is on.
    pub side: String,
    /// The host's own address on that side (inside `subnet`).
    #[schemars(length(max = 39))]
    pub address: String,
    /// A TCP port on the host.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// Which sides may open connections.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Direction {
    /// Every side may initiate.
    #[default]
    Both,
    /// The sides in `answerOnly` may only answer.
    OneWay,
}

/// One network that reuses the subnet, attached to the middleman by one interface.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Name of the side, a DNS label (lower case letters, digits and '-', at most 63
    /// characters), unique in the network. It names the side in status, events and logs.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// The node's interface that attaches this side, e.g. `eth1`: at most 15 bytes, no '/',
    /// whitespace or control characters, unique in the network.
    #[schemars(length(min = 1, max = 15), regex(pattern = r"^[^/\s\x00-\x1f\x7f:]+$"))]
    pub interface: String,

    /// How this side's hosts appear to the other sides: a prefix of the same length as
    /// `subnet` that does not overlap it (with `hostPrefix`: of the length of `hostPrefix`,
    /// inside `subnet`). Two sides may share one alias; with three or more sides every alias
    /// must be distinct.
    #[schemars(length(max = 43))]
    pub alias_prefix: String,

    /// Kernel ids to use for this side instead of allocated ones. Every id given is checked
    /// against the ids other networks hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ids: Option<SideKernelIds>,

    /// Allow this side's interface to be one the node itself uses: one carrying its default
    /// route or addresses mirrornet did not put there (node or cluster traffic), or one named
    /// like a CNI's. Without it such an interface is refused, because enslaving it to a VRF or
    /// steering its traffic could cut the node off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub take_over_node_interface: bool,
}

/// Explicit kernel ids for one side. Any id left out is allocated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SideKernelIds {
    /// Routing table holding this side's routes (policy routing) or bound to its VRF device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub table: Option<u32>,
    /// Packet mark value, under the configured mark mask, that sends a packet to this side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub mark: Option<u32>,
    /// Conntrack zone of connections that this side originates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub zone: Option<u16>,
    /// Priority of this side's ip rules (its mark rule; its interface rule sits 1000 above).
    /// Unlike the other ids it may equal another network's: the kernel keeps many rules at one
    /// priority, and each side's rules select by its own mark or interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32765))]
    pub rule_priority: Option<u32>,
}

/// The datapath backend asked for in the spec.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Backend {
    /// VRF where the node's kernel can create VRF devices, PolicyRouting otherwise.
    #[default]
    Auto,
    /// One VRF device per side, the sides' interfaces enslaved to it.
    #[serde(rename = "VRF")]
    Vrf,
    /// Per-side routing tables selected by ip rules; no VRF devices.
    PolicyRouting,
}

/// The backend actually programmed on a node (never `Auto`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// VRF devices.
    #[serde(rename = "VRF")]
    Vrf,
    /// Policy routing tables.
    PolicyRouting,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Vrf => "VRF",
            BackendKind::PolicyRouting => "PolicyRouting",
        })
    }
}

/// What the operator and the agents report about a MirrorNetwork.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MirrorNetworkStatus {
    /// The `metadata.generation` the summary conditions were computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary conditions owned by the operator: `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Kernel ids allocated once for this network; every node uses the same ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,

    /// Number of selected nodes that report the network programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_nodes: Option<i32>,

    /// Number of nodes the network selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_nodes: Option<i32>,

    /// The backend in use on the nodes: `VRF`, `PolicyRouting`, or `Mixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,

    /// One entry per node, each written by that node's agent (keyed by node name, so every
    /// agent owns just its own entry under server-side apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["nodeName".into()]))]
    pub nodes: Vec<NodeStatus>,
}

/// The kernel ids of a network, allocated by the operator (or, in file mode, by the agent).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The bits of the packet mark that mirrornet uses; all other bits are preserved.
    pub mark_mask: u32,
    /// Ids per side, keyed by side name.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["side".into()]))]
    pub sides: Vec<SideAllocation>,
}

/// The kernel ids of one side.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SideAllocation {
    /// The side these ids belong to.
    pub side: String,
    /// Routing table of the side.
    pub table: u32,
    /// Packet mark value (under `markMask`) that sends a packet to this side.
    pub mark: u32,
    /// Conntrack zone of connections this side originates.
    pub zone: u16,
    /// Priority of the side's ip rules. Sides of other networks may share it; the operator
    /// hands out the priority fewest sides use.
    pub rule_priority: u32,
}

/// One node's report about this network, written by the agent on that node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Name of the node.
    pub node_name: String,
    /// The backend programmed on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// The `metadata.generation` the agent last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions of this node: `Programmed`, `InterfacesPresent`, `Removed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
