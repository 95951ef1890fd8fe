//! The process kubelet: plays a node's kubelet for the pods bound to it, running each pod's
//! container as a process of this tree's binaries inside the node's network namespace
//! (hostNetwork pods) or a namespace of the pod's own.
//!
//! ```text
//! Node + Lease ◀── heartbeat (10 s)
//! watch pods spec.nodeName=<node> ─▶ one worker per pod uid (pod.rs):
//!     plan.rs (pure: command, env, volumes, user, probes) ─▶ volume files ─▶
//!     ip netns exec <ns> sh -c 'mount --bind …; exec setpriv … -- <binary> <args>'
//!     probe.rs ─▶ ready / restart;  status.rs ─▶ pods/status (server-side apply)
//! ```
//!
//! What it does as kubelet does: registers the Node (Ready, allocatable cpu 4, memory 8Gi,
//! 110 pods) and renews its Lease in `kube-node-lease`, and, standing in for the node
//! lifecycle controller the harness does not run, lifts the `not-ready` taint the NodeTaint
//! admission plugin puts on new Nodes; starts the first container with the
//! pod's command and args (`$(VAR)` expanded), an environment built from empty (`env` with
//! `value`, `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef`; `envFrom`)
//! plus `KUBERNETES_SERVICE_HOST`/`_PORT`, the volumes mounted where the container says
//! (`hostPath`, `emptyDir`, `configMap`, `secret`, `downwardAPI`, `projected` with bound
//! ServiceAccount tokens from the TokenRequest API — so the API server's ServiceAccount
//! admission gives pods their real credentials), the user, groups, capabilities (as containerd
//! computes them: default set, add/drop, only root gets them at exec) and no-new-privs of its
//! securityContext; readiness and liveness probes (httpGet, tcpSocket, exec) with their
//! delays and thresholds; restarts per restartPolicy with back-off; status through
//! `pods/status`; graceful deletion (SIGTERM, grace period, SIGKILL, then delete with grace 0).
//!
//! What a real kubelet does that this one does not:
//! * no images or container runtime: an image is only a name for a binary of this tree
//!   ([`Images`]); the image's USER and WORKDIR are unknown (root and `/` unless the pod sets
//!   runAsUser / workingDir); no imagePullPolicy, no pull secrets;
//! * the container sees the host's root filesystem (no readOnlyRootFilesystem, no private
//!   `/tmp`, writable `/proc/sys`), mount points are made as directories on the host's
//!   filesystem (e.g. `/var/run/secrets/kubernetes.io/serviceaccount`, `/run/mirrornet`),
//!   only whole directory volumes are mounted (no subPath, no file-on-file mounts);
//! * no cgroups (resources are not limited, no OOM kills), no seccomp or AppArmor, no user,
//!   PID, IPC or UTS namespaces (HOSTNAME is set, the hostname is the host's);
//! * only the first container runs; init containers, sidecars, ephemeral containers, lifecycle
//!   hooks, startup and gRPC/HTTPS probes are not run;
//! * every pod's IP is 127.0.0.1 (each non-hostNetwork pod has its own loopback only: no pod
//!   network, no Services, no DNS); the `kubernetes` Service is a forwarder to the API server
//!   on 127.0.0.1 inside each pod's namespace;
//! * tokens are not refreshed (they last an hour or more, longer than a test);
//! * no kubelet server (`kubectl logs`/`exec`/`port-forward` fail: use
//!   [`ProcessKubelet::log_path`]), no events, no eviction, no static pods, no node status
//!   beyond Ready; it acts with the harness's admin credentials, not a node identity under
//!   the Node authorizer;
//! * back-off between restarts is 1 s doubling to 10 s (kubelet: 10 s doubling to 5 min).

pub(crate) mod netns;
mod plan;
mod pod;
mod probe;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::json;
use tokio::sync::watch;

/// One node of the test cluster: a network namespace registered as a Node object.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The Node object's name, also its `kubernetes.io/hostname` label.
    pub name: String,
    /// The `ip netns` name hostNetwork pods run in.
    pub netns: String,
    /// The node's own directory: hostPath volumes resolve under it (`root.join(path)`), and
    /// it holds the pods' directories (`pods/<uid>`) and the containers' logs (`logs/`).
    pub root: PathBuf,
    /// Extra labels of the Node at registration.
    pub labels: BTreeMap<String, String>,
}

/// Where pods reach the API server: the harness stands in for kube-proxy's `kubernetes`
/// Service by listening inside each pod's network namespace and forwarding to this address.
/// Pods get the cluster CA from the `kube-root-ca.crt` ConfigMap, as in a real cluster.
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    /// 127.0.0.1:port in the root network namespace.
    pub address: SocketAddr,
}

/// Image repository (the image string without `:tag` or `@digest`) -> the binary that is
/// that image's ENTRYPOINT.
pub type Images = BTreeMap<String, PathBuf>;

/// What can keep a process kubelet from starting.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("network namespace {netns:?} of node {node} does not exist (`ip netns add {netns}`)")]
    NoNetns { node: String, netns: String },
    #[error("node {node}: {what}: {source}")]
    Io {
        node: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not installed (the process kubelet needs iproute2, util-linux and sh)")]
    MissingTool(&'static str),
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("registering node {node}: no answer from the API server within {after:?}")]
    RegisterTimeout { node: String, after: Duration },
}

/// A node's kubelet, until dropped.
#[derive(Debug)]
pub struct ProcessKubelet {
    shared: Arc<Shared>,
    beating: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    /// Disconnects when every pod worker (each holds a sender) has stopped.
    workers_done: std::sync::mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the kubelet's tasks share.
struct Shared {
    client: kube::Client,
    node: NodeSpec,
    images: Images,
    api: ApiEndpoint,
    /// The forwarder's port in the node's namespace, for hostNetwork pods.
    node_api_port: u16,
    field_manager: String,
    tools: Tools,
    /// Processes and namespaces of running pods, by uid: what `Drop` removes if a worker
    /// cannot.
    live: Mutex<BTreeMap<String, Live>>,
}

#[derive(Debug, Default)]
struct Live {
    pid: Option<u32>,
    netns: Option<String>,
    abort: Option<tokio::task::AbortHandle>,
}

/// Absolute paths of the host programs a container is started with: its own PATH may differ.
#[derive(Debug)]
struct Tools {
    ip: PathBuf,
    sh: PathBuf,
    mount: PathBuf,
    setpriv: PathBuf,
}

impl std::fmt::Debug for Shared {
    // `kube::Client` has no Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.node)
            .field("images", &self.images)
            .field("api", &self.api)
            .field("node_api_port", &self.node_api_port)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn track(&self, uid: &str, f: impl FnOnce(&mut Live)) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        f(live.entry(uid.to_owned()).or_default());
    }

    fn untrack(&self, uid: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.node
            .root
            .join("logs")
            .join(format!("{namespace}_{pod}_{container}.log"))
    }

    fn say(&self, message: impl std::fmt::Display) {
        eprintln!("[kubelet {}] {message}", self.node.name);
    }
}

/// How long `start` waits for the Node to be registered.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the Node's Ready condition and its Lease are renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);

impl ProcessKubelet {
    /// Registers the Node (Ready, allocatable cpu "4", memory "8Gi", pods "110", labelled
    /// `kubernetes.io/hostname`, `kubernetes.io/os=linux`, `kubernetes.io/arch` and
    /// `node.labels`), keeps it Ready (status and Lease renewed every 10 s), and runs the pods
    /// bound to it until dropped. Call it from outside the runtime's worker threads.
    pub fn start(
        client: kube::Client,
        runtime: tokio::runtime::Handle,
        node: NodeSpec,
        images: Images,
        api: ApiEndpoint,
    ) -> Result<Self, KubeletError> {
        if !netns::exists(&node.netns) {
            return Err(KubeletError::NoNetns {
                node: node.name,
                netns: node.netns,
            });
        }
        let io = |what: &str| {
            let (node, what) = (node.name.clone(), what.to_owned());
            move |source| KubeletError::Io { node, what, source }
        };
        for dir in ["pods", "logs"] {
            std::fs::create_dir_all(node.root.join(dir))
                .map_err(io(&format!("creating {}/{dir}", node.root.display())))?;
        }
        let tools = Tools {
            ip: tool("ip")?,
            sh: tool("sh")?,
            mount: tool("mount")?,
            setpriv: tool("setpriv")?,
        };
        // The node's loopback carries its hostNetwork pods' API connections.
        netns::loopback_up(&node.netns).map_err(io("bringing up lo"))?;
        let listener = netns::bind_loopback(&node.netns).map_err(io("API forwarder"))?;
        let node_api_port = listener.local_addr().map_err(io("API forwarder"))?.port();
        let forwarder = {
            let _context = runtime.enter();
            netns::forward(listener, api.address).map_err(io("API forwarder"))?
        };
        let shared = Arc::new(Shared {
            client,
            field_manager: format!("mirrornet-e2e-kubelet/{}", node.name),
            node,
            images,
            api,
            node_api_port,
            tools,
            live: Mutex::new(BTreeMap::new()),
        });
        let ready_since = Time(Timestamp::now());
        // On a thread of its own: `block_on` must not run on one of the runtime's threads.
        let registered = std::thread::scope(|s| {
            let registering = async {
                tokio::time::timeout(REGISTER_TIMEOUT, register(&shared, &ready_since)).await
            };
            s.spawn(|| runtime.block_on(registering))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let failure = match registered {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(KubeletError::Register {
                node: shared.node.name.clone(),
                source,
            }),
            Err(_) => Some(KubeletError::RegisterTimeout {
                node: shared.node.name.clone(),
                after: REGISTER_TIMEOUT,
            }),
        };
        if let Some(error) = failure {
            forwarder.abort();
            return Err(error);
        }
        shared.say(format!(
            "registered; API forwarder on 127.0.0.1:{node_api_port} in {}",
            shared.node.netns
        ));
        let beating = Arc::new(AtomicBool::new(true));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, workers_done) = std::sync::mpsc::channel();
        let tasks = vec![
            forwarder,
            runtime.spawn(heartbeat(shared.clone(), beating.clone(), ready_since)),
            runtime.spawn(watch_pods(shared.clone(), shutdown_rx, done_tx)),
        ];
        Ok(Self {
            shared,
            beating,
            shutdown,
            workers_done,
            tasks,
        })
    }

    /// The log of a pod's container: its stdout and stderr, appended across restarts.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.shared.log_path(namespace, pod, container)
    }

    /// Stops renewing the Node's Ready condition and its Lease, as a node that lost its
    /// kubelet or its network would (no node lifecycle controller runs to mark it NotReady).
    pub fn stop_heartbeats(&self) {
        self.beating.store(false, Ordering::SeqCst);
    }

    /// Renews them again, from the next heartbeat on.
    pub fn resume_heartbeats(&self) {
        self.beating.store(true, Ordering::SeqCst);
    }
}

impl Drop for ProcessKubelet {
    /// Every worker stops its container (SIGTERM, SIGKILL after 2 s) and removes its
    /// namespace; what is left after a deadline is killed and removed from here.
    fn drop(&mut self) {
        self.beating.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + pod::SHUTDOWN_GRACE + Duration::from_secs(4);
        while let Ok(()) = self
            .workers_done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {}
        let leftovers =
            std::mem::take(&mut *self.shared.live.lock().unwrap_or_else(|e| e.into_inner()));
        for (uid, live) in leftovers {
            if live.pid.is_some() || live.netns.is_some() {
                self.shared
                    .say(format!("pod {uid} did not stop in time: killing it"));
            }
            if let Some(abort) = live.abort {
                abort.abort();
            }
            if let Some(pid) = live.pid {
                pod::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            if let Some(ns) = live.netns.filter(|ns| netns::exists(ns)) {
                let _ = netns::delete(&ns);
            }
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn tool(name: &'static str) -> Result<PathBuf, KubeletError> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|path| path.is_file())
    .ok_or(KubeletError::MissingTool(name))
}

async fn register(shared: &Shared, ready_since: &Time) -> Result<(), kube::Error> {
    let node = &shared.node;
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), arch().to_owned()),
    ]);
    labels.extend(node.labels.clone());
    let object = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
    });
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let params = PatchParams::apply(&shared.field_manager).force();
    nodes
        .patch(&node.name, &params, &Patch::Apply(&object))
        .await?;
    beat(shared, ready_since).await?;
    lift_lifecycle_taints(&nodes, &node.name).await
}

/// The taints the node lifecycle controller would remove once the node is Ready (the
/// NodeTaint admission plugin puts `not-ready` on every new Node), removed here because the
/// harness's control plane runs no such controller.
async fn lift_lifecycle_taints(nodes: &Api<Node>, name: &str) -> Result<(), kube::Error> {
    const LIFECYCLE: [&str; 2] = [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ];
    loop {
        let node = nodes.get(name).await?;
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        let kept: Vec<_> = taints
            .iter()
            .filter(|t| !LIFECYCLE.contains(&t.key.as_str()))
            .collect();
        if kept.len() == taints.len() {
            return Ok(());
        }
        // The resourceVersion makes the patch fail rather than drop a taint added meanwhile.
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": kept},
        });
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            other => return other.map(drop),
        }
    }
}

/// The Node's status with a fresh Ready heartbeat, and its Lease renewed.
async fn beat(shared: &Shared, ready_since: &Time) -> Result<(), kube::Error> {
    let name = &shared.node.name;
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": ready_since,
        })
    };
    let resources =
        json!({"cpu": plan::ALLOCATABLE_CPU, "memory": plan::ALLOCATABLE_MEMORY, "pods": "110"});
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                condition("Ready", "True", "KubeletReady", "the process kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": plan::NODE_IP},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "mirrornet e2e", "containerRuntimeVersion": "process://",
                "kubeletVersion": super::kubernetes_version(), "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": arch(),
            },
        },
    });
    let params = PatchParams::apply(&shared.field_manager).force();
    let nodes: Api<Node> = Api::all(shared.client.clone());
    nodes
        .patch_status(name, &params, &Patch::Apply(&status))
        .await?;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    leases.patch(name, &params, &Patch::Apply(&lease)).await?;
    Ok(())
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn heartbeat(shared: Arc<Shared>, beating: Arc<AtomicBool>, ready_since: Time) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.tick().await; // `register` just beat.
    loop {
        ticks.tick().await;
        if beating.load(Ordering::SeqCst)
            && let Err(e) = beat(&shared, &ready_since).await
        {
            shared.say(format!("heartbeat failed: {e}"));
        }
    }
}

/// Watches the node's pods and feeds each to its worker, one per uid; a pod that is deleted,
/// or absent from a relist, is told it is gone.
async fn watch_pods(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    done: std::sync::mpsc::Sender<()>,
) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node.name));
    let mut events = pin!(watcher(api, config).default_backoff());
    let mut pods: BTreeMap<String, watch::Sender<Option<Pod>>> = BTreeMap::new();
    let mut listed = BTreeSet::new();
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = shutdown.changed() => None,
        };
        let Some(event) = event else { return };
        let uid = |pod: &Pod| pod.metadata.uid.clone().unwrap_or_default();
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(pod)) => {
                listed.insert(uid(&pod));
                upsert(&shared, &mut pods, pod, &shutdown, &done);
            }
            Ok(Event::InitDone) => {
                for (_, tx) in pods.iter().filter(|(uid, _)| !listed.contains(*uid)) {
                    tx.send_replace(None);
                }
            }
            Ok(Event::Apply(pod)) => upsert(&shared, &mut pods, pod, &shutdown, &done),
            Ok(Event::Delete(pod)) => {
                if let Some(tx) = pods.get(&uid(&pod)) {
                    tx.send_replace(None);
                }
            }
            Err(e) => shared.say(format!("watching pods: {e}")),
        }
        // A worker that finished dropped its receiver.
        pods.retain(|_, tx| !tx.is_closed());
    }
}

fn upsert(
    shared: &Arc<Shared>,
    pods: &mut BTreeMap<String, watch::Sender<Option<Pod>>>,
    pod: Pod,
    shutdown: &watch::Receiver<bool>,
    done: &std::sync::mpsc::Sender<()>,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(tx) = pods.get(&uid) {
        tx.send_replace(Some(pod));
        return;
    }
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let signals = pod::Signals {
        pod: rx,
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(pod::run(shared.clone(), pod, signals, done.clone()));
    shared.track(&uid, |live| live.abort = Some(task.abort_handle()));
    pods.insert(uid, tx);
}
