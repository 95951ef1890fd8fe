//! Conflicts between networks: two networks that select a common node and claim the same
//! interface there cannot both be served (each would move the interface into its own routing
//! domain and NAT its traffic). The older network keeps working; the newer one is refused.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use mirrornet_api::MirrorNetwork;

use crate::selection::{NodeFacts, selects};

/// Why a network is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The older network that keeps the interface.
    pub other: String,
    pub interface: String,
    /// One node both select (the first by name).
    pub node: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interface {} on node {} is already used by network {}, which is older; change spec.sides[].interface or spec.nodeSelector",
            self.interface, self.node, self.other
        )
    }
}

/// Order of age: creation time, then name, so that exactly one of two networks is older.
fn age(net: &MirrorNetwork) -> (Option<Timestamp>, String) {
    (
        net.metadata.creation_timestamp.as_ref().map(|t| t.0),
        net.name_any(),
    )
}

/// The first conflict of `me` with an older network, if any. Only networks whose spec is
/// valid take part: an invalid network programs nothing, so it holds no interface.
pub fn find(
    me: &MirrorNetwork,
    others: &[Arc<MirrorNetwork>],
    nodes: &[NodeFacts],
) -> Option<Conflict> {
    let my_age = age(me);
    let mut older: Vec<&MirrorNetwork> = others
        .iter()
        .map(Arc::as_ref)
        .filter(|o| o.name_any() != me.name_any())
        .filter(|o| age(o) < my_age)
        .filter(|o| mirrornet_api::validate(&o.spec).is_ok())
        .collect();
    older.sort_by_key(|o| age(o));
    let mine = me.spec.node_selector.as_ref();
    for other in older {
        let theirs = other.spec.node_selector.as_ref();
        let Some(node) = nodes
            .iter()
            .find(|n| selects(mine, &n.labels) && selects(theirs, &n.labels))
        else {
            continue;
        };
        for side in &me.spec.sides {
            if other
                .spec
                .sides
                .iter()
                .any(|s| s.interface == side.interface)
            {
                return Some(Conflict {
                    other: other.name_any(),
                    interface: side.interface.clone(),
                    node: node.name.clone(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrornet_api::fixtures::{NetworkExt, network, node};

    #[test]
    fn conflicts() {
        let gw = [("gw", "true")];
        let nodes = vec![
            NodeFacts::of(&node("n1", &gw, true)),
            NodeFacts::of(&node("n2", &[("other", "true")], true)),
        ];
        let a = network("a")
            .created(1)
            .selector(&gw)
            .interfaces("eth1", "eth2");
        let same_if = network("b")
            .created(2)
            .selector(&gw)
            .interfaces("eth2", "eth3");
        let other_ifs = network("c")
            .created(3)
            .selector(&gw)
            .interfaces("eth3", "eth4");
        let other_node = network("d")
            .created(4)
            .selector(&[("other", "true")])
            .interfaces("eth1", "eth2");
        let invalid_older = network("e")
            .created(0)
            .selector(&gw)
            .interfaces("eth1", "eth2")
            .subnet("nonsense");
        let table: Vec<(&str, &MirrorNetwork, Vec<MirrorNetwork>, Option<&str>)> = vec![
            (
                "newer with shared interface is refused",
                &same_if,
                vec![a.clone()],
                Some("a"),
            ),
            ("older keeps working", &a, vec![same_if.clone()], None),
            (
                "distinct interfaces coexist",
                &other_ifs,
                vec![a.clone()],
                None,
            ),
            ("no common node", &other_node, vec![a.clone()], None),
            (
                "invalid older network claims nothing",
                &a,
                vec![invalid_older.clone()],
                None,
            ),
        ];
        for (name, me, others, expected) in table {
            let others: Vec<_> = others.into_iter().map(Arc::new).collect();
            let found = find(me, &others, &nodes);
            assert_eq!(found.as_ref().map(|c| c.other.as_str()), expected, "{name}");
        }
        let found = find(&same_if, &[Arc::new(a)], &nodes).unwrap();
        assert_eq!(found.interface, "eth2");
        assert_eq!(found.node, "n1");
        assert!(found.to_string().contains("network a"));
    }
}
