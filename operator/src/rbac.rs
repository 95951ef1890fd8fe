//! The Kubernetes API calls the operator makes, as RBAC: the single source the chart follows.

/// (resource, verb, the call that needs it). The chart's RBAC must grant exactly these; its
/// test (`charts/tests/test_chart.py`) compares the rendered rules with this list.
pub const PERMISSIONS: &[(&str, &str, &str)] = &[
    (
        "mirrornetworks",
        "list",
        "the Controller's watch of MirrorNetworks starts with a list (operator/src/run.rs)",
    ),
    (
        "mirrornetworks",
        "watch",
        "the Controller's watch of MirrorNetworks (operator/src/run.rs)",
    ),
    (
        "mirrornetworks",
        "patch",
        "the finalizer is added and removed by JSON patch (kube::runtime::finalizer in operator/src/reconcile.rs)",
    ),
    (
        "mirrornetworks/status",
        "patch",
        "the summary status and allocation, by server-side apply (write_status)",
    ),
    (
        "nodes",
        "list",
        "the node cache: labels and Ready decide placement and the deletion gate (run.rs)",
    ),
    ("nodes", "watch", "the node cache (run.rs)"),
    (
        "daemonsets",
        "create",
        "the first server-side apply of the agent DaemonSet creates it, and the API server authorizes that as create (ensure_daemonset)",
    ),
    (
        "daemonsets",
        "list",
        "the DaemonSet cache, field selector metadata.name=mirrornet-agent (run.rs); limited to that name",
    ),
    (
        "daemonsets",
        "watch",
        "the DaemonSet cache (run.rs); limited to that name",
    ),
    (
        "daemonsets",
        "patch",
        "server-side apply of the agent DaemonSet (ensure_daemonset); limited to that name",
    ),
    (
        "daemonsets",
        "delete",
        "when no network needs agents any more (ensure_daemonset); limited to that name",
    ),
    (
        "leases",
        "get",
        "every election round reads the holder (leader.rs, get_opt); limited to the Lease's name",
    ),
    (
        "leases",
        "update",
        "acquire, renew and release (leader.rs, replace); limited to the Lease's name",
    ),
    (
        "events",
        "create",
        "events about MirrorNetworks (Recorder::publish in reconcile.rs)",
    ),
    (
        "events",
        "patch",
        "the Recorder patches the count of an event it already published",
    ),
];
