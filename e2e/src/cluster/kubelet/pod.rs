//! One pod's worker: prepares its network namespace, API forwarder and volumes, runs its
//! container (restarting it as its restartPolicy says, probing it), reports its status, and
//! stops and cleans up when the pod is deleted, vanishes or the kubelet goes.
//!
//! ```text
//! Pod (watch) ─▶ prepare: netns + forwarder ─▶ plan (pure) ─▶ volume files ─▶ spawn ◀─┐
//!                                                         exit / liveness ─▶ back-off ┘
//!                     every change of Observed ─▶ status::patch ─▶ pods/status (SSA)
//! ```

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use super::plan::{self, ContainerPlan, FileContent, PlanError, Refs, VolumeSource};
use super::probe::{self, Kind};
use super::status::{self, Exit, Observed, Run};
use super::{Shared, netns};

/// The longest back-off between restarts; a container that ran twice as long starts over
/// from the shortest. Kubelet's are 10 s doubling up to 5 min; tests cannot wait that long.
const MAX_BACK_OFF: Duration = Duration::from_secs(10);
/// How long a container gets between SIGTERM and SIGKILL when the kubelet itself stops.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The shell that runs inside `ip netns exec`'s private mount namespace: bind-mounts each
/// `source target ro|rw` triple, then execs the rest (setpriv and the container's command).
/// Every value arrives as a positional parameter, never inside the script.
const WRAPPER: &str = r#"set -e
mount=$1; shift
while [ "$1" != -- ]; do
  "$mount" --bind "$1" "$2"
  if [ "$3" = ro ]; then "$mount" -o remount,bind,ro "$2"; fi
  shift 3
done
shift
exec "$@""#;

/// 1 s doubling up to [`MAX_BACK_OFF`], before restart `n` (1-based).
fn back_off(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(8)).min(MAX_BACK_OFF)
}

/// Why a worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The pod has a deletionTimestamp: stop it, then delete it for good.
    Deleted,
    /// The pod is gone from the API.
    Gone,
    /// The kubelet is dropped: stop the process, leave the API alone.
    Shutdown,
}

/// The worker's view of the pod object and of the kubelet's shutdown.
#[derive(Debug)]
pub(super) struct Signals {
    pub pod: watch::Receiver<Option<Pod>>,
    pub shutdown: watch::Receiver<bool>,
}

impl Signals {
    fn check(&self) -> Option<Stop> {
        if *self.shutdown.borrow() {
            return Some(Stop::Shutdown);
        }
        match &*self.pod.borrow() {
            None => Some(Stop::Gone),
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => Some(Stop::Deleted),
            Some(_) => None,
        }
    }

    /// Resolves when the worker must stop; cancel-safe.
    async fn stopped(&mut self) -> Stop {
        loop {
            if let Some(stop) = self.check() {
                return stop;
            }
            tokio::select! {
                changed = self.pod.changed() => if changed.is_err() { return Stop::Shutdown },
                changed = self.shutdown.changed() => if changed.is_err() { return Stop::Shutdown },
            }
        }
    }

    /// SIGTERM to SIGKILL: the deletion's grace period, at most 10 s.
    fn grace(&self, stop: Stop) -> Duration {
        let seconds = (self.pod.borrow().as_ref())
            .and_then(|p| p.metadata.deletion_grace_period_seconds)
            .unwrap_or(30);
        match stop {
            Stop::Shutdown => SHUTDOWN_GRACE,
            _ => Duration::from_secs(seconds.clamp(0, 10) as u64),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PodError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Io { what, source }
}

/// Runs the pod until it must stop, then cleans up after it.
pub(super) async fn run(
    shared: Arc<Shared>,
    pod: Pod,
    mut signals: Signals,
    _done: std::sync::mpsc::Sender<()>,
) {
    let mut worker = Worker::new(shared, pod);
    let stop = worker.live(&mut signals).await;
    worker.teardown(stop).await;
}

#[derive(Debug)]
struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    name: String,
    namespace: String,
    dir: PathBuf,
    host_network: bool,
    netns: String,
    forwarder: Option<(u16, tokio::task::JoinHandle<()>)>,
    observed: Observed,
    written: Option<Observed>,
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: Pod) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let short: String = uid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        let netns = match host_network {
            true => shared.node.netns.clone(),
            false => format!("{}-p{short}", shared.node.netns),
        };
        let container = spec.containers.first().cloned().unwrap_or_default();
        let image = container.image.unwrap_or_default();
        Self {
            dir: shared.node.root.join("pods").join(&uid),
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            host_network,
            netns,
            forwarder: None,
            observed: Observed {
                start_time: now(),
                container: container.name,
                image_id: format!("process://{}", plan::repository(&image)),
                image,
                run: Run::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last: None,
                restarts: 0,
                ready: false,
                ready_changed: now(),
                done: false,
            },
            written: None,
            uid,
            pod,
            shared,
        }
    }

    fn say(&self, message: impl std::fmt::Display) {
        eprintln!(
            "[kubelet {}] pod {}/{}: {message}",
            self.shared.node.name, self.namespace, self.name
        );
    }

    async fn live(&mut self, signals: &mut Signals) -> Stop {
        if let Some(stop) = signals.check() {
            return stop;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        if matches!(
            self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return signals.stopped().await;
        }
        if spec.init_containers.is_some_and(|c| !c.is_empty()) {
            self.say("its init containers are ignored: the process kubelet runs none");
        }
        if spec.containers.len() > 1 {
            self.say("only its first container runs: the process kubelet runs one per pod");
        }
        let plan = loop {
            match self.prepare().await {
                Ok(plan) => break plan,
                Err(e) => {
                    let (reason, retry) = match &e {
                        PodError::Plan(p) => (p.reason(), p.retryable()),
                        _ => ("CreateContainerError", true),
                    };
                    self.say(format!("cannot start: {e}"));
                    self.observed.run = Run::Waiting {
                        reason: reason.into(),
                        message: e.to_string(),
                    };
                    self.write().await;
                    if !retry {
                        return signals.stopped().await;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        stop = signals.stopped() => return stop,
                    }
                }
            }
        };
        self.run_container(&plan, signals).await
    }

    /// The namespace and forwarder (once), then the plan and its volumes' files (each try).
    async fn prepare(&mut self) -> Result<ContainerPlan, PodError> {
        let api_port = match (&self.forwarder, self.host_network) {
            (_, true) => self.shared.node_api_port,
            (Some((port, _)), false) => *port,
            (None, false) => {
                let ns = self.netns.clone();
                self.shared
                    .track(&self.uid, |live| live.netns = Some(ns.clone()));
                let listener = tokio::task::spawn_blocking(move || {
                    netns::add(&ns)?;
                    netns::bind_loopback(&ns)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(io_error(format!("network namespace {}", self.netns)))?;
                let port = listener
                    .local_addr()
                    .map_err(io_error("API forwarder"))?
                    .port();
                let task = netns::forward(listener, self.shared.api.address)
                    .map_err(io_error("API forwarder"))?;
                self.forwarder = Some((port, task));
                port
            }
        };
        let refs = self.fetch_refs().await?;
        let node = &self.shared.node;
        let cx = plan::Context {
            node: &node.name,
            node_root: &node.root,
            images: &self.shared.images,
            api_port,
        };
        let plan = plan::plan(&self.pod, &refs, cx)?;
        self.write_volumes(&plan).await?;
        Ok(plan)
    }

    async fn fetch_refs(&self) -> Result<Refs, PodError> {
        let (config_maps, secrets) = plan::referenced(&self.pod);
        let mut refs = Refs::default();
        let cms: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        for name in config_maps {
            if let Some(cm) = cms.get_opt(&name).await? {
                let text = cm
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.into_bytes()));
                let binary = cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0));
                refs.config_maps.insert(name, text.chain(binary).collect());
            }
        }
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        for name in secrets {
            if let Some(secret) = api.get_opt(&name).await? {
                let data = secret.data.into_iter().flatten().map(|(k, v)| (k, v.0));
                refs.secrets.insert(name, data.collect());
            }
        }
        Ok(refs)
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    /// Host directories made if asked, the pod's own volumes written afresh.
    async fn write_volumes(&self, plan: &ContainerPlan) -> Result<(), PodError> {
        for volume in &plan.volumes {
            let files = match &volume.source {
                VolumeSource::Host { path, create: true } => {
                    std::fs::create_dir_all(path).map_err(io_error(path.display().to_string()))?;
                    continue;
                }
                VolumeSource::Host {
                    path,
                    create: false,
                } if !path.is_dir() => {
                    let source =
                        io::Error::new(io::ErrorKind::NotFound, "hostPath directory missing");
                    return Err(PodError::Io {
                        what: path.display().to_string(),
                        source,
                    });
                }
                VolumeSource::Host { .. } => continue,
                VolumeSource::Files(files) => files,
            };
            let dir = self.volume_dir(&volume.name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(io_error(dir.display().to_string()))?;
            for file in files {
                let relative = Path::new(&file.path);
                if !relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
                {
                    let source = io::Error::other("not a relative path inside the volume");
                    return Err(PodError::Io {
                        what: file.path.clone(),
                        source,
                    });
                }
                let bytes = match &file.content {
                    FileContent::Bytes(bytes) => bytes.clone(),
                    FileContent::Token {
                        audience,
                        expiration_seconds,
                    } => self
                        .token(audience.clone(), *expiration_seconds)
                        .await?
                        .into_bytes(),
                };
                let path = dir.join(relative);
                let write = || {
                    std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
                    std::fs::write(&path, &bytes)?;
                    std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(file.mode & 0o777),
                    )
                };
                write().map_err(io_error(path.display().to_string()))?;
            }
        }
        Ok(())
    }

    /// A token of the pod's ServiceAccount bound to the pod, as kubelet requests it.
    async fn token(
        &self,
        audience: Option<String>,
        expiration_seconds: i64,
    ) -> Result<String, PodError> {
        let account = (self.pod.spec.as_ref())
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.name.clone()),
                    uid: Some(self.uid.clone()),
                }),
                expiration_seconds: Some(expiration_seconds),
            },
            ..Default::default()
        };
        let accounts: Api<ServiceAccount> =
            Api::namespaced(self.shared.client.clone(), &self.namespace);
        let answer: TokenRequest = accounts
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await?;
        Ok(answer.status.map(|s| s.token).unwrap_or_default())
    }

    /// Runs the container, again after each exit the restart policy restarts.
    async fn run_container(&mut self, plan: &ContainerPlan, signals: &mut Signals) -> Stop {
        let mut crashes = 0;
        let mut resync = tokio::time::interval(Duration::from_secs(10));
        for attempt in 0.. {
            if attempt > 0 {
                self.observed.restarts += 1;
            }
            let (started, started_at) = (Instant::now(), now());
            let spawned = self.spawn(plan);
            let (status, pid) = match spawned {
                Err(e) => {
                    self.say(format!("cannot spawn: {e}"));
                    self.observed.run = Run::Waiting {
                        reason: "RunContainerError".into(),
                        message: e.to_string(),
                    };
                    (None, 0)
                }
                Ok(mut child) => {
                    let pid = child.id().unwrap_or_default();
                    self.shared.track(&self.uid, |live| live.pid = Some(pid));
                    self.say(format!("started {} as pid {pid}", plan.program.display()));
                    self.observed.run = Run::Running {
                        pid,
                        since: started_at.clone(),
                    };
                    self.set_ready(plan.readiness.is_none());
                    self.write().await;
                    let (tx, mut outcomes) = mpsc::channel(4);
                    let probes: Vec<_> = [
                        (Kind::Readiness, &plan.readiness),
                        (Kind::Liveness, &plan.liveness),
                    ]
                    .into_iter()
                    .filter_map(|(kind, p)| {
                        Some(tokio::spawn(probe::run(
                            kind,
                            p.clone()?,
                            self.netns.clone(),
                            tx.clone(),
                        )))
                    })
                    .collect();
                    let ended = loop {
                        tokio::select! {
                            status = child.wait() => break Ok(status.ok()),
                            Some(outcome) = outcomes.recv() => match outcome.kind {
                                Kind::Readiness => {
                                    self.set_ready(outcome.ok);
                                    self.write().await;
                                }
                                Kind::Liveness => {
                                    self.say("liveness probe failed: restarting the container");
                                    break Ok(stop_child(&mut child, pid, plan.grace).await);
                                }
                            },
                            _ = resync.tick() => self.write().await,
                            stop = signals.stopped() => {
                                stop_child(&mut child, pid, signals.grace(stop)).await;
                                break Err(stop);
                            }
                        }
                    };
                    probes.iter().for_each(|p| p.abort());
                    self.shared.track(&self.uid, |live| live.pid = None);
                    match ended {
                        Ok(status) => (status, pid),
                        Err(stop) => return stop,
                    }
                }
            };
            self.set_ready(false);
            if let Some(status) = status {
                let exit = Exit {
                    pid,
                    code: exit_code(status),
                    signal: status.signal(),
                    started: started_at,
                    finished: now(),
                };
                self.say(format!("container exited with {}", exit.code));
                if !plan.restart.restarts(exit.code) {
                    self.observed.run = Run::Terminated(exit);
                    self.observed.done = true;
                    self.write().await;
                    return signals.stopped().await;
                }
                self.observed.last = Some(exit);
            }
            if started.elapsed() > 2 * MAX_BACK_OFF {
                crashes = 0;
            }
            crashes += 1;
            let wait = back_off(crashes);
            if matches!(self.observed.run, Run::Running { .. }) {
                let message = format!("back-off {wait:?} restarting failed container");
                self.observed.run = Run::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message,
                };
            }
            self.write().await;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                stop = signals.stopped() => return stop,
            }
        }
        unreachable!("the restart loop only ends by returning")
    }

    /// `ip netns exec <ns> sh -c WRAPPER` with the mounts, then setpriv, then the binary,
    /// in an empty environment but the container's, in a process group of its own.
    fn spawn(&self, plan: &ContainerPlan) -> io::Result<Child> {
        let log_path = self
            .shared
            .log_path(&self.namespace, &self.name, &plan.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let tools = &self.shared.tools;
        let mut command = tokio::process::Command::new(&tools.ip);
        command
            .args(["netns", "exec", &self.netns])
            .arg(&tools.sh)
            .args(["-c", WRAPPER, "sh"])
            .arg(&tools.mount);
        for mount in &plan.mounts {
            let source = match plan
                .volumes
                .iter()
                .find(|v| v.name == mount.volume)
                .map(|v| &v.source)
            {
                Some(VolumeSource::Host { path, .. }) => path.clone(),
                Some(VolumeSource::Files(_)) => self.volume_dir(&mount.volume),
                None => {
                    return Err(io::Error::other(format!(
                        "volumeMount of unknown volume {}",
                        mount.volume
                    )));
                }
            };
            // The mount point is made on the host's filesystem, shared by every pod.
            let target = Path::new("/").join(&mount.target);
            std::fs::create_dir_all(&target)?;
            command
                .arg(source)
                .arg(target)
                .arg(if mount.read_only { "ro" } else { "rw" });
        }
        command
            .arg("--")
            .arg(&tools.setpriv)
            .args(plan::setpriv_args(&plan.user));
        command.arg("--").arg(&plan.program).args(&plan.args);
        command
            .env_clear()
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&plan.working_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }

    fn set_ready(&mut self, ready: bool) {
        if self.observed.ready != ready {
            self.observed.ready = ready;
            self.observed.ready_changed = now();
        }
    }

    /// Applies the status computed from `observed` unless it is the one last written.
    async fn write(&mut self) {
        if self.written.as_ref() == Some(&self.observed) {
            return;
        }
        let patch = status::patch(&self.name, &self.namespace, &self.uid, &self.observed);
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let params = PatchParams::apply(&self.shared.field_manager).force();
        match pods
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => self.written = Some(self.observed.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => self.say(format!("cannot write status (retried in 10 s): {e}")),
        }
    }

    async fn teardown(&mut self, stop: Stop) {
        if let Some((_, task)) = self.forwarder.take() {
            task.abort();
        }
        if !self.host_network && netns::exists(&self.netns) {
            let ns = self.netns.clone();
            match tokio::task::spawn_blocking(move || netns::delete(&ns)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.say(format!("cannot remove its network namespace: {e}")),
                Err(e) => self.say(format!("cannot remove its network namespace: {e}")),
            }
        }
        if stop != Stop::Shutdown {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        if stop == Stop::Deleted {
            let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match pods.delete(&self.name, &params).await {
                Ok(_) => self.say("stopped and deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => self.say(format!("cannot delete: {e}")),
            }
        }
        self.shared.untrack(&self.uid);
    }
}

/// SIGTERM to the container's first process (as a runtime sends it to PID 1), SIGKILL to its
/// whole process group after `grace`; also reaps the first process.
async fn stop_child(child: &mut Child, pid: u32, grace: Duration) -> Option<ExitStatus> {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            signal_group(pid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    // Whatever the leader left behind in its group.
    signal_group(pid, Signal::SIGKILL);
    status
}

pub(super) fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_ten_seconds() {
        let waits: Vec<u64> = (1..=6).map(|n| back_off(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn the_wrapper_mounts_then_execs_its_arguments() {
        let out = std::process::Command::new("sh")
            .args(["-c", WRAPPER, "sh", "/bin/true", "--", "echo", "$(x) ; `y`"])
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "$(x) ; `y`\n");
    }
}
