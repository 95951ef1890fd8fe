//! One test's cluster: the control plane, its nodes (each a lab's middleman namespace with a
//! process kubelet), and the chart installed with `helm` as a user installs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use mirrornet_agent::lab::wait_for;
use serde_json::Value;

use super::control_plane::ControlPlane;
use super::kubelet::{ApiEndpoint, Images, NodeSpec, ProcessKubelet};
use super::real_node::{RealNode, RealNodeSpec};
use super::{ClusterError, binaries};

/// The namespace the chart is installed into, as the chart README tells users.
pub const NAMESPACE: &str = "mirrornet-system";
/// The Helm release name the tests install.
pub const RELEASE: &str = "mirrornet";
/// The label the examples' node selectors select.
pub const GATEWAY_LABEL: &str = "mirrornet.io/gateway";

/// Tests share the machine's two cores: one cluster at a time keeps every API server's
/// timing realistic instead of starved.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct TestCluster {
    // Field order is drop order: kubelets stop their pods before the control plane goes.
    kubelets: BTreeMap<String, ProcessKubelet>,
    /// Nodes with Kubernetes' own kubelet and containerd (`real_node`).
    real_nodes: BTreeMap<String, RealNode>,
    /// Each node's network namespace.
    netns: BTreeMap<String, String>,
    pub plane: ControlPlane,
    pub client: kube::Client,
    runtime: tokio::runtime::Runtime,
    root: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("plane", &self.plane)
            .field("nodes", &self.kubelets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// A fresh control plane under a new directory, its administrator's client connected.
    pub fn start(tag: &str) -> Result<Self, ClusterError> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let bin = binaries()?;
        let root = std::env::temp_dir().join(format!("mn-cluster-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let started = Instant::now();
        let plane = ControlPlane::start(&bin, &root.join("control-plane"))?;
        eprintln!(
            "[cluster {tag}] control plane ready in {:.1?} at https://{}",
            started.elapsed(),
            plane.api
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ClusterError::io("tokio runtime", e))?;
        let client = runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(&plane.kubeconfig)
                    .map_err(kube::Error::InferKubeconfig)?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(kube::Error::InferKubeconfig)?;
            kube::Client::try_from(config)
        })?;
        Ok(Self {
            kubelets: BTreeMap::new(),
            real_nodes: BTreeMap::new(),
            netns: BTreeMap::new(),
            plane,
            client,
            runtime,
            root,
            _turn: turn,
        })
    }

    /// Registers network namespace `netns` as node `name` and starts its process kubelet.
    pub fn add_node(
        &mut self,
        name: &str,
        netns: &str,
        labels: &[(&str, &str)],
    ) -> Result<(), ClusterError> {
        let node = NodeSpec {
            name: name.to_owned(),
            netns: netns.to_owned(),
            root: self.root.join("nodes").join(name),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let api = ApiEndpoint {
            address: self.plane.api,
        };
        let kubelet = ProcessKubelet::start(
            self.client.clone(),
            self.runtime.handle().clone(),
            node,
            images(),
            api,
        )?;
        self.kubelets.insert(name.to_owned(), kubelet);
        self.netns.insert(name.to_owned(), netns.to_owned());
        Ok(())
    }

    /// Starts a real node (Kubernetes' kubelet, containerd, runc) whose hostNetwork pods share
    /// the namespace `spec.netns`. The caller waits for its Node to be Ready.
    pub fn add_real_node(&mut self, mut spec: RealNodeSpec) -> Result<(), ClusterError> {
        spec.root = self.root.join("nodes").join(&spec.name);
        let name = spec.name.clone();
        let netns = spec.netns.clone();
        let node = RealNode::start(
            spec,
            &binaries()?,
            &self.plane.kubeconfig,
            self.plane.api,
            self.runtime.handle(),
        )?;
        self.real_nodes.insert(name.clone(), node);
        self.netns.insert(name, netns);
        Ok(())
    }

    /// The real node `name`.
    pub fn real_node(&self, name: &str) -> Option<&RealNode> {
        self.real_nodes.get(name)
    }

    /// Stops node `name`'s kubelet and every pod process it ran (the Node object stays).
    pub fn stop_node(&mut self, name: &str) {
        self.kubelets.remove(name);
    }

    /// `helm install` of `charts/mirrornet` into [`NAMESPACE`] with `--wait`, plus `values`
    /// (`key=value` pairs for `--set`). The namespace is made first and labelled for the
    /// Pod Security level the agents need, as the chart README tells users.
    pub fn install_chart(&self, values: &[&str]) -> String {
        for args in namespace_for_agents() {
            self.kubectl_ok(&args);
        }
        self.helm_ok("install", values)
    }

    /// `helm upgrade` of the release with `values`, waiting for it.
    pub fn upgrade_chart(&self, values: &[&str]) -> String {
        self.helm_ok("upgrade", values)
    }

    fn helm_ok(&self, verb: &str, values: &[&str]) -> String {
        let args = chart_release(verb, values, "180s");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.plane.helm(&args).output().expect("running helm");
        self.expect_success(&format!("helm {}", args.join(" ")), out)
    }

    /// Runs `kubectl args` and returns its standard output; panics with the diagnostics when
    /// it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        self.expect_success(&format!("kubectl {}", args.join(" ")), out)
    }

    /// Runs `kubectl args`, whatever its outcome.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.plane.kubectl(args).output().expect("running kubectl")
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply_yaml(&self, yaml: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .plane
            .kubectl(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("writing to kubectl");
        child.wait_with_output().expect("kubectl")
    }

    /// An object as JSON (`kubectl get -o json`), or `None` when it does not exist.
    pub fn get(&self, kind: &str, name: &str, namespace: Option<&str>) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["--namespace", ns]);
        }
        let out = self.kubectl(&args);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl get {kind} {name}: {err}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl's JSON"))
    }

    /// Every object of `kind` (the `items` of `kubectl get -o json`).
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let mut args = vec!["get", kind, "-o", "json"];
        match namespace {
            Some(ns) => args.extend(["--namespace", ns]),
            None => args.push("--all-namespaces"),
        }
        let text = self.kubectl_ok(&args);
        let list: Value = serde_json::from_str(&text).expect("kubectl's JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `check` every 250 ms until it returns `Some`; panics with `what` and the
    /// cluster's diagnostics after `limit`, or as soon as a control plane component exits.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        let found = wait_for(limit, Duration::from_millis(250), || {
            let value = check(self);
            let running = self.plane.check_running().and_then(|()| {
                self.real_nodes
                    .values_mut()
                    .try_for_each(RealNode::check_running)
            });
            if value.is_none()
                && let Err(e) = running
            {
                panic!("while waiting for {what}: {e}\n{}", self.diagnostics());
            }
            value
        });
        let Some(value) = found else {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                self.diagnostics()
            );
        };
        eprintln!("[cluster] {what}: after {:.1?}", started.elapsed());
        value
    }

    /// Pods in [`NAMESPACE`] with label `component` (`operator` or `agent`).
    pub fn pods(&self, component: &str) -> Vec<Value> {
        self.list("pods", Some(NAMESPACE))
            .into_iter()
            .filter(|p| {
                let labels = &p["metadata"]["labels"];
                labels["app.kubernetes.io/component"] == component
                    || (component == "agent"
                        && labels["app.kubernetes.io/name"] == "mirrornet-agent")
            })
            .collect()
    }

    /// The log a pod's container wrote, as its node's kubelet kept it.
    pub fn pod_log(&self, pod: &Value) -> String {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let container = pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default();
        let meta = |k: &str| pod["metadata"][k].as_str().unwrap_or_default();
        if let Some(real) = self.real_nodes.get(node) {
            return real.pod_log(meta("namespace"), meta("name"), meta("uid"), container);
        }
        let Some(kubelet) = self.kubelets.get(node) else {
            return String::new();
        };
        let path = kubelet.log_path(
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            container,
        );
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// `GET path` on `port` inside a running pod's network namespace (the process kubelet
    /// gives a pod without hostNetwork a namespace `<node namespace>-p<first 8 of its uid>`),
    /// with the agent binary's HTTP probe: status and body, status 0 when nothing answers.
    pub fn pod_http_get(&self, pod: &Value, port: u16, path: &str) -> (u16, String) {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let mut netns = self.netns.get(node).cloned().unwrap_or_default();
        if pod["spec"]["hostNetwork"] != true {
            let uid: String = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect();
            netns = format!("{netns}-p{uid}");
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(crate::node::agent_bin())
            .args(["probe", "http-get", &format!("127.0.0.1:{port}"), path])
            .output()
            .expect("running the agent's http probe");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, body) = text.split_once('\n').unwrap_or(("0", ""));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The sum of a metric's samples on a pod's `/metrics` (`None` when it has none).
    pub fn pod_metric(&self, pod: &Value, port: u16, name: &str) -> Option<f64> {
        let (_, text) = self.pod_http_get(pod, port, "/metrics");
        crate::node::metric_sum(&text, name)
    }

    /// What a failing test prints: objects, events, the pods' logs and the control plane's.
    pub fn diagnostics(&self) -> String {
        let mut text = String::from("===== cluster diagnostics =====\n");
        for args in DIAGNOSTIC_QUERIES {
            let out = self.kubectl(args);
            text.push_str(&format!(
                "$ kubectl {}\n{}{}\n",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        for pod in self.list("pods", Some(NAMESPACE)) {
            let log = self.pod_log(&pod);
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "--- log of pod {} ---\n{}\n",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        for real in self.real_nodes.values() {
            text.push_str(&real.logs());
        }
        text.push_str(&self.plane.logs());
        text
    }

    fn expect_success(&self, command: &str, out: Output) -> String {
        if !out.status.success() {
            panic!(
                "`{command}` failed ({}):\n{}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a future on the cluster's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Pods first (their processes hold the node namespaces' state), then the control
        // plane; the directory goes unless the test failed and asked to keep it.
        self.kubelets.clear();
        self.real_nodes.clear();
        if std::env::var_os("MIRRORNET_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("[cluster] kept {}", self.root.display());
        }
    }
}

/// The `status` of condition `kind` in a conditions array (of a Node, a Pod, a MirrorNetwork
/// or one of its node entries).
pub fn condition<'a>(conditions: &'a Value, kind: &str) -> Option<&'a str> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)?["status"].as_str()
}

/// The conntrack zone the operator allocated to `side`, from a MirrorNetwork as JSON.
pub fn zone(net: &Value, side: &str) -> u64 {
    net["status"]["allocation"]["sides"]
        .as_array()
        .and_then(|sides| sides.iter().find(|s| s["side"] == side))
        .and_then(|s| s["zone"].as_u64())
        .unwrap_or_else(|| panic!("no zone allocated to {side}: {net}"))
}

/// The `kubectl` commands that make [`NAMESPACE`], labelled for the Pod Security level the
/// agents need (hostNetwork, NET_ADMIN), as the chart README tells users.
pub fn namespace_for_agents() -> [Vec<&'static str>; 2] {
    [
        vec!["create", "namespace", NAMESPACE],
        vec![
            "label",
            "namespace",
            NAMESPACE,
            "pod-security.kubernetes.io/enforce=privileged",
        ],
    ]
}

/// `helm <verb>` (`install`, `upgrade`) of this tree's chart as release [`RELEASE`] in
/// [`NAMESPACE`], waiting up to `timeout`, never pulling the images (they are this tree's
/// binaries, or images loaded into the cluster), with `values` as `--set key=value`.
pub fn chart_release(verb: &str, values: &[&str], timeout: &str) -> Vec<String> {
    let chart = chart_dir();
    let mut args: Vec<String> = [
        verb,
        RELEASE,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        timeout,
        "--set",
        "operator.image.pullPolicy=Never",
        "--set",
        "agent.image.pullPolicy=Never",
    ]
    .map(str::to_owned)
    .into();
    for value in values {
        args.extend(["--set".to_owned(), (*value).to_owned()]);
    }
    args
}

/// What a failing cluster scenario prints first: nodes, networks, the release's objects and
/// the events, as `kubectl` arguments.
pub const DIAGNOSTIC_QUERIES: [&[&str]; 5] = [
    &["get", "nodes,mirrornetworks", "-o", "wide"],
    &["get", "all,leases", "-n", NAMESPACE, "-o", "wide"],
    &["get", "mirrornetworks", "-o", "yaml"],
    &["get", "daemonsets", "-n", NAMESPACE, "-o", "yaml"],
    &["get", "events", "-A", "--sort-by=.lastTimestamp"],
];

/// The chart in this tree.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/mirrornet")
}

/// The images the chart names, as this tree's binaries: the images' entrypoints are these
/// binaries (images/*.Dockerfile), built by `cargo xtask test` into the target directory.
pub fn images() -> Images {
    let bin_dir = crate::node::agent_bin()
        .parent()
        .expect("the agent binary's directory")
        .to_path_buf();
    let mut images = Images::new();
    images.insert("mirrornet/mirrornet-agent".into(), crate::node::agent_bin());
    images.insert(
        "mirrornet/mirrornet-operator".into(),
        bin_dir.join("mirrornet-operator"),
    );
    images
}
