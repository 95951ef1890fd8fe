//! The kind e2e (`cargo xtask e2e-kind`, which runs the `e2e-kind` binary): mirrornet on a real Kubernetes cluster in kind — images, chart,
//! operator, agent and the seed scenario end to end (e2e/README.md describes the steps).
//!
//! ```text
//!  host ns mn-inner                     kind node mirrornet-e2e-worker                  host ns mn-outer
//!  eth0 192.168.2.10/24 ──veth── eth1 [agent: tables, marks, NAT, zones] eth2 ──veth── eth0 192.168.2.10/24
//!       default via 192.168.2.1         192.168.2.1 on both sides (the agent's)        default via 192.168.2.1
//! ```
//!
//! It shells out to docker, kind, kubectl and helm, logs every command, and on a failure prints
//! what it observed and keeps the cluster for inspection. Not part of `.ci/run`: CI machines
//! have no Docker engine.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirrornet_agent::lab::wait_for;

use crate::cluster::ClusterError;
use crate::cluster::test_cluster::{self, GATEWAY_LABEL, NAMESPACE, RELEASE};
use crate::node::Answer;

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// What the scenario observed where it wanted something else.
fn differs(what: String) -> ClusterError {
    ClusterError::Observed(what)
}

const CLUSTER: &str = "mirrornet-e2e";
/// kind names the first worker `<cluster>-worker`.
const GATEWAY: &str = "mirrornet-e2e-worker";
const TAG: &str = "e2e";
const OPERATOR_IMAGE: &str = "mirrornet/mirrornet-operator";
const AGENT_IMAGE: &str = "mirrornet/mirrornet-agent";
/// examples/seed.yaml's network, its label, and its addresses.
const NETWORK: &str = "plant-twin";
const HOST: &str = "192.168.2.10";
const ALIAS_OF_HOST: &str = "192.168.3.10";
const TOOLS: &[&str] = &["docker", "kind", "kubectl", "helm"];

/// One side of the seed network: the node's interface and the namespace of its host.
struct Side {
    name: &'static str,
    interface: &'static str,
    namespace: &'static str,
}

const SIDES: [Side; 2] = [
    Side {
        name: "inner",
        interface: "eth1",
        namespace: "mn-inner",
    },
    Side {
        name: "outer",
        interface: "eth2",
        namespace: "mn-outer",
    },
];

const KIND_CONFIG: &str = "\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
";

/// Runs the whole e2e; the cluster is deleted on success and kept on failure.
pub fn run(root: &Path) -> Result<()> {
    require_tools()?;
    let work = root.join("target").join("e2e-kind");
    std::fs::create_dir_all(&work).map_err(|e| ClusterError::io(&work, e))?;
    let kube = Kube {
        kubeconfig: work.join("kubeconfig"),
    };
    let started = Instant::now();
    step("build the operator and agent images");
    for (dockerfile, image) in [
        ("images/operator.Dockerfile", OPERATOR_IMAGE),
        ("images/agent.Dockerfile", AGENT_IMAGE),
    ] {
        sh(
            "docker",
            &[
                "build",
                "-f",
                dockerfile,
                "-t",
                &format!("{image}:{TAG}"),
                ".",
            ],
        )?;
    }
    step("create the kind cluster (a control plane and two workers)");
    create_cluster(&kube)?;
    let outcome = scenario(root, &work, &kube);
    match &outcome {
        Ok(()) if std::env::var_os("MIRRORNET_E2E_KEEP").is_none() => {
            step("delete the kind cluster");
            sh("kind", &["delete", "cluster", "--name", CLUSTER])?;
        }
        Ok(()) => eprintln!("MIRRORNET_E2E_KEEP is set: cluster {CLUSTER} kept"),
        Err(e) => {
            eprintln!("\x1b[1;31me2e-kind failed:\x1b[0m {e}");
            diagnostics(&kube);
            eprintln!(
                "cluster kept for inspection: export KUBECONFIG={}; delete it with `kind delete cluster --name {CLUSTER}`",
                kube.kubeconfig.display()
            );
        }
    }
    outcome?;
    eprintln!(
        "\x1b[1;32me2e-kind passed\x1b[0m in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn scenario(root: &Path, work: &Path, kube: &Kube) -> Result<()> {
    step("load the images into the cluster");
    for image in [OPERATOR_IMAGE, AGENT_IMAGE] {
        sh(
            "kind",
            &[
                "load",
                "docker-image",
                &format!("{image}:{TAG}"),
                "--name",
                CLUSTER,
            ],
        )?;
    }

    step("helm install the chart");
    for args in test_cluster::namespace_for_agents() {
        kube.kubectl(&args)?;
    }
    let values = [
        format!("operator.image.tag={TAG}"),
        format!("agent.image.tag={TAG}"),
    ];
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let install = test_cluster::chart_release("install", &values, "5m");
    kube.helm(&install.iter().map(String::as_str).collect::<Vec<_>>())?;
    check_one_leader(kube)?;

    step("wire the two sides into the gateway node");
    ensure_node_tools()?;
    copy_probe_into_node(work)?;
    wire_sides()?;
    let before = node_snapshot()?;

    step("label the gateway node and apply examples/seed.yaml");
    let gateway_label = format!("{GATEWAY_LABEL}=true");
    kube.kubectl(&["label", "node", GATEWAY, &gateway_label, "--overwrite"])?;
    kube.kubectl(&[
        "apply",
        "-f",
        &root.join("examples/seed.yaml").to_string_lossy(),
    ])?;

    step("wait for the network to become Ready");
    let ready = kube.kubectl(&[
        "wait",
        &format!("mirrornetwork/{NETWORK}"),
        "--for=condition=Ready",
        "--timeout=180s",
    ]);
    if let Err(e) = ready {
        let observed = kube
            .kubectl(&["get", "mirrornetwork", NETWORK, "-o", "yaml"])
            .unwrap_or_default();
        return Err(differs(format!(
            "{e}\nthe network as observed:\n{observed}"
        )));
    }
    check_agents_only_on_gateway(kube)?;

    step("ping both ways through the alias prefix");
    for (from, to) in [(&SIDES[0], &SIDES[1]), (&SIDES[1], &SIDES[0])] {
        check_ping(from, to)?;
    }

    step("identical 5-tuple from both sides at once");
    check_identical_five_tuples()?;

    step("delete the network and check for residue on the node");
    kube.kubectl(&[
        "delete",
        "mirrornetwork",
        NETWORK,
        "--wait=true",
        "--timeout=180s",
    ])?;
    kube.wait_until_none("daemonsets", "the agent DaemonSet to be removed")?;
    let after = node_snapshot()?;
    compare_snapshots(&before, &after)?;
    unwire_sides()?;

    step("helm uninstall and check that no mirrornet object is left");
    kube.helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "3m",
    ])?;
    kube.wait_until_none("pods", "the operator pods to terminate")?;
    check_no_leftovers(kube)?;
    Ok(())
}

// --- checks ---------------------------------------------------------------------------------

fn check_one_leader(kube: &Kube) -> Result<()> {
    let pods = kube.pods_of("operator", ".metadata.name")?;
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    if pods.len() != 2 {
        return Err(differs(format!(
            "expected two operator replicas, observed {pods:?}"
        )));
    }
    let holder = wait_until(
        "an operator replica to hold the Lease",
        Duration::from_secs(60),
        || {
            let holder = kube.kubectl(&[
                "get",
                "lease",
                "-n",
                NAMESPACE,
                "mirrornet-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])?;
            let holder = holder.trim().to_owned();
            Ok(pods
                .contains(&holder.as_str())
                .then(|| holder.clone())
                .ok_or(format!("holder {holder:?}, replicas {pods:?}")))
        },
    )?;
    eprintln!("leader: {holder}");
    Ok(())
}

fn check_agents_only_on_gateway(kube: &Kube) -> Result<()> {
    let nodes = kube.pods_of("agent", ".spec.nodeName")?;
    if nodes != [GATEWAY] {
        return Err(differs(format!(
            "expected one agent, on {GATEWAY}; observed agents on {nodes:?}"
        )));
    }
    Ok(())
}

/// `from`'s host pings the other side's host by its alias; the echo must be answered by the
/// other side's host (its ICMP InEchos counter moves), not by `from`'s own twin.
fn check_ping(from: &Side, to: &Side) -> Result<()> {
    let seen_before = in_echos(to)?;
    let own_before = in_echos(from)?;
    node(&[
        "ip",
        "netns",
        "exec",
        from.namespace,
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        ALIAS_OF_HOST,
    ])?;
    let seen = in_echos(to)? - seen_before;
    let own = in_echos(from)? - own_before;
    if seen < 3 || own != 0 {
        return Err(differs(format!(
            "{} pinged {ALIAS_OF_HOST}: {} host answered {seen} echo requests (want 3), {} host {own} (want 0)",
            from.name, to.name, from.name
        )));
    }
    eprintln!(
        "{} {HOST} -> {ALIAS_OF_HOST}: answered by the {} host ({seen} echo requests)",
        from.name, to.name
    );
    Ok(())
}

/// ICMP echo requests received in a side's host namespace (/proc/net/snmp is per namespace).
fn in_echos(side: &Side) -> Result<u64> {
    let snmp = node(&[
        "ip",
        "netns",
        "exec",
        side.namespace,
        "cat",
        "/proc/net/snmp",
    ])?;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
        return Err(differs(format!(
            "no Icmp lines in /proc/net/snmp of {}:\n{snmp}",
            side.namespace
        )));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InEchos")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| {
            differs(format!(
                "no InEchos in /proc/net/snmp of {}",
                side.namespace
            ))
        })
}

/// Both hosts serve port 80 and both connect from port 4000 to 192.168.3.10:80 at the same
/// time: each must reach the other side's server, seen from the alias, and conntrack must
/// hold the two connections in distinct zones (DESIGN.md section 4, item 2).
fn check_identical_five_tuples() -> Result<()> {
    for side in &SIDES {
        sh(
            "docker",
            &[
                "exec",
                "-d",
                GATEWAY,
                "ip",
                "netns",
                "exec",
                side.namespace,
                "/usr/local/bin/mirrornet-agent",
                "probe",
                "serve",
                "--port",
                "80",
                "--identity",
                side.name,
                "--hold-ms",
                "5000",
            ],
        )?;
    }
    for side in &SIDES {
        wait_until(
            &format!("the {} server to listen", side.name),
            Duration::from_secs(10),
            || {
                let listening = node(&[
                    "ip",
                    "netns",
                    "exec",
                    side.namespace,
                    "ss",
                    "-Htln",
                    "sport = :80",
                ])?;
                Ok((!listening.trim().is_empty())
                    .then_some(())
                    .ok_or(listening))
            },
        )?;
    }
    let clients: Vec<_> = SIDES
        .iter()
        .map(|side| {
            let args = [
                "exec",
                GATEWAY,
                "ip",
                "netns",
                "exec",
                side.namespace,
                "/usr/local/bin/mirrornet-agent",
                "probe",
                "connect",
                &format!("{ALIAS_OF_HOST}:80"),
                "--from-port",
                "4000",
            ]
            .map(str::to_owned);
            echo("docker", &args);
            Command::new("docker")
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| ClusterError::Spawn {
                    program: "docker".into(),
                    source,
                })
        })
        .collect::<Result<_>>()?;
    for (side, client) in SIDES.iter().zip(clients) {
        let out = client
            .wait_with_output()
            .map_err(|e| ClusterError::io("docker exec", e))?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let other = SIDES
            .iter()
            .find(|s| s.name != side.name)
            .map_or("", |s| s.name);
        let want = Answer {
            server: other.to_owned(),
            seen_as: format!("{ALIAS_OF_HOST}:4000"),
        };
        if !out.status.success() || Answer::parse(&line).as_ref() != Ok(&want) {
            return Err(differs(format!(
                "{} {HOST}:4000 -> {ALIAS_OF_HOST}:80: want {want:?}, got {line:?} ({}; stderr: {})",
                side.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        eprintln!(
            "{} {HOST}:4000 -> {ALIAS_OF_HOST}:80 answered: {line}",
            side.name
        );
    }
    let entries = node(&[
        "conntrack",
        "-L",
        "-p",
        "tcp",
        "--orig-port-src",
        "4000",
        "--orig-port-dst",
        "80",
    ])?;
    let zones: BTreeSet<u64> = crate::node::conntrack_zones(&entries).into_iter().collect();
    let lines = entries.lines().filter(|l| l.contains("sport=4000")).count();
    if lines != 2 || zones.len() != 2 {
        return Err(differs(format!(
            "want two conntrack entries in two zones, observed:\n{entries}"
        )));
    }
    eprintln!("conntrack: two entries, zones {zones:?}");
    Ok(())
}

fn check_no_leftovers(kube: &Kube) -> Result<()> {
    // The garbage collector may still be removing ReplicaSets; give it a minute.
    wait_until(
        "nothing named mirrornet to remain",
        Duration::from_secs(60),
        || {
            let namespaced = kube.kubectl(&[
                "get",
                "all,leases,serviceaccounts,roles,rolebindings,configmaps,poddisruptionbudgets",
                "-n",
                NAMESPACE,
                "-o",
                "name",
            ])?;
            let in_default =
                kube.kubectl(&["get", "roles,rolebindings", "-n", "default", "-o", "name"])?;
            let cluster =
                kube.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"])?;
            let networks = kube.kubectl(&["get", "mirrornetworks", "-o", "name"])?;
            let left: Vec<&str> = namespaced
                .lines()
                .chain(in_default.lines())
                .chain(cluster.lines())
                .filter(|name| name.contains("mirrornet"))
                .chain(networks.lines())
                .collect();
            Ok(left
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("left behind after helm uninstall: {left:?}")))
        },
    )?;
    // Helm never deletes what a chart's crds/ installed; removing it is the user's step.
    eprintln!("nothing of mirrornet left but the CRD, which Helm keeps by design; deleting it");
    kube.kubectl(&[
        "delete",
        "crd",
        "mirrornetworks.mirrornet.io",
        "--wait=true",
    ])?;
    Ok(())
}

// --- the gateway node -----------------------------------------------------------------------

/// `ping`, `conntrack`, `nft` and `ss` in the node container, installed if its image lacks them.
fn ensure_node_tools() -> Result<()> {
    let missing = node(&[
        "sh",
        "-c",
        "for t in ping:iputils-ping conntrack:conntrack nft:nftables ss:iproute2; do \
         command -v ${t%%:*} >/dev/null || echo ${t#*:}; done",
    ])?;
    let missing: Vec<&str> = missing.split_whitespace().collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing in {GATEWAY}: {}", missing.join(" "));
    node(&["apt-get", "update", "-qq"])?;
    let mut args = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
    ];
    args.extend(["-y", "-qq", "--no-install-recommends"]);
    args.extend(missing);
    node(&args)?;
    Ok(())
}

/// The probe is the agent binary itself, taken from the agent image so that it links against
/// the Debian release the node runs.
fn copy_probe_into_node(work: &Path) -> Result<()> {
    let local = work.join("mirrornet-agent");
    let holder = "mirrornet-e2e-probe";
    let _ = Command::new("docker").args(["rm", "-f", holder]).output();
    sh(
        "docker",
        &["create", "--name", holder, &format!("{AGENT_IMAGE}:{TAG}")],
    )?;
    let copied = sh(
        "docker",
        &[
            "cp",
            &format!("{holder}:/usr/local/bin/mirrornet-agent"),
            &local.to_string_lossy(),
        ],
    );
    sh("docker", &["rm", holder])?;
    copied?;
    sh(
        "docker",
        &[
            "cp",
            &local.to_string_lossy(),
            &format!("{GATEWAY}:/usr/local/bin/mirrornet-agent"),
        ],
    )?;
    Ok(())
}

/// Each side: a namespace holding its host, joined to the node by a veth pair whose node end
/// is the side's interface. Both hosts have the identical address.
fn wire_sides() -> Result<()> {
    for side in &SIDES {
        let ns = side.namespace;
        let script = format!(
            "set -e
             ip netns add {ns}
             ip link add {iface} type veth peer name eth0 netns {ns}
             ip link set {iface} up
             ip -n {ns} link set lo up
             ip -n {ns} link set eth0 up
             ip -n {ns} addr add {HOST}/24 dev eth0
             ip -n {ns} route add default via 192.168.2.1",
            iface = side.interface
        );
        node(&["sh", "-c", &script])?;
    }
    Ok(())
}

fn unwire_sides() -> Result<()> {
    for side in &SIDES {
        let script = format!(
            "for p in $(ip netns pids {ns}); do kill -9 $p; done; ip netns del {ns}",
            ns = side.namespace
        );
        node(&["sh", "-c", &script])?;
    }
    Ok(())
}

/// What mirrornet may change on the node, in a form that compares equal when it is as before.
/// Pod veths (kindnet) come and go with other pods, so they are left out.
fn node_snapshot() -> Result<Vec<String>> {
    let mut script = String::from(
        "set -e
         echo '# links'; ip -o link show | cut -d: -f2 | sed 's/@.*//; s/ //g' | grep -v '^veth' | sort
         echo '# rules'; ip rule show
         echo '# rules6'; ip -6 rule show
         echo '# routes'; ip route show table all | grep -v ' dev veth' | sort
         echo '# routes6'; ip -6 route show table all | grep -v ' dev veth' | sort
         echo '# nft tables'; nft list tables
",
    );
    for side in &SIDES {
        let i = side.interface;
        script.push_str(&format!(
            "echo '# {i}'; ip -o addr show dev {i} | awk '{{print $3, $4}}'
             for k in forwarding rp_filter accept_local; do echo \"$k $(cat /proc/sys/net/ipv4/conf/{i}/$k)\"; done
             echo \"ipv6 forwarding $(cat /proc/sys/net/ipv6/conf/{i}/forwarding)\"
"
        ));
    }
    Ok(node(&["sh", "-c", &script])?
        .lines()
        .map(|l| l.trim().to_owned())
        .collect())
}

fn compare_snapshots(before: &[String], after: &[String]) -> Result<()> {
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    if gone.is_empty() && new.is_empty() {
        eprintln!(
            "node state as before the network: {} lines compared",
            before.len()
        );
        return Ok(());
    }
    let mut report = String::new();
    for l in gone {
        report.push_str(&format!("\n  - {l}"));
    }
    for l in new {
        report.push_str(&format!("\n  + {l}"));
    }
    Err(differs(format!(
        "the node differs from before the network (- missing, + left behind):{report}"
    )))
}

/// A command in the gateway node container.
fn node(args: &[&str]) -> Result<String> {
    let mut full = vec!["exec", GATEWAY];
    full.extend_from_slice(args);
    sh("docker", &full)
}

// --- cluster --------------------------------------------------------------------------------

fn create_cluster(kube: &Kube) -> Result<()> {
    let existing = sh("kind", &["get", "clusters"])?;
    if existing.lines().any(|c| c.trim() == CLUSTER) {
        eprintln!("a cluster {CLUSTER} exists from an earlier run; deleting it");
        sh("kind", &["delete", "cluster", "--name", CLUSTER])?;
    }
    let kubeconfig = kube.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec![
        "create",
        "cluster",
        "--name",
        CLUSTER,
        "--kubeconfig",
        &kubeconfig,
        "--config",
        "-",
        "--wait",
        "180s",
    ];
    // e.g. kindest/node:v1.31.x to test another supported Kubernetes version.
    let image = std::env::var("MIRRORNET_E2E_NODE_IMAGE").ok();
    if let Some(image) = &image {
        args.extend(["--image", image.as_str()]);
    }
    sh_stdin("kind", &args, KIND_CONFIG)?;
    kube.kubectl(&["version"])?;
    Ok(())
}

struct Kube {
    kubeconfig: PathBuf,
}

impl Kube {
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        sh("kubectl", &full)
    }

    /// `field` (a JSONPath such as `.spec.nodeName`) of each pod of the chart's `component`
    /// (`operator`, `agent`).
    fn pods_of(&self, component: &str, field: &str) -> Result<Vec<String>> {
        let selector = format!("app.kubernetes.io/component={component}");
        let output = format!("jsonpath={{range .items[*]}}{{{field}}}{{\"\\n\"}}{{end}}");
        let text = self.kubectl(&[
            "get", "pods", "-n", NAMESPACE, "-l", &selector, "-o", &output,
        ])?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Waits up to two minutes for [`NAMESPACE`] to hold no object of `kind`.
    fn wait_until_none(&self, kind: &str, what: &str) -> Result<()> {
        wait_until(what, Duration::from_secs(120), || {
            let names = self.kubectl(&["get", kind, "-n", NAMESPACE, "-o", "name"])?;
            Ok(names.trim().is_empty().then_some(()).ok_or(names))
        })
    }

    fn helm(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        sh("helm", &full)
    }
}

/// What a failure needs for a diagnosis; every command is best effort.
fn diagnostics(kube: &Kube) {
    eprintln!("\x1b[1m--- diagnostics ---\x1b[0m");
    let component = |c: &str| format!("app.kubernetes.io/component={c}");
    let (operator, agent) = (component("operator"), component("agent"));
    let mut commands: Vec<Vec<&str>> = test_cluster::DIAGNOSTIC_QUERIES
        .iter()
        .map(|q| q.to_vec())
        .collect();
    commands.push(vec!["get", "pods", "-A", "-o", "wide"]);
    // A real kubelet keeps the pods' logs: kubectl reads them.
    for selector in [&operator, &agent] {
        commands.push(vec![
            "logs",
            "-n",
            NAMESPACE,
            "-l",
            selector,
            "--tail=200",
            "--prefix",
        ]);
    }
    for args in commands {
        match kube.kubectl(&args) {
            Ok(out) => eprintln!("{out}"),
            Err(e) => eprintln!("({e})"),
        }
    }
}

// --- processes ------------------------------------------------------------------------------

fn require_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !Command::new(t)
                .arg(if *t == "kubectl" || *t == "helm" {
                    "version"
                } else {
                    "--version"
                })
                .args(if *t == "kubectl" {
                    &["--client"][..]
                } else {
                    &[][..]
                })
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        return Err(differs(format!(
            "the kind e2e needs {} on PATH; not found: {} (see e2e/README.md)",
            TOOLS.join(", "),
            missing.join(", ")
        )));
    }
    let info = Command::new("docker")
        .args(["info"])
        .output()
        .map_err(cannot_start("docker"))?;
    if !info.status.success() {
        return Err(differs(format!(
            "docker is installed but its engine does not answer (`docker info`): {}",
            String::from_utf8_lossy(&info.stderr).trim()
        )));
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("\n\x1b[1;34m==> {what}\x1b[0m");
}

fn echo<S: AsRef<str>>(program: &str, args: &[S]) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    eprintln!("\x1b[1m$ {program} {}\x1b[0m", args.join(" "));
}

fn cannot_start(program: &str) -> impl FnOnce(std::io::Error) -> ClusterError {
    move |source| ClusterError::Spawn {
        program: program.to_owned(),
        source,
    }
}

/// Runs a command, echoing it; returns its stdout, or fails with everything it printed.
fn sh(program: &str, args: &[&str]) -> Result<String> {
    echo(program, args);
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(cannot_start(program))?;
    finish(program, args, out)
}

fn sh_stdin(program: &str, args: &[&str], input: &str) -> Result<String> {
    echo(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_start(program))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(cannot_start(program))?;
    }
    let out = child.wait_with_output().map_err(cannot_start(program))?;
    finish(program, args, out)
}

fn finish(program: &str, args: &[&str], out: std::process::Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(ClusterError::Failed {
            command: format!("{program} {}", args.join(" ")),
            output: format!("({})\n{stdout}{stderr}", out.status),
        });
    }
    if !stderr.trim().is_empty() {
        eprintln!("{}", stderr.trim_end());
    }
    Ok(stdout)
}

/// Polls `probe` every second until it yields a value; on timeout, fails with the last thing
/// it observed. `probe` returns `Ok(Err(observed))` for "not yet".
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<std::result::Result<T, String>>,
) -> Result<T> {
    eprintln!("waiting up to {timeout:?} for {what}");
    let mut observed = String::new();
    wait_for(timeout, Duration::from_secs(1), || match probe() {
        Ok(Ok(value)) => Some(value),
        Ok(Err(now)) => {
            observed = now;
            None
        }
        Err(e) => {
            observed = e.to_string();
            None
        }
    })
    .ok_or_else(|| ClusterError::NotReady {
        what: what.to_owned(),
        after: timeout,
        detail: format!("last observed: {observed}"),
    })
}
