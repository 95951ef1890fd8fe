//! The seed on a real node: Kubernetes' own kubelet, containerd and runc run the agent's pod in
//! a real container from the image `cargo xtask images` built (imported with `ctr images
//! import`, never pulled), with the DaemonSet's securityContext as the operator writes it. The
//! agent programs the node's namespace through the host network: traffic crosses both ways,
//! identical 5-tuples land in two zones, the network is Ready, and delete leaves nothing.
//!
//! The operator's two replicas run on the same node, in containers from the operator image
//! (user 65532, no shell), on the node's CNI bridge; without kube-proxy they reach the API
//! server at the `kubernetes` Service's address, which the harness keeps on the node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mirrornet_agent::lab::MIDDLEMAN;
use mirrornet_e2e::cluster::real_node::{Archive, RealNodeSpec};
use mirrornet_e2e::cluster::test_cluster::{
    GATEWAY_LABEL, NAMESPACE, TestCluster, condition, zone,
};
use mirrornet_e2e::node::{
    assert_same, crosses_both_ways_to_every_host, identical_tuples_land_in_two_zones, ping,
    require_root, seed_scenario, snapshot,
};
use serde_json::Value;

const SEED: &str = include_str!("../../examples/seed.yaml");
const NETWORK: &str = "plant-twin";
/// A real container start includes unpacking the image's layers.
const STEP: Duration = Duration::from_secs(120);
/// The tag `cargo xtask test` gives the images it builds.
const TAG: &str = "e2e";
const REAL: &str = "real-a";

/// The OCI archives `cargo xtask test` built (`MIRRORNET_IMAGES`); without them the test
/// fails: it never skips.
fn archives() -> Vec<Archive> {
    let dir = PathBuf::from(std::env::var_os("MIRRORNET_IMAGES").expect(
        "MIRRORNET_IMAGES names the directory of the test images: run `cargo xtask test`, \
         or `cargo xtask images --test` and point it at <target>/images",
    ));
    ["mirrornet-agent", "mirrornet-operator", "pause"]
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.oci.tar"));
            assert!(path.is_file(), "{} is missing", path.display());
            Archive {
                path,
                repository: format!("docker.io/mirrornet/{name}"),
            }
        })
        .collect()
}

/// A node snapshot without the CNI bridge's running timers (`hello_timer 0.00`, `gc_timer
/// 12.34`, ...), which tick between two snapshots and say nothing about state.
fn steady(snapshot: &str) -> String {
    snapshot
        .lines()
        .map(|line| {
            let mut kept = Vec::new();
            let mut tokens = line.split_whitespace();
            while let Some(t) = tokens.next() {
                if t.ends_with("_timer") {
                    tokens.next();
                } else {
                    kept.push(t);
                }
            }
            kept.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_seed_crosses_both_ways_through_an_agent_in_a_real_container_and_delete_leaves_nothing() {
    require_root();
    let images = archives();
    let (mut s, _spec) = seed_scenario("real", false);
    let mut cluster = TestCluster::start("real-node").expect("starting the control plane");
    let started = Instant::now();
    cluster
        .add_real_node(RealNodeSpec {
            name: REAL.into(),
            netns: s.lab.ns(MIDDLEMAN),
            index: 7,
            root: PathBuf::new(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            images,
            sandbox_image: format!("docker.io/mirrornet/pause:{TAG}"),
        })
        .expect("starting the real node");
    cluster.wait_for("the node Ready", STEP, |c| {
        let ready = c
            .list("nodes", None)
            .iter()
            .filter(|n| condition(&n["status"]["conditions"], "Ready") == Some("True"))
            .count();
        (ready == 1).then_some(())
    });
    eprintln!(
        "[real node] kubelet and containerd Ready in {:.1?}",
        started.elapsed()
    );
    // Standing in for the node lifecycle controller the harness does not run.
    let _ = cluster.kubectl(&["taint", "node", REAL, "node.kubernetes.io/not-ready-"]);

    let installed = Instant::now();
    cluster.install_chart(&[
        &format!("operator.image.tag={TAG}"),
        &format!("agent.image.tag={TAG}"),
    ]);
    // The operator runs from its image as the restricted context wants it: user 65532, no
    // capabilities; one replica holds the Lease.
    let operators = cluster.pods("operator");
    assert_eq!(operators.len(), 2, "two operator replicas");
    for pod in &operators {
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(
            status["image"].as_str().unwrap_or_default(),
            format!("docker.io/mirrornet/mirrornet-operator:{TAG}"),
            "{status:#}"
        );
        let pid = cluster
            .real_node(REAL)
            .and_then(|n| n.task_pid(status["containerID"].as_str().unwrap_or_default()))
            .expect("the operator container's process");
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |key: &str| {
            proc_status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(field("Uid:"), ["65532"; 4], "{proc_status}");
        assert_eq!(field("CapEff:"), ["0000000000000000"], "{proc_status}");
    }
    let lease = cluster
        .get("lease", "mirrornet-operator", Some(NAMESPACE))
        .expect("the operator's Lease");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(
        operators.iter().any(|p| p["metadata"]["name"] == holder),
        "the Lease is held by an operator pod: {holder}"
    );
    // What the network will leave must equal this: the chart's pods (and the CNI bridge
    // they sit on) are not the network's.
    let before = steady(&snapshot(&s.lab, MIDDLEMAN).unwrap());
    cluster.kubectl_ok(&["label", "node", REAL, &format!("{GATEWAY_LABEL}=true")]);
    let applied = cluster.apply_yaml(SEED);
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let net = cluster.wait_for(&format!("{NETWORK} Ready on {REAL}"), STEP, |c| {
        let net = c.get("mirrornetwork", NETWORK, None)?;
        let status = &net["status"];
        let on_real = status["nodes"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["nodeName"] == REAL));
        (condition(&status["conditions"], "Ready") == Some("True") && on_real).then_some(net)
    });
    eprintln!(
        "[real node] from helm install to a Ready network: {:.1?}",
        installed.elapsed()
    );
    // The agent runs in a container on the real node, from the imported image, and the
    // kubelet's own probes find it ready on the node's port.
    let agents = cluster.wait_for("the agent pod Ready by the kubelet's probes", STEP, |c| {
        let agents = c.pods("agent");
        agents
            .iter()
            .all(|p| condition(&p["status"]["conditions"], "Ready") == Some("True"))
            .then_some(agents)
    });
    assert_eq!(agents.len(), 1, "one agent: {agents:#?}");
    let agent = &agents[0];
    assert_eq!(agent["spec"]["nodeName"], REAL);
    let status = &agent["status"]["containerStatuses"][0];
    assert!(
        status["containerID"]
            .as_str()
            .is_some_and(|id| id.starts_with("containerd://")),
        "the agent runs in a containerd container: {status:#}"
    );
    assert_eq!(
        status["image"].as_str().unwrap_or_default(),
        format!("docker.io/mirrornet/mirrornet-agent:{TAG}"),
        "{status:#}"
    );
    // The DaemonSet's securityContext, as runc applied it: root with only NET_ADMIN, in the
    // node's network namespace, `/proc/sys` read-only.
    let pid = cluster
        .real_node(REAL)
        .and_then(|n| n.task_pid(status["containerID"].as_str().unwrap_or_default()))
        .expect("the agent container's process");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caps = |key: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    const CAP_NET_ADMIN: u64 = 1 << 12;
    assert_eq!(caps("CapEff:"), CAP_NET_ADMIN, "{proc_status}");
    assert_eq!(caps("CapBnd:"), CAP_NET_ADMIN, "{proc_status}");
    use std::os::unix::fs::MetadataExt;
    let inode = |p: String| {
        std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .ino()
    };
    assert_eq!(
        inode(format!("/proc/{pid}/ns/net")),
        inode(format!("/run/netns/{}", s.lab.ns(MIDDLEMAN))),
        "the agent shares the node's network namespace"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/proc/sys")
                && l.split_whitespace()
                    .nth(3)
                    .is_some_and(|o| o.split(',').any(|o| o == "ro"))),
        "/proc/sys is read-only in the agent's container:\n{mounts}"
    );
    // Its logs are JSON, its probes answer on the node's port.
    let agent = agent.clone();
    let first = cluster.wait_for("the agent's first log line", STEP, |c| {
        let log = c.pod_log(&agent);
        // CRI's format: `<time> <stream> <P|F> <line>`.
        log.lines()
            .find_map(|l| l.splitn(4, ' ').nth(3))
            .map(str::to_owned)
    });
    let first = first.as_str();
    serde_json::from_str::<Value>(first)
        .unwrap_or_else(|e| panic!("the agent's log line is not JSON ({e}): {first}"));
    let (code, _) = cluster.pod_http_get(&agent, 9090, "/readyz");
    assert_eq!(code, 200, "the agent's /readyz on the node");
    let (code, metrics) = cluster.pod_http_get(&agent, 9090, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("mirrornet_"), "{metrics}");

    // Scenario 1 on the real node: both ways, identical tuples in two zones.
    assert_ne!(steady(&snapshot(&s.lab, MIDDLEMAN).unwrap()), before);
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "outer-10", "192.168.3.11"));
    crosses_both_ways_to_every_host(&mut s, 7300);
    identical_tuples_land_in_two_zones(
        &mut s,
        (zone(&net, "inner"), zone(&net, "outer")),
        7301,
        40301,
    );

    // Scenario 5's end: delete waits for the node, then nothing is left on it.
    cluster.kubectl_ok(&["delete", "mirrornetwork", NETWORK, "--wait=false"]);
    cluster.wait_for("the network gone", STEP, |c| {
        c.get("mirrornetwork", NETWORK, None)
            .is_none()
            .then_some(())
    });
    assert_same(
        &before,
        &steady(&snapshot(&s.lab, MIDDLEMAN).unwrap()),
        "the real node after delete",
    );
    cluster.wait_for("the agent pod gone", STEP, |c| {
        c.pods("agent").is_empty().then_some(())
    });
}
