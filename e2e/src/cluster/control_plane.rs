//! A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler, built from their Go modules (`e2e/k8s/build.sh`) and configured the way
//! controller-runtime's envtest and Kubernetes' own integration framework configure them, with
//! what those leave out because they run no controllers: TLS with client certificates, RBAC
//! authorization, ServiceAccount token signing (and the ServiceAccount admission plugin that
//! mounts tokens into pods), and the controllers the chart and the operator depend on.
//!
//! Everything listens on 127.0.0.1 at ports picked free at start; every file lives in one
//! directory removed with the value; every process is killed with it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ClusterError;
use super::pki::{self, Pki};

/// The controllers the tests need, under the names `--controllers` accepts: the DaemonSet
/// and Deployment ones run the chart's and the operator's workloads, the ServiceAccount ones
/// give namespaces their `default` account and `kube-root-ca.crt`, the garbage collector
/// deletes what owner references tie to a deleted object (the DaemonSet to its networks),
/// the namespace controller empties deleted namespaces. Node lifecycle is left out: the
/// harness's nodes are kept Ready by their process kubelets and never fail as a machine does.
const CONTROLLERS: &str = "daemonset,deployment,replicaset,serviceaccount,serviceaccount-token,\
garbagecollector,namespace,root-ca-certificate-publisher-controller,disruption";

/// One process of the control plane, restartable with the same arguments.
#[derive(Debug)]
struct Component {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Component {
    fn start(&mut self) -> Result<(), ClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ClusterError::io(&self.log, e))?;
        let err = log
            .try_clone()
            .map_err(|e| ClusterError::io(&self.log, e))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails with the tail of its log when the process has exited.
    fn check_running(&mut self) -> Result<(), ClusterError> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(ClusterError::Exited {
                component: self.name,
                status: status.to_string(),
                log: tail(&self.log, 30),
            });
        }
        Ok(())
    }
}

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub pki: Pki,
    pub api: SocketAddr,
    /// The administrator's kubeconfig, for kubectl, helm and the harness's client.
    pub kubeconfig: PathBuf,
    etcd: Component,
    apiserver: Component,
    controllers: Component,
    scheduler: Component,
}

impl ControlPlane {
    /// Starts every component in a new directory under `dir` and waits until the API server
    /// answers `/readyz`. `bin` holds the binaries `e2e/k8s/build.sh` built.
    pub fn start(bin: &Path, dir: &Path) -> Result<Self, ClusterError> {
        for program in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            if !bin.join(program).is_file() {
                return Err(ClusterError::MissingBinary(bin.join(program)));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(dir, e))?;
        let pki = Pki::create(&dir.join("pki"))?;
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let server = format!("https://{api}");
        let kubeconfig = pki.kubeconfig(pki::ADMIN, &server)?;
        let controllers_kubeconfig = pki.kubeconfig(pki::CONTROLLER_MANAGER, &server)?;
        let scheduler_kubeconfig = pki.kubeconfig(pki::SCHEDULER, &server)?;
        let p = |f: &str| pki.path(f).display().to_string();
        let component = |name: &'static str, program: &str, args: Vec<String>| Component {
            name,
            program: bin.join(program),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        let etcd = component(
            "etcd",
            "etcd",
            strings(&[
                "--name=e2e",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"),
                // A test cluster's data need not survive a power cut.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]),
        );
        let apiserver = component(
            "kube-apiserver",
            "kube-apiserver",
            strings(&[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={}", api.port()),
                &format!("--tls-cert-file={}", p("apiserver.crt")),
                &format!("--tls-private-key-file={}", p("apiserver.key")),
                &format!("--client-ca-file={}", p("ca.crt")),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", p("sa.pub")),
                &format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24",
                // The agent runs with hostNetwork and NET_ADMIN.
                "--allow-privileged=true",
                // Nothing routes the `kubernetes` Service's ClusterIP here (no kube-proxy);
                // pods reach the API server through their kubelet's forwarder instead.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ]),
        );
        let controllers = component(
            "kube-controller-manager",
            "kube-controller-manager",
            strings(&[
                &format!("--kubeconfig={}", controllers_kubeconfig.display()),
                &format!(
                    "--authentication-kubeconfig={}",
                    controllers_kubeconfig.display()
                ),
                &format!(
                    "--authorization-kubeconfig={}",
                    controllers_kubeconfig.display()
                ),
                &format!("--controllers={CONTROLLERS}"),
                // Each controller acts as its own ServiceAccount, with the narrow roles the
                // bootstrap policy gives it, as in a real cluster.
                "--use-service-account-credentials=true",
                &format!("--service-account-private-key-file={}", p("sa.key")),
                &format!("--root-ca-file={}", p("ca.crt")),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ]),
        );
        let scheduler = component(
            "kube-scheduler",
            "kube-scheduler",
            strings(&[
                &format!("--kubeconfig={}", scheduler_kubeconfig.display()),
                &format!(
                    "--authentication-kubeconfig={}",
                    scheduler_kubeconfig.display()
                ),
                &format!(
                    "--authorization-kubeconfig={}",
                    scheduler_kubeconfig.display()
                ),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ]),
        );
        let mut me = Self {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            pki,
            api,
            kubeconfig,
            etcd,
            apiserver,
            controllers,
            scheduler,
        };
        me.etcd.start()?;
        me.start_apiserver()?;
        me.controllers.start()?;
        me.scheduler.start()?;
        Ok(me)
    }

    /// Starts the API server (again) and waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<(), ClusterError> {
        self.apiserver.start()?;
        self.wait_ready(Duration::from_secs(90))
    }

    /// Stops the API server: clients see connections refused until it is started again.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop();
    }

    /// Restarts etcd under the running API server, keeping its data.
    pub fn restart_etcd(&mut self) -> Result<(), ClusterError> {
        self.etcd.stop();
        self.etcd.start()?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// Polls the API server's `/readyz` with `kubectl` until it answers `ok`; any component
    /// that exited meanwhile fails it with its log.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            self.etcd.check_running()?;
            self.apiserver.check_running()?;
            let out = self
                .kubectl(&["get", "--raw", "/readyz"])
                .output()
                .map_err(|source| ClusterError::Spawn {
                    program: "kubectl".into(),
                    source,
                })?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(ClusterError::NotReady {
                    what: "kube-apiserver /readyz".into(),
                    after: limit,
                    detail: format!(
                        "{}\n--- kube-apiserver log ---\n{}",
                        String::from_utf8_lossy(&out.stderr),
                        tail(&self.apiserver.log, 30)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Fails when a component exited (with its log), for tests to call while they wait.
    pub fn check_running(&mut self) -> Result<(), ClusterError> {
        self.etcd.check_running()?;
        self.apiserver.check_running()?;
        self.controllers.check_running()?;
        self.scheduler.check_running()
    }

    /// `kubectl` with the administrator's kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args);
        c
    }

    /// `helm` with the administrator's kubeconfig and its caches inside the cluster's
    /// directory, so a run leaves nothing in the user's helm configuration.
    pub fn helm(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("helm"));
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        c
    }

    /// The last lines of every component's log, for a failing test's message.
    pub fn logs(&self) -> String {
        [
            &self.etcd,
            &self.apiserver,
            &self.controllers,
            &self.scheduler,
        ]
        .iter()
        .map(|c| format!("--- {} ---\n{}", c.name, tail(&c.log, 20)))
        .collect::<Vec<_>>()
        .join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.scheduler.stop();
        self.controllers.stop();
        self.apiserver.stop();
        self.etcd.stop();
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A loopback port nothing listens on now (the kernel's pick for port 0).
fn free_port() -> Result<u16, ClusterError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::io("127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClusterError::io("127.0.0.1:0", e))?
        .port();
    Ok(port)
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
