//! The Kubernetes API calls the agent makes in the cluster, as RBAC: the single source the
//! chart follows.

/// (resource, verb, the call that needs it). The chart's RBAC must grant exactly these; its
/// test (`charts/tests/test_chart.py`) compares the rendered rules with this list.
pub const PERMISSIONS: &[(&str, &str, &str)] = &[
    (
        "mirrornetworks",
        "list",
        "the watch of MirrorNetworks starts with a list (agent/src/cluster/mod.rs, watch_cluster)",
    ),
    (
        "mirrornetworks",
        "watch",
        "the watch of MirrorNetworks: spec and the operator's allocation make the node's plan",
    ),
    (
        "mirrornetworks/status",
        "patch",
        "the node's own entry of status.nodes, by server-side apply under mirrornet-agent/<node> (agent/src/cluster/writer.rs)",
    ),
    (
        "nodes",
        "list",
        "the watch of its own Node (field selector metadata.name=<node>) starts with a list",
    ),
    (
        "nodes",
        "watch",
        "the watch of its own Node: its labels decide which networks select it",
    ),
    (
        "events",
        "create",
        "events about what it did for a network on its node (writer.rs, Recorder::publish)",
    ),
    (
        "events",
        "patch",
        "the Recorder patches the count of an event it already published",
    ),
];
