//! mirrornet on a real Kubernetes control plane (etcd, kube-apiserver with TLS and RBAC,
//! controller-manager, scheduler, built from Go modules), installed as users install it:
//! `helm install` of the chart, `kubectl label node`, `kubectl apply -f examples/seed.yaml`.
//! Nodes are the seed labs' middleman namespaces; their process kubelets run the operator's
//! and the agents' pods from this tree's binaries with the pods' own env, ServiceAccount
//! tokens and capabilities, so every request is the API server's to allow or refuse.

use std::time::Duration;

use mirrornet_agent::lab::{MIDDLEMAN, Scenario};
use mirrornet_api::conditions::{self, NodeReason};
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

/// How long the cluster may take for a step a user waits on: a pod scheduled and started,
/// a network programmed and reported.
const STEP: Duration = Duration::from_secs(90);

/// A cluster with one seed lab per node name; the chart installed.
struct Fixture {
    cluster: TestCluster,
    labs: Vec<(String, Scenario)>,
}

impl Fixture {
    fn new(tag: &str, nodes: &[&str]) -> Self {
        require_root();
        let mut cluster = TestCluster::start(tag).expect("starting the control plane");
        let mut labs = Vec::new();
        for node in nodes {
            let (s, _spec) = seed_scenario(&format!("{tag}-{node}"), false);
            cluster
                .add_node(node, &s.lab.ns(MIDDLEMAN), &[])
                .expect("registering the node");
            labs.push((node.to_string(), s));
        }
        cluster.wait_for("every node Ready", STEP, |c| {
            let ready = c
                .list("nodes", None)
                .iter()
                .filter(|n| condition(&n["status"]["conditions"], "Ready") == Some("True"))
                .count();
            (ready == nodes.len()).then_some(())
        });
        cluster.install_chart(&[]);
        Self { cluster, labs }
    }

    fn lab(&mut self, node: &str) -> &mut Scenario {
        &mut self
            .labs
            .iter_mut()
            .find(|(n, _)| n == node)
            .expect("a lab of that node")
            .1
    }

    fn label(&self, node: &str) {
        self.cluster
            .kubectl_ok(&["label", "node", node, &format!("{GATEWAY_LABEL}=true")]);
    }

    fn unlabel(&self, node: &str) {
        self.cluster
            .kubectl_ok(&["label", "node", node, &format!("{GATEWAY_LABEL}-")]);
    }

    /// Waits until the network is Ready with every node in `nodes` reporting its own
    /// conditions true, and returns it.
    fn wait_ready_on(&mut self, nodes: &[&str]) -> Value {
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        self.cluster
            .wait_for(&format!("{NETWORK} Ready on {nodes:?}"), STEP, |c| {
                let net = c.get("mirrornetwork", NETWORK, None)?;
                let status = &net["status"];
                let ready = condition(&status["conditions"], conditions::READY) == Some("True");
                let entries = status["nodes"].as_array().cloned().unwrap_or_default();
                let reported: Vec<&str> = entries
                    .iter()
                    .filter_map(|e| e["nodeName"].as_str())
                    .collect();
                let all_true = entries.iter().all(|e| {
                    e["conditions"].as_array().is_some_and(|cs| {
                        !cs.is_empty() && cs.iter().all(|c| c["status"] == "True")
                    })
                });
                (ready
                    && all_true
                    && reported.len() == nodes.len()
                    && nodes.iter().all(|n| reported.contains(&n.as_str())))
                .then_some(net)
            })
    }

    /// `kubectl patch` of the seed network's `spec.suspend`.
    fn suspend(&self, suspend: bool) {
        let patch = format!(r#"{{"spec":{{"suspend":{suspend}}}}}"#);
        self.cluster.kubectl_ok(&[
            "patch",
            "mirrornetwork",
            NETWORK,
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// `kubectl apply` of `yaml`, which must be accepted.
    fn apply_ok(&self, yaml: &str) {
        let applied = self.cluster.apply_yaml(yaml);
        assert!(
            applied.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }

    /// Waits until network `name` is Degraded; its condition's reason and message.
    fn wait_degraded(&mut self, name: &str) -> (String, String) {
        self.cluster
            .wait_for(&format!("{name} Degraded"), STEP, |c| {
                let net = c.get("mirrornetwork", name, None)?;
                let d = degraded(&net);
                (d.0 == "True").then_some((d.1, d.2))
            })
    }

    /// The agent pods, as `(pod name, node name)`.
    fn agents(&self) -> Vec<(String, String)> {
        self.cluster
            .pods("agent")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }
}

#[test]
fn the_seed_installed_with_helm_crosses_both_ways_on_the_labelled_node() {
    let mut f = Fixture::new("seed", &["node-a", "node-b"]);
    // The chart's two operator replicas run, one holds the Lease.
    let operators = f.cluster.pods("operator");
    assert_eq!(operators.len(), 2, "two operator replicas");
    let lease = f
        .cluster
        .get("lease", "mirrornet-operator", Some(NAMESPACE))
        .expect("the operator's Lease");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(
        operators.iter().any(|p| p["metadata"]["name"] == holder),
        "the Lease is held by an operator pod: {holder}"
    );

    f.label("node-a");
    let before = snapshot(&f.lab("node-a").lab, MIDDLEMAN).unwrap();
    let applied = f.cluster.apply_yaml(SEED);
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // The operator takes the network: its finalizer, then the ids every node will use.
    let net = f.cluster.wait_for("finalizer and allocation", STEP, |c| {
        let net = c.get("mirrornetwork", NETWORK, None)?;
        let finalizers = net["metadata"]["finalizers"].as_array().cloned()?;
        (!finalizers.is_empty() && net["status"]["allocation"]["sides"].is_array()).then_some(net)
    });
    assert_ne!(zone(&net, "inner"), zone(&net, "outer"));
    // Exactly the labelled node gets an agent.
    let agents = f.cluster.wait_for("one agent pod, scheduled", STEP, |c| {
        let agents: Vec<Value> = c.pods("agent");
        (agents.len() == 1 && agents[0]["spec"]["nodeName"].is_string()).then_some(agents)
    });
    assert_eq!(agents[0]["spec"]["nodeName"], "node-a", "{:#}", agents[0]);
    let net = f.wait_ready_on(&["node-a"]);
    assert_eq!(f.agents().len(), 1, "still one agent: {:?}", f.agents());
    // The node is programmed: its namespace changed, node-b's did not.
    assert_ne!(snapshot(&f.lab("node-a").lab, MIDDLEMAN).unwrap(), before);
    // Traffic crosses both ways, and identical 5-tuples land in two zones.
    let zones = (zone(&net, "inner"), zone(&net, "outer"));
    let s = f.lab("node-a");
    assert!(ping(&s.lab, "inner-10", "192.168.3.11"));
    assert!(ping(&s.lab, "outer-10", "192.168.3.11"));
    crosses_both_ways_to_every_host(s, 7100);
    identical_tuples_land_in_two_zones(s, zones, 7101, 40101);
    // Nothing crosses on the unlabelled node.
    assert!(!ping(&f.lab("node-b").lab, "inner-10", "192.168.3.11"));
    // `kubectl get` shows the printer columns.
    let table = f.cluster.kubectl_ok(&["get", "mirrornetworks"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "DESIRED", "BACKEND", "REASON", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        [
            NETWORK,
            "1",
            "1",
            net["status"]["backend"].as_str().unwrap_or("?"),
            conditions::reason::ALL_NODES_PROGRAMMED
        ],
        "{table}"
    );
}

/// Replaces every `[N]` list index by `[]`, so `spec.sides[1].aliasPrefix` matches a
/// message about `spec.sides[].aliasPrefix`.
fn without_indexes(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for ch in path.chars() {
        match ch {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(ch),
        }
    }
    out
}

#[test]
fn every_invalid_example_is_refused_by_the_api_server_naming_the_field() {
    require_root();
    let cluster = TestCluster::start("invalid").expect("starting the control plane");
    let crd = mirrornet_e2e::cluster::test_cluster::chart_dir().join("crds/mirrornetwork.yaml");
    let installed = cluster.kubectl(&["apply", "-f", crd.to_str().expect("utf-8")]);
    assert!(installed.status.success(), "{installed:?}");
    // The CRD installs cleanly: no warning about its schema.
    let warnings = String::from_utf8_lossy(&installed.stderr).into_owned();
    assert!(
        warnings.trim().is_empty(),
        "kubectl apply of the CRD: {warnings}"
    );
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/mirrornetworks.mirrornet.io",
        "--timeout=60s",
    ]);
    // The valid examples pass the same schema (server-side dry run), so a refusal below is
    // the rule's doing, not a schema that refuses everything.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in [
        "seed.yaml",
        "three-sides.yaml",
        "ipv6.yaml",
        "guarded.yaml",
        "on-link.yaml",
    ] {
        let path = examples.join(name);
        cluster.kubectl_ok(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
    }
    let mut files: Vec<_> = std::fs::read_dir(examples.join("invalid"))
        .expect("examples/invalid")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the invalid examples: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("reading the example");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
        let field = expect.split(':').next().expect("a field path").trim();
        let out = cluster.kubectl(&["apply", "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // A rule on a list names the list (`spec.answerOnly`), not the entry.
        let list = field.rsplit_once('[').map_or(field, |(list, _)| list);
        let named = stderr.contains(field)
            || without_indexes(&stderr).contains(&without_indexes(field))
            || (field.ends_with(']') && stderr.contains(&format!("{list}:")));
        if out.status.success() || !named {
            failures.push(format!(
                "{}: expected a refusal naming {field}, got (exit {}):\n{stderr}",
                file.display(),
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Nothing was created.
    let left = cluster.list("mirrornetworks", None);
    assert!(left.is_empty(), "objects created: {left:?}");
}

/// The `Degraded` condition of a network: `(status, reason, message)`.
fn degraded(net: &Value) -> (String, String, String) {
    let found = net["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == conditions::DEGRADED))
        .cloned()
        .unwrap_or_default();
    let text = |k: &str| found[k].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

#[test]
fn a_second_node_reports_and_an_unlabelled_node_is_cleaned_and_delete_waits_for_every_node() {
    let mut f = Fixture::new("nodes", &["node-a", "node-b"]);
    let before_a = snapshot(&f.lab("node-a").lab, MIDDLEMAN).unwrap();
    let before_b = snapshot(&f.lab("node-b").lab, MIDDLEMAN).unwrap();
    f.label("node-a");
    f.label("node-b");
    f.cluster.apply_yaml(SEED);
    let net = f.wait_ready_on(&["node-a", "node-b"]);
    assert_eq!(net["status"]["readyNodes"], 2, "{net:#}");
    let agents = f.agents();
    let mut on: Vec<&str> = agents.iter().map(|(_, n)| n.as_str()).collect();
    on.sort();
    assert_eq!(on, ["node-a", "node-b"], "one agent per labelled node");
    for node in ["node-a", "node-b"] {
        assert!(ping(&f.lab(node).lab, "inner-10", "192.168.3.11"), "{node}");
    }
    let programmed_a = snapshot(&f.lab("node-a").lab, MIDDLEMAN).unwrap();

    // node-b leaves the selector: its agent removes the datapath (zero residue), its entry
    // says so or goes, and node-a is untouched.
    f.unlabel("node-b");
    f.cluster.wait_for("node-b cleaned", STEP, |c| {
        let net = c.get("mirrornetwork", NETWORK, None)?;
        let entry = net["status"]["nodes"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["nodeName"] == "node-b").cloned());
        let released = match entry {
            None => true,
            Some(e) => condition(&e["conditions"], conditions::REMOVED) == Some("True"),
        };
        (released && net["status"]["desiredNodes"] == 1).then_some(())
    });
    let after_b = snapshot(&f.lab("node-b").lab, MIDDLEMAN).unwrap();
    assert_same(&before_b, &after_b, "node-b after it left the selector");
    assert_eq!(
        snapshot(&f.lab("node-a").lab, MIDDLEMAN).unwrap(),
        programmed_a,
        "node-a untouched"
    );
    f.cluster.wait_for("node-b's agent gone", STEP, |c| {
        let gone = !c
            .pods("agent")
            .iter()
            .any(|p| p["spec"]["nodeName"] == "node-b");
        gone.then_some(())
    });
    assert!(ping(&f.lab("node-a").lab, "inner-10", "192.168.3.11"));

    // Delete: the finalizer holds the object until node-a removed its state; then the
    // object goes, node-a holds nothing, and the DaemonSet goes with the last network.
    f.cluster
        .kubectl_ok(&["delete", "mirrornetwork", NETWORK, "--wait=false"]);
    f.cluster.wait_for("the network gone", STEP, |c| {
        c.get("mirrornetwork", NETWORK, None)
            .is_none()
            .then_some(())
    });
    let after_a = snapshot(&f.lab("node-a").lab, MIDDLEMAN).unwrap();
    assert_same(&before_a, &after_a, "node-a after delete");
    f.cluster.wait_for("the agent DaemonSet gone", STEP, |c| {
        let ds = c.list("daemonsets", Some(NAMESPACE));
        let pods = c.pods("agent");
        (ds.is_empty() && pods.is_empty()).then_some(())
    });
}

#[test]
fn a_node_that_cannot_program_the_network_makes_it_degraded_naming_node_and_reason() {
    let mut f = Fixture::new("degraded", &["node-a", "node-b"]);
    // node-b lacks the outer side's interface.
    f.lab("node-b")
        .lab
        .exec(MIDDLEMAN, &["ip", "link", "del", "eth2"])
        .unwrap();
    f.label("node-a");
    f.label("node-b");
    f.cluster.apply_yaml(SEED);
    let (reason, message) = f.wait_degraded(NETWORK);
    assert_eq!(reason, conditions::reason::NODE_FAILED);
    assert!(
        message.contains("node-b") && message.contains(NodeReason::InterfaceMissing.as_str()),
        "{message}"
    );
    assert!(!message.contains("node-a"), "{message}");
    // node-a still forwards.
    assert!(ping(&f.lab("node-a").lab, "inner-10", "192.168.3.11"));

    // A second network on node-a that asks for VRF, which this kernel lacks: node-a reports
    // BackendUnavailable and that network is Degraded, the first one unaffected there.
    f.lab("node-a")
        .lab
        .exec(
            MIDDLEMAN,
            &[
                "ip", "link", "add", "eth5", "type", "veth", "peer", "name", "eth6",
            ],
        )
        .unwrap();
    for link in ["eth5", "eth6"] {
        f.lab("node-a")
            .lab
            .exec(MIDDLEMAN, &["ip", "link", "set", link, "up"])
            .unwrap();
    }
    f.unlabel("node-b");
    let vrf = SEED
        .replace("name: plant-twin", "name: vrf-twin")
        .replace("192.168.2.", "10.77.2.")
        .replace("192.168.3.", "10.77.3.")
        .replace("eth1", "eth5")
        .replace("eth2", "eth6")
        .replace("  subnet:", "  backend: VRF\n  subnet:");
    f.apply_ok(&vrf);
    let (_, message) = f.wait_degraded("vrf-twin");
    assert!(
        message.contains("node-a") && message.contains(NodeReason::BackendUnavailable.as_str()),
        "{message}"
    );

    // A third network that claims node-a's eth1, held by plant-twin: refused as a Conflict
    // naming the node and the interface; plant-twin keeps forwarding there.
    let held = SEED
        .replace("name: plant-twin", "name: held-twin")
        .replace("192.168.2.", "10.78.2.")
        .replace("192.168.3.", "10.78.3.")
        .replace("eth2", "eth6");
    f.apply_ok(&held);
    let (reason, message) = f.wait_degraded("held-twin");
    assert_eq!(reason, conditions::reason::CONFLICT, "{message}");
    assert!(
        message.contains("node-a") && message.contains("eth1") && message.contains(NETWORK),
        "{message}"
    );
    assert!(ping(&f.lab("node-a").lab, "inner-10", "192.168.3.11"));
}

/// Pings `to` from `host` every 100 ms for `seconds` in the background; the join handle
/// yields `(sent, received)`.
fn ping_during(
    lab: &mirrornet_agent::lab::Lab,
    host: &str,
    to: &str,
    seconds: u32,
) -> std::thread::JoinHandle<(u32, u32)> {
    let mut command = lab.command(
        host,
        &[
            "ping",
            "-n",
            "-q",
            "-i",
            "0.1",
            "-w",
            &seconds.to_string(),
            to,
        ],
    );
    std::thread::spawn(move || {
        let out = command.output().expect("running ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let number = |word: &str| -> u32 {
            line.split(',')
                .find(|part| part.contains(word))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (number("transmitted"), number("received"))
    })
}

fn restarts(pods: &[Value]) -> u64 {
    pods.iter()
        .map(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn a_killed_leader_hands_the_lease_to_the_other_replica_which_reconciles_the_next_change() {
    let mut f = Fixture::new("leader", &["node-a", "node-b"]);
    f.label("node-a");
    let lease = |c: &TestCluster| {
        c.get("lease", "mirrornet-operator", Some(NAMESPACE))
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let leader = f.cluster.wait_for("a leader", STEP, |c| lease(c));
    let duration = f
        .cluster
        .get("lease", "mirrornet-operator", Some(NAMESPACE))
        .and_then(|l| l["spec"]["leaseDurationSeconds"].as_u64())
        .expect("leaseDurationSeconds");
    let standby: Vec<String> = f
        .cluster
        .pods("operator")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .filter(|n| *n != leader)
        .collect();
    assert_eq!(standby.len(), 1, "one standby replica");
    let pod = |c: &TestCluster, name: &str| c.get("pod", name, Some(NAMESPACE)).expect("the pod");
    let reconciles = |c: &TestCluster, name: &str| {
        c.pod_metric(&pod(c, name), 8080, "mirrornet_operator_reconciles_total")
            .unwrap_or(0.0)
    };
    // The leader reconciles a network; the standby writes nothing meanwhile.
    f.cluster.apply_yaml(SEED);
    f.wait_ready_on(&["node-a"]);
    assert!(
        reconciles(&f.cluster, &leader) > 0.0,
        "the leader reconciled"
    );
    assert_eq!(
        reconciles(&f.cluster, &standby[0]),
        0.0,
        "the standby did not"
    );
    let standby_pod = pod(&f.cluster, &standby[0]);
    // Kill the leader's pod at once, as a node crash would.
    f.cluster.kubectl_ok(&[
        "delete",
        "pod",
        &leader,
        "--namespace",
        NAMESPACE,
        "--grace-period=0",
        "--force",
    ]);
    let killed = std::time::Instant::now();
    let new_leader = f
        .cluster
        .wait_for("the standby takes the Lease", STEP, |c| {
            lease(c).filter(|h| *h != leader)
        });
    let took = killed.elapsed();
    // The standby and the killed leader's replacement race for the expired Lease; either
    // may win, as with client-go's election.
    assert!(
        took <= Duration::from_secs(duration + 5),
        "{new_leader} took the Lease after {took:?}; its duration is {duration} s"
    );
    // The new leader reconciles the next change: a second node selected gets its agent and
    // reports; the other replica stands by without writing.
    let standing_by: Vec<String> = f
        .cluster
        .pods("operator")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .filter(|n| *n != new_leader && *n != leader)
        .collect();
    let before: Vec<f64> = standing_by
        .iter()
        .map(|n| reconciles(&f.cluster, n))
        .collect();
    f.label("node-b");
    f.wait_ready_on(&["node-a", "node-b"]);
    assert!(
        reconciles(&f.cluster, &new_leader) > 0.0,
        "the new leader reconciled"
    );
    for (name, before) in standing_by.iter().zip(before) {
        assert_eq!(before, 0.0, "{name} stands by");
        assert_eq!(reconciles(&f.cluster, name), 0.0, "{name} stands by");
    }
    assert!(
        !f.cluster.pod_log(&standby_pod).is_empty(),
        "the standby's log"
    );
}

#[test]
fn an_api_server_outage_keeps_forwarding_and_both_binaries_recover_without_a_restart() {
    let mut f = Fixture::new("faults", &["node-a", "node-b"]);
    f.label("node-a");
    f.cluster.apply_yaml(SEED);
    f.wait_ready_on(&["node-a"]);
    let before = restarts(&f.cluster.pods("operator")) + restarts(&f.cluster.pods("agent"));
    // The API server is gone for 30 s: the datapath keeps forwarding (fail static).
    let pinging = ping_during(&f.lab("node-a").lab, "inner-10", "192.168.3.11", 34);
    f.cluster.plane.stop_apiserver();
    std::thread::sleep(Duration::from_secs(30));
    f.cluster
        .plane
        .start_apiserver()
        .expect("the API server back");
    let (sent, received) = pinging.join().unwrap();
    assert!(sent >= 300, "pinged through the outage: {sent}");
    assert_eq!(
        sent, received,
        "no packet lost while the API server was away"
    );
    // Both binaries carry on without a restart: a change made now is reconciled by the
    // operator (a second node's agent) and by node-a's agent (suspend, resume).
    f.label("node-b");
    f.wait_ready_on(&["node-a", "node-b"]);
    f.suspend(true);
    wait_ping(&mut f, "node-a", false, "withdrawn on node-a (suspend)");
    f.suspend(false);
    wait_ping(&mut f, "node-a", true, "back on node-a (resume)");
    f.wait_ready_on(&["node-a", "node-b"]);
    let after = restarts(&f.cluster.pods("operator")) + restarts(&f.cluster.pods("agent"));
    assert_eq!(before, after, "no container restarted through the outage");

    // node-a's agent pod deleted: the DaemonSet brings a new one, which finds the node
    // converged and writes nothing, and no packet is lost meanwhile.
    let (old_agent, _) = f
        .agents()
        .into_iter()
        .find(|(_, n)| n == "node-a")
        .expect("node-a's agent");
    let pinging = ping_during(&f.lab("node-a").lab, "inner-10", "192.168.3.11", 20);
    f.cluster
        .kubectl_ok(&["delete", "pod", &old_agent, "--namespace", NAMESPACE]);
    f.cluster
        .wait_for("a new agent on node-a, ready", STEP, |c| {
            c.pods("agent")
                .into_iter()
                .find(|p| {
                    p["spec"]["nodeName"] == "node-a"
                        && p["metadata"]["name"] != old_agent.as_str()
                        && condition(&p["status"]["conditions"], "Ready") == Some("True")
                })
                .map(|_| ())
        });
    let new_agent = f
        .cluster
        .pods("agent")
        .into_iter()
        .find(|p| p["spec"]["nodeName"] == "node-a" && p["metadata"]["name"] != old_agent.as_str())
        .expect("the new agent");
    // The chart's default agent port, on the node (hostNetwork).
    let writes = f
        .cluster
        .pod_metric(&new_agent, 9090, "mirrornet_agent_kernel_writes_total");
    assert_eq!(writes, Some(0.0), "the new agent found node-a converged");
    let (sent, received) = pinging.join().unwrap();
    assert_eq!(
        sent, received,
        "no packet lost while the agent was replaced"
    );

    // etcd restarted under the API server: a change afterwards is still reconciled.
    f.cluster.plane.restart_etcd().expect("etcd back");
    f.unlabel("node-b");
    f.cluster
        .wait_for("node-b released after the etcd restart", STEP, |c| {
            let net = c.get("mirrornetwork", NETWORK, None)?;
            (net["status"]["desiredNodes"] == 1 && net["status"]["readyNodes"] == 1).then_some(())
        });
    assert!(ping(&f.lab("node-a").lab, "inner-10", "192.168.3.11"));
}

/// Waits until a ping across node `node` succeeds (`works`) or fails.
fn wait_ping(f: &mut Fixture, node: &str, works: bool, what: &str) {
    let ns = f.lab(node).lab.ns("inner-10");
    f.cluster.wait_for(what, STEP, |_| {
        let ok = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "ping",
                "-c1",
                "-W1",
                "-q",
                "192.168.3.11",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        (ok == works).then_some(())
    });
}

#[test]
fn helm_upgrade_rolls_the_agents_without_interrupting_forwarding_and_uninstall_leaves_the_crd_only()
{
    let mut f = Fixture::new("upgrade", &["node-a", "node-b"]);
    f.label("node-a");
    f.cluster.apply_yaml(SEED);
    f.wait_ready_on(&["node-a"]);
    let (old_agent, _) = f.agents().remove(0);
    let pinging = ping_during(&f.lab("node-a").lab, "inner-10", "192.168.3.11", 25);
    f.cluster.upgrade_chart(&["agent.metricsPort=9091"]);
    f.cluster
        .wait_for("the agent rolled to the new port", STEP, |c| {
            c.pods("agent").into_iter().find(|p| {
                p["metadata"]["name"] != old_agent.as_str()
                    && p["spec"]["containers"][0]["args"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "0.0.0.0:9091"))
                    && condition(&p["status"]["conditions"], "Ready") == Some("True")
            })
        });
    let (sent, received) = pinging.join().unwrap();
    assert_eq!(sent, received, "no packet lost while the agents rolled");
    f.wait_ready_on(&["node-a"]);

    // Uninstall as the chart README says: networks first, then the release.
    f.cluster
        .kubectl_ok(&["delete", "mirrornetwork", NETWORK, "--timeout=90s"]);
    f.cluster.wait_for("the agent DaemonSet gone", STEP, |c| {
        c.list("daemonsets", Some(NAMESPACE))
            .is_empty()
            .then_some(())
    });
    f.cluster
        .plane
        .helm(&["uninstall", "mirrornet", "--namespace", NAMESPACE, "--wait"])
        .status()
        .expect("helm uninstall")
        .success()
        .then_some(())
        .expect("helm uninstall succeeded");
    let left = f.cluster.wait_for("the release's objects gone", STEP, |c| {
        let left: Vec<String> = c
            .kubectl_ok(&[
                "get",
                "deployments,daemonsets,pods,serviceaccounts,services,roles,rolebindings,leases,poddisruptionbudgets,configmaps",
                "--namespace",
                NAMESPACE,
                "-o",
                "name",
            ])
            .lines()
            .map(str::to_owned)
            .filter(|n| n != "serviceaccount/default" && n != "configmap/kube-root-ca.crt")
            .collect();
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
    let cluster_wide =
        f.cluster
            .kubectl_ok(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    let ours: Vec<&str> = cluster_wide
        .lines()
        .filter(|l| l.contains("mirrornet"))
        .collect();
    assert!(ours.is_empty(), "cluster-wide objects left: {ours:?}");
    // What Helm documents it keeps: the CRD from the chart's crds/ directory.
    assert!(
        f.cluster
            .get("crd", "mirrornetworks.mirrornet.io", None)
            .is_some()
    );
}
