//! A real Kubernetes cluster for the scenario tests, without Docker: the control plane built
//! from Kubernetes' Go modules runs on loopback ([`control_plane`]), nodes are the labs'
//! middleman network namespaces, each kept by a [`kubelet::ProcessKubelet`] that runs the pods
//! bound to it as processes of this tree's binaries. The chart is installed with the real
//! `helm`, objects applied with the real `kubectl`, so RBAC, admission, CEL validation and
//! the controllers are the API server's own, not a mock's idea of them.

pub mod control_plane;
pub mod kubelet;
pub mod pki;
pub mod real_node;
pub mod test_cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can go wrong while standing up or driving the test cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed:\n{output}")]
    Failed { command: String, output: String },
    #[error("{0} is missing: build the control plane with e2e/k8s/build.sh")]
    MissingBinary(PathBuf),
    #[error("{component} exited ({status}); its log ends:\n{log}")]
    Exited {
        component: &'static str,
        status: String,
        log: String,
    },
    #[error("{what} not ready after {after:?}: {detail}")]
    NotReady {
        what: String,
        after: Duration,
        detail: String,
    },
    /// What a scenario observed where it wanted something else.
    #[error("{0}")]
    Observed(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Kubelet(#[from] kubelet::KubeletError),
}

impl ClusterError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// The Kubernetes release the control plane is built from (`e2e/k8s/versions.env`), which
/// the process kubelets report as their own, as a node of that release would.
pub fn kubernetes_version() -> &'static str {
    include_str!("../../k8s/versions.env")
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES="))
        .map(str::trim)
        .expect("e2e/k8s/versions.env names KUBERNETES")
}

/// The directory holding etcd, the Kubernetes components, kubectl and helm: the one
/// `MIRRORNET_K8S_BIN` names (`cargo xtask test` sets it), or what `e2e/k8s/build.sh` prints,
/// which builds them on first use and afterwards only finds them in its cache.
pub fn binaries() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("MIRRORNET_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/build.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: script.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(ClusterError::Failed {
            command: script.display().to_string(),
            output: String::from_utf8_lossy(&output.stdout).into_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let dir = text.lines().last().unwrap_or_default().trim();
    Ok(PathBuf::from(dir))
}
