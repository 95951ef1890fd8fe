//! A real node: Kubernetes' own kubelet with containerd and runc, running the pods bound to
//! it in real containers from OCI images imported with `ctr images import` (no registry).
//!
//! ```text
//!  root namespace                         the lab's middleman namespace (the "node")
//!  ──────────────                         ───────────────────────────────────────────
//!  kube-apiserver 127.0.0.1:P ◀── forwarder on 10.0.0.1:443 (the `kubernetes` Service)
//!                                         ▲ kubelet and pods
//!                                         kubelet ─unix socket─▶ containerd ─▶ shim ─▶ runc
//!  10.250.N.1/30 ◀──────────── veth ────────────▶ 10.250.N.2/30 (node IP; probes)
//! ```
//!
//! The kubelet and containerd run inside the middleman's network namespace (entered with
//! `nsenter --net`, keeping the host's mount namespace, which both must share), so a
//! hostNetwork pod's container shares that namespace: the agent programs the node's
//! interfaces from inside its container, with the DaemonSet's real securityContext. No
//! kube-proxy runs, so the `kubernetes` Service's ClusterIP is an address on the node's
//! loopback with a forwarder to the API server, which the kubelet uses too.
//!
//! This machine mounts cgroup v1: the kubelet runs with `failCgroupV1: false` and the
//! cgroupfs driver. The kubelet sets the kernel tunables it wants (`vm.overcommit_memory`,
//! `kernel.panic`, `kernel.panic_on_oops`); they are restored when the node stops.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ClusterError;
use super::kubelet::netns;

/// The `kubernetes` Service's address (`--service-cluster-ip-range=10.0.0.0/24`), which
/// the API server's certificate names.
const SERVICE_IP: &str = "10.0.0.1";
/// Where runc and the CNI plugins come from: Debian's packages.
const RUNC: &str = "/usr/sbin/runc";
const CNI_BIN: &str = "/usr/lib/cni";
/// The kernel tunables the kubelet changes on start, restored on stop.
const TUNABLES: [&str; 4] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// One OCI archive to import, and the name containerd gives its image.
#[derive(Debug, Clone)]
pub struct Archive {
    pub path: PathBuf,
    /// The repository, e.g. `docker.io/mirrornet/mirrornet-agent`; the archive's tag follows.
    pub repository: String,
}

/// What a real node is made of.
#[derive(Debug, Clone)]
pub struct RealNodeSpec {
    pub name: String,
    /// The network namespace the node's pods with hostNetwork share.
    pub netns: String,
    /// Which /30 of 10.250.0.0/16 links it to the root namespace (one per node).
    pub index: u8,
    pub root: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// `key=value:Effect` taints it registers with.
    pub taints: Vec<String>,
    /// The images to import; the first one named `pause` is the sandbox image.
    pub images: Vec<Archive>,
    pub sandbox_image: String,
}

/// A running kubelet and containerd; both stop, with every container, on drop.
pub struct RealNode {
    spec: RealNodeSpec,
    kubelet: Option<Child>,
    containerd: Option<Child>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
    ctr: PathBuf,
    state: PathBuf,
    host_veth: String,
    tunables: Vec<(String, String)>,
}

impl std::fmt::Debug for RealNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealNode")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

fn io_err(what: impl AsRef<Path>) -> impl FnOnce(io::Error) -> ClusterError {
    move |e| ClusterError::io(what, e)
}

fn run(program: &Path, args: &[&str]) -> Result<String, ClusterError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(ClusterError::Failed {
            command: format!("{} {}", program.display(), args.join(" ")),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn(mut command: Command, log: &Path) -> Result<Child, ClusterError> {
    let file = fs::File::create(log).map_err(io_err(log))?;
    let err = file.try_clone().map_err(io_err(log))?;
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            program: format!("{command:?}"),
            source,
        })
}

fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("free port"))?;
    Ok(l.local_addr().map_err(io_err("free port"))?.port())
}

impl RealNode {
    /// Starts containerd in the node's namespace, imports the images, starts the kubelet
    /// against the API server at `api` with `kubeconfig`, and returns once both run (the
    /// caller waits for the Node to be Ready). `bin` holds kubelet, containerd, its shim, ctr.
    pub fn start(
        spec: RealNodeSpec,
        bin: &Path,
        kubeconfig: &Path,
        api: SocketAddr,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, ClusterError> {
        for program in ["kubelet", "containerd", "containerd-shim-runc-v2", "ctr"] {
            if !bin.join(program).is_file() {
                return Err(ClusterError::MissingBinary(bin.join(program)));
            }
        }
        for path in [RUNC, CNI_BIN] {
            if !Path::new(path).exists() {
                return Err(ClusterError::MissingBinary(path.into()));
            }
        }
        let root = spec.root.clone();
        fs::create_dir_all(root.join("cni")).map_err(io_err(&root))?;
        // Socket paths must stay short (sun_path is 108 bytes): state lives under /run.
        let state = PathBuf::from(format!(
            "/run/mn-node-{}-{}",
            spec.index,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state).map_err(io_err(&state))?;
        let socket = state.join("containerd.sock");
        let tunables = TUNABLES
            .iter()
            .filter_map(|t| {
                let v = fs::read_to_string(Path::new("/proc/sys").join(t)).ok()?;
                Some((t.to_string(), v.trim().to_owned()))
            })
            .collect();
        let host_veth = format!("mnk{}-{}", spec.index, std::process::id() % 100000);
        let mut node = Self {
            kubelet: None,
            containerd: None,
            forwarder: None,
            ctr: bin.join("ctr"),
            socket: socket.clone(),
            state: state.clone(),
            host_veth: host_veth.clone(),
            tunables,
            spec,
        };
        node.link(&host_veth)?;
        node.forwarder = Some(node.forward(api, runtime)?);
        node.start_containerd(bin)?;
        for image in node.spec.images.clone() {
            node.ctr(&[
                "images",
                "import",
                "--base-name",
                &image.repository,
                image.path.to_str().unwrap_or_default(),
            ])?;
        }
        node.start_kubelet(bin, kubeconfig, api)?;
        Ok(node)
    }

    /// The node's IP: its end of the veth to the root namespace.
    pub fn ip(&self) -> String {
        format!("10.250.{}.2", self.spec.index)
    }

    fn link(&self, host_veth: &str) -> Result<(), ClusterError> {
        let ip = Path::new("ip");
        let ns = &self.spec.netns;
        let peer = format!("{host_veth}n");
        let _ = run(ip, &["link", "del", host_veth]);
        run(
            ip,
            &[
                "link", "add", host_veth, "type", "veth", "peer", "name", &peer, "netns", ns,
            ],
        )?;
        let i = self.spec.index;
        run(
            ip,
            &["addr", "add", &format!("10.250.{i}.1/30"), "dev", host_veth],
        )?;
        run(ip, &["link", "set", host_veth, "up"])?;
        run(
            ip,
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.250.{i}.2/30"),
                "dev",
                &peer,
            ],
        )?;
        run(ip, &["-n", ns, "link", "set", &peer, "up"])?;
        run(ip, &["-n", ns, "link", "set", "lo", "up"])?;
        run(
            ip,
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{SERVICE_IP}/32"),
                "dev",
                "lo",
            ],
        )?;
        Ok(())
    }

    /// The `kubernetes` Service: a listener on its ClusterIP inside the node's namespace.
    fn forward(
        &self,
        api: SocketAddr,
        runtime: &tokio::runtime::Handle,
    ) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
        let listener = netns::run_in(&self.spec.netns, || {
            let l = TcpListener::bind(format!("{SERVICE_IP}:443"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(io_err("the kubernetes Service forwarder"))?;
        let _guard = runtime.enter();
        netns::forward(listener, api).map_err(io_err("the kubernetes Service forwarder"))
    }

    fn start_containerd(&mut self, bin: &Path) -> Result<(), ClusterError> {
        let root = &self.spec.root;
        let config = root.join("containerd.toml");
        let cni = root.join("cni");
        let conflist = format!(
            r#"{{"cniVersion": "1.0.0", "name": "mn-node", "plugins": [{{"type": "bridge",
"bridge": "mnbr{i}", "isDefaultGateway": true, "ipam": {{"type": "host-local",
"dataDir": "{ipam}", "ranges": [[{{"subnet": "10.251.{i}.0/24"}}]]}}}}]}}"#,
            i = self.spec.index,
            ipam = root.join("cni-ipam").display()
        );
        fs::write(cni.join("10-mn-node.conflist"), conflist).map_err(io_err(&cni))?;
        let runc = self.runc()?;
        let toml = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox}"
[plugins.'io.containerd.cri.v1.runtime']
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
"#,
            root = root.join("containerd").display(),
            state = self.state.join("state").display(),
            socket = self.socket.display(),
            sandbox = self.spec.sandbox_image,
            cni_bin = CNI_BIN,
            cni = cni.display(),
            runc = runc.display(),
            runc_root = self.state.join("runc").display(),
        );
        fs::write(&config, toml).map_err(io_err(&config))?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.spec.netns))
            .arg("--")
            .arg(bin.join("containerd"))
            .arg("--config")
            .arg(&config)
            .env("PATH", path_with(bin));
        self.containerd = Some(spawn(command, &root.join("containerd.log"))?);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.containerd.as_mut().and_then(|c| c.try_wait().ok()?) {
                return Err(ClusterError::Exited {
                    component: "containerd",
                    status: status.to_string(),
                    log: super::control_plane::tail(&root.join("containerd.log"), 30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(ClusterError::NotReady {
            what: "containerd".into(),
            after: started.elapsed(),
            detail: super::control_plane::tail(&root.join("containerd.log"), 30),
        })
    }

    /// The runc containerd runs: Debian's, behind a wrapper where this machine withholds
    /// CAP_SYS_RESOURCE even from root. Without it no process may lower an `oom_score_adj`
    /// below 0, and kubelet asks -998 for every pod sandbox and -997 for node-critical pods
    /// (the agent): runc's nsexec then dies writing it ("failed to update
    /// /proc/self/oom_score_adj: Permission denied", reported to kubelet as "can't get final
    /// child's PID from pipe: EOF"). The wrapper raises a negative score to 0 in the bundle's
    /// config before runc reads it; nothing else changes.
    fn runc(&self) -> Result<PathBuf, ClusterError> {
        const CAP_SYS_RESOURCE: u32 = 24;
        let status =
            fs::read_to_string("/proc/self/status").map_err(io_err("/proc/self/status"))?;
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        if effective & (1 << CAP_SYS_RESOURCE) != 0 {
            return Ok(RUNC.into());
        }
        let wrapper = self.spec.root.join("runc");
        let script = format!(
            "#!/bin/sh\n\
             # CAP_SYS_RESOURCE is withheld here: a negative oom_score_adj cannot be set.\n\
             prev=\n\
             for a in \"$@\"; do\n\
             \x20 if [ \"$prev\" = --bundle ]; then\n\
             \x20   sed -i 's/\"oomScoreAdj\":-[0-9]*/\"oomScoreAdj\":0/' \"$a/config.json\"\n\
             \x20 fi\n\
             \x20 prev=$a\n\
             done\n\
             exec {RUNC} \"$@\"\n"
        );
        fs::write(&wrapper, script).map_err(io_err(&wrapper))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&wrapper))?;
        Ok(wrapper)
    }

    fn ctr(&self, args: &[&str]) -> Result<String, ClusterError> {
        let mut all = vec![
            "--address",
            self.socket.to_str().unwrap_or_default(),
            "-n",
            "k8s.io",
        ];
        all.extend_from_slice(args);
        run(&self.ctr, &all)
    }

    fn start_kubelet(
        &mut self,
        bin: &Path,
        kubeconfig: &Path,
        api: SocketAddr,
    ) -> Result<(), ClusterError> {
        let root = &self.spec.root;
        // The kubelet lives in the node's namespace with its containers (so the node IP it
        // validates and the probes it sends are the node's): it reaches the API server as
        // the pods do, through the `kubernetes` Service's address.
        let text = fs::read_to_string(kubeconfig).map_err(io_err(kubeconfig))?;
        let kubeconfig = root.join("kubelet.kubeconfig");
        fs::write(
            &kubeconfig,
            text.replace(
                &format!("https://{api}"),
                &format!("https://{SERVICE_IP}:443"),
            ),
        )
        .map_err(io_err(&kubeconfig))?;
        let config = root.join("kubelet.yaml");
        let taints: String = self
            .spec
            .taints
            .iter()
            .map(|t| {
                let (kv, effect) = t.rsplit_once(':').unwrap_or((t, "NoSchedule"));
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                format!("  - {{key: \"{k}\", value: \"{v}\", effect: {effect}}}\n")
            })
            .collect();
        let yaml = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mounts cgroup v1, which kubelet 1.35 and later refuse unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
address: 10.250.{i}.2
port: {port}
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
failSwapOn: false
podLogsDir: {logs}
resolvConf: ""
# The test machine's disk is shared: never evict or collect images for space.
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
syncFrequency: 10s
fileCheckFrequency: 10s
registerWithTaints:
{taints}"#,
            socket = self.socket.display(),
            i = self.spec.index,
            port = free_port()?,
            logs = root.join("pod-logs").display(),
        );
        fs::write(&config, yaml).map_err(io_err(&config))?;
        let labels: Vec<String> = self
            .spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.spec.netns))
            .arg("--")
            .arg(bin.join("kubelet"))
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.spec.name))
            .arg(format!("--node-ip={}", self.ip()))
            .arg(format!("--root-dir={}", root.join("kubelet").display()))
            .arg(format!("--cert-dir={}", root.join("kubelet-pki").display()))
            .arg("--v=2")
            .env("PATH", path_with(bin));
        if !labels.is_empty() {
            command.arg(format!("--node-labels={}", labels.join(",")));
        }
        self.kubelet = Some(spawn(command, &root.join("kubelet.log"))?);
        Ok(())
    }

    /// The host PID of a running container's first process (`ctr tasks ls`), by the id the
    /// pod's status gives (`containerd://<id>`).
    pub fn task_pid(&self, container_id: &str) -> Option<u32> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let tasks = self.ctr(&["tasks", "ls"]).ok()?;
        tasks.lines().find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
    }

    /// Fails with the component's log when the kubelet or containerd has exited.
    pub fn check_running(&mut self) -> Result<(), ClusterError> {
        let root = self.spec.root.clone();
        for (component, child) in [
            ("kubelet", &mut self.kubelet),
            ("containerd", &mut self.containerd),
        ] {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok()?) {
                return Err(ClusterError::Exited {
                    component,
                    status: status.to_string(),
                    log: super::control_plane::tail(&root.join(format!("{component}.log")), 40),
                });
            }
        }
        Ok(())
    }

    /// The log a pod's container wrote (kubelet's `podLogsDir/<ns>_<pod>_<uid>/<c>/N.log`).
    pub fn pod_log(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> String {
        let dir = self
            .spec
            .root
            .join("pod-logs")
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(container);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap_or_default())
            .collect()
    }

    /// The last lines of the kubelet's and containerd's logs.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for c in ["kubelet", "containerd"] {
            let path = self.spec.root.join(format!("{c}.log"));
            text.push_str(&format!(
                "--- {c} of node {} ---\n{}\n",
                self.spec.name,
                super::control_plane::tail(&path, 40)
            ));
        }
        text
    }
}

/// Removes cgroup directory `dir` and every one below it (a cgroup goes with `rmdir`, its
/// control files with it).
fn remove_cgroups(dir: &Path) {
    if let Ok(children) = fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&child.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(d.into());
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // The kubelet first (it would restart what is stopped), then every container, then
        // containerd; the shims outlive containerd, so tasks are killed through it.
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        if let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"]) {
            for task in tasks.lines().filter(|t| !t.is_empty()) {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
            }
            std::thread::sleep(Duration::from_millis(500));
            for task in tasks.lines().filter(|t| !t.is_empty()) {
                let _ = self.ctr(&["tasks", "delete", "-f", task]);
                let _ = self.ctr(&["containers", "delete", task]);
            }
        }
        if let Ok(sandboxes) = self.ctr(&["containers", "ls", "-q"]) {
            for c in sandboxes.lines().filter(|t| !t.is_empty()) {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", c]);
                let _ = self.ctr(&["tasks", "delete", "-f", c]);
                let _ = self.ctr(&["containers", "delete", c]);
            }
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
        // Whatever the kubelet and containerd left mounted under the node's directories.
        for dir in [self.spec.root.clone(), self.state.clone()] {
            if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
                let mut points: Vec<&str> = mounts
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .filter(|p| Path::new(p).starts_with(&dir))
                    .collect();
                points.sort_by_key(|p| std::cmp::Reverse(p.len()));
                for p in points {
                    let _ = Command::new("umount").args(["-l", p]).status();
                }
            }
        }
        let _ = fs::remove_dir_all(&self.state);
        // The pods' network namespaces containerd made (`/run/netns/cni-<uuid>`): killing
        // the tasks does not run CNI's teardown. Ours hold an address of this node's range.
        let range = format!("10.251.{}.", self.spec.index);
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("cni-") {
                    continue;
                }
                let ours = run(Path::new("ip"), &["-n", &name, "-4", "addr"])
                    .is_ok_and(|a| a.contains(&range));
                if ours {
                    let _ = run(Path::new("ip"), &["netns", "del", &name]);
                }
            }
        }
        // The kubelet's cgroups (`kubepods` and the pods' below it), deepest first, once
        // their processes are gone.
        if let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") {
            for controller in controllers.flatten() {
                remove_cgroups(&controller.path().join("kubepods"));
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
        for (t, v) in &self.tunables {
            let _ = fs::write(Path::new("/proc/sys").join(t), v);
        }
    }
}
