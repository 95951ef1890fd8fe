//! Pure: which MirrorNetworks this node programs, and what it owes each one in status — from
//! the watch caches (every network, this node's labels), with no client in sight.
//!
//! ```text
//! networks (cache) ─┐
//! node labels ──────┼─> Index::view ─> desired (to the reconcile loop)
//! last valid specs ─┘               └> placements (to the status writer)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use mirrornet_api::file::LoadedNetwork;
use mirrornet_api::selection::selects;
use mirrornet_api::{MirrorNetwork, NodeStatus};

use crate::reconciler::DesiredNetwork;

/// Why this node does not program a network it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The node selector does not (or no longer) match this node's labels.
    NotSelected,
    /// The network is being deleted (a finalizer still holds it).
    Deleting,
    /// The spec fails validation and no earlier valid spec of this object is known.
    InvalidSpec,
}

impl Release {
    /// Says why, for condition and event messages.
    pub fn describe(self) -> &'static str {
        match self {
            Release::NotSelected => "the node selector does not match this node",
            Release::Deleting => "the network is being deleted",
            Release::InvalidSpec => "the spec is invalid",
        }
    }
}

/// What this node does with one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Selected, valid, ids allocated: the loop programs it.
    Program,
    /// Selected and valid, but the operator has not allocated ids (yet, or any more): nothing
    /// may be programmed, since the ids are what keep networks apart in the kernel.
    WaitForAllocation,
    /// Not for this node: whatever the loop held of it is torn down.
    Release(Release),
}

/// One network as the status writer needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub name: String,
    /// Tells a recreated network from its namesake, whose status starts empty.
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub role: Role,
    /// True when the operator waits for this node's entry: it selects the node and has ids
    /// (so a deletion waits for us), or the node already has an entry (which must end in
    /// `Removed`). A node the network never concerned writes nothing.
    pub owes_entry: bool,
    /// This node's entry in the cached object, as last written by this node's agent.
    pub entry: Option<NodeStatus>,
}

/// Everything one look at the caches yields.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// What the reconcile loop should hold, sorted by name.
    pub desired: Vec<DesiredNetwork>,
    pub placements: Vec<Placement>,
}

impl View {
    /// What distinguishes one desired set from another for the loop: a new value wakes it for
    /// a pass, so status updates (every agent writes to every network it holds) must not.
    pub fn desired_key(&self) -> Vec<DesiredKey> {
        self.desired
            .iter()
            .map(|d| DesiredKey {
                name: d.loaded.name().to_owned(),
                uid: d.loaded.object.metadata.uid.clone(),
                generation: d.loaded.object.metadata.generation,
                spec: d.loaded.object.spec.clone(),
                allocation: d.allocation.clone(),
            })
            .collect()
    }
}

/// See [`View::desired_key`].
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredKey {
    name: String,
    uid: Option<String>,
    generation: Option<i64>,
    spec: mirrornet_api::MirrorNetworkSpec,
    allocation: Option<mirrornet_api::Allocation>,
}

impl DesiredKey {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The decisions, with the one memory they need: the last valid spec of each object, so that
/// an edit the agent cannot validate leaves the datapath as it was (fail static) rather than
/// tearing it down; the operator reports the invalid spec.
#[derive(Debug, Default)]
pub struct Index {
    node: String,
    last_valid: BTreeMap<String, LoadedNetwork>,
}

impl Index {
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            last_valid: BTreeMap::new(),
        }
    }

    /// Decides every network in `networks` for a node labelled `labels`.
    pub fn view(
        &mut self,
        networks: &[Arc<MirrorNetwork>],
        labels: &BTreeMap<String, String>,
    ) -> View {
        let mut sorted: Vec<&Arc<MirrorNetwork>> = networks.iter().collect();
        sorted.sort_by_key(|n| n.name_any());
        // Forget specs of objects that are gone or were replaced by a namesake.
        self.last_valid.retain(|name, kept| {
            sorted
                .iter()
                .any(|n| n.name_any() == *name && n.metadata.uid == kept.object.metadata.uid)
        });
        let mut view = View::default();
        for net in sorted {
            let name = net.name_any();
            let allocation = net.status.as_ref().and_then(|s| s.allocation.clone());
            let entry = net
                .status
                .iter()
                .flat_map(|s| &s.nodes)
                .find(|e| e.node_name == self.node)
                .cloned();
            let selected = selects(net.spec.node_selector.as_ref(), labels);
            let loaded = match mirrornet_api::validate(&net.spec) {
                Ok(valid) => {
                    let loaded = LoadedNetwork {
                        object: strip_status(net),
                        valid,
                    };
                    self.last_valid.insert(name.clone(), loaded.clone());
                    Some(loaded)
                }
                Err(_) => self.last_valid.get(&name).cloned(),
            };
            let role = if net.metadata.deletion_timestamp.is_some() {
                Role::Release(Release::Deleting)
            } else if !selected {
                Role::Release(Release::NotSelected)
            } else if loaded.is_none() {
                Role::Release(Release::InvalidSpec)
            } else if allocation.is_none() {
                Role::WaitForAllocation
            } else {
                Role::Program
            };
            if let (Role::Program, Some(loaded)) = (role, loaded) {
                view.desired.push(DesiredNetwork {
                    loaded,
                    allocation: allocation.clone(),
                });
            }
            view.placements.push(Placement {
                owes_entry: entry.is_some() || (selected && allocation.is_some()),
                name,
                uid: net.metadata.uid.clone(),
                generation: net.metadata.generation,
                role,
                entry,
            });
        }
        view
    }
}

/// The object the loop keeps, without the status every agent keeps rewriting.
fn strip_status(net: &MirrorNetwork) -> MirrorNetwork {
    let mut object = MirrorNetwork::new(&net.name_any(), net.spec.clone());
    object.metadata.uid = net.metadata.uid.clone();
    object.metadata.generation = net.metadata.generation;
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrornet_api::fixtures::{NetworkExt, labels, network};

    fn roles(view: &View) -> Vec<(String, Role, bool)> {
        view.placements
            .iter()
            .map(|p| (p.name.clone(), p.role, p.owes_entry))
            .collect()
    }

    fn desired(view: &View) -> Vec<String> {
        view.desired
            .iter()
            .map(|d| d.loaded.name().to_owned())
            .collect()
    }

    #[test]
    fn which_networks_a_node_programs() {
        let gw = [("gw", "true")];
        let gateway = labels(&[("gw", "true"), ("zone", "a")]);
        let plain = labels(&[("zone", "b")]);
        /// (case, network, node labels, role, owes an entry)
        type Row<'a> = (
            &'a str,
            MirrorNetwork,
            &'a BTreeMap<String, String>,
            Role,
            bool,
        );
        let table: Vec<Row> = vec![
            (
                "selected, valid, allocated: programmed",
                network("a").selector(&gw).allocated(),
                &gateway,
                Role::Program,
                true,
            ),
            (
                "selected without ids: waits, owes nothing yet",
                network("a").selector(&gw),
                &gateway,
                Role::WaitForAllocation,
                false,
            ),
            (
                "selector does not match",
                network("a").selector(&gw).allocated(),
                &plain,
                Role::Release(Release::NotSelected),
                false,
            ),
            (
                "absent selector selects nothing",
                network("a").no_selector().allocated(),
                &gateway,
                Role::Release(Release::NotSelected),
                false,
            ),
            (
                "left the selector with an entry: must report removal",
                network("a")
                    .selector(&gw)
                    .allocated()
                    .node_entry("node-a", "Programmed", "True"),
                &plain,
                Role::Release(Release::NotSelected),
                true,
            ),
            (
                "another node's entry is not ours",
                network("a")
                    .selector(&gw)
                    .allocated()
                    .node_entry("node-b", "Programmed", "True"),
                &plain,
                Role::Release(Release::NotSelected),
                false,
            ),
            (
                "deleting: released, and the operator waits for us",
                network("a").selector(&gw).allocated().deleting(),
                &gateway,
                Role::Release(Release::Deleting),
                true,
            ),
            (
                "invalid from the start",
                network("a").selector(&gw).allocated().subnet("nonsense"),
                &gateway,
                Role::Release(Release::InvalidSpec),
                true,
            ),
            (
                "ids withdrawn after programming: wait, entry owed",
                network("a")
                    .selector(&gw)
                    .node_entry("node-a", "Programmed", "True"),
                &gateway,
                Role::WaitForAllocation,
                true,
            ),
        ];
        for (case, net, labels, role, owes) in table {
            let view = Index::new("node-a").view(&[Arc::new(net)], labels);
            assert_eq!(roles(&view), vec![("a".into(), role, owes)], "{case}");
            let expected: Vec<String> = if role == Role::Program {
                vec!["a".into()]
            } else {
                vec![]
            };
            assert_eq!(desired(&view), expected, "{case}");
        }
    }

    #[test]
    fn desired_follows_selector_and_label_changes() {
        let gw = [("gw", "true")];
        let a = Arc::new(network("a").selector(&gw).allocated());
        let b = Arc::new(network("b").selector(&[("lab", "x")]).allocated());
        let mut index = Index::new("node-a");
        let nets = [a.clone(), b.clone()];
        assert_eq!(
            desired(&index.view(&nets, &labels(&[("gw", "true")]))),
            ["a"]
        );
        // The node gains a label: b is added, a stays.
        assert_eq!(
            desired(&index.view(&nets, &labels(&[("gw", "true"), ("lab", "x")]))),
            ["a", "b"]
        );
        // The node loses gw: a goes.
        assert_eq!(desired(&index.view(&nets, &labels(&[("lab", "x")]))), ["b"]);
        // b's selector is edited away from the node.
        let b2 = Arc::new(
            network("b")
                .selector(&[("lab", "y")])
                .allocated()
                .generation(2),
        );
        assert!(desired(&index.view(&[a, b2], &labels(&[("lab", "x")]))).is_empty());
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_spec() {
        let gw = [("gw", "true")];
        let node = labels(&[("gw", "true")]);
        let mut index = Index::new("node-a");
        let v1 = network("a").selector(&gw).allocated();
        index.view(&[Arc::new(v1.clone())], &node);
        let broken = v1.clone().subnet("nonsense").generation(2);
        let view = index.view(&[Arc::new(broken)], &node);
        assert_eq!(view.placements[0].role, Role::Program);
        assert_eq!(view.desired[0].loaded.object.spec.subnet, "192.168.2.0/24");
        assert_eq!(view.desired[0].loaded.object.metadata.generation, Some(1));
        // A namesake (new uid) does not inherit the old spec.
        let mut namesake = v1.subnet("nonsense");
        namesake.metadata.uid = Some("uid-other".into());
        let view = index.view(&[Arc::new(namesake)], &node);
        assert_eq!(view.placements[0].role, Role::Release(Release::InvalidSpec));
    }

    #[test]
    fn status_churn_does_not_change_the_desired_key() {
        let gw = [("gw", "true")];
        let node = labels(&[("gw", "true")]);
        let mut index = Index::new("node-a");
        let plain = network("a").selector(&gw).allocated();
        let reported = plain.clone().node_entry("node-b", "Programmed", "True");
        let before = index.view(&[Arc::new(plain.clone())], &node).desired_key();
        let after = index.view(&[Arc::new(reported)], &node).desired_key();
        assert_eq!(before, after);
        let edited = plain.generation(2);
        assert_ne!(before, index.view(&[Arc::new(edited)], &node).desired_key());
    }
}
