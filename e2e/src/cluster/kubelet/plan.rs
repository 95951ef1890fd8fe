//! What to run for a pod, decided from the Pod and the objects it references, without I/O:
//! command line, environment, volumes and their files, mounts, user and capabilities, probes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod, PodSpec,
    Probe, ResourceFieldSelector, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Images;

/// The IP every pod and node of the harness has: everything listens on loopback.
pub(super) const NODE_IP: &str = "127.0.0.1";
/// The node's allocatable resources, which `limits.*` fall back to when a container sets none.
pub(super) const ALLOCATABLE_CPU: &str = "4";
pub(super) const ALLOCATABLE_MEMORY: &str = "8Gi";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's and Docker's default capabilities of a container (setpriv's names).
const DEFAULT_CAPS: &str = "chown dac_override fsetid fowner mknod net_raw setgid setuid setfcap \
    setpcap net_bind_service sys_chroot kill audit_write";
/// Every capability Linux 5.9+ knows, what `add: [ALL]` and `privileged` grant.
const ALL_CAPS: &str = "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap \
    linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module \
    sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time \
    sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog \
    wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore";

/// Keys and values of a ConfigMap (`data` and `binaryData`) or a Secret (`data`).
pub(super) type Data = BTreeMap<String, Vec<u8>>;

/// The ConfigMaps and Secrets of the pod's namespace that it references and that exist.
#[derive(Debug, Default, Clone)]
pub(super) struct Refs {
    pub config_maps: BTreeMap<String, Data>,
    pub secrets: BTreeMap<String, Data>,
}

/// Why a pod's container cannot be started as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PlanError {
    #[error("the pod has no containers")]
    NoContainers,
    #[error("image {image:?} is none of the harness's images ({known})")]
    ImageNotKnown { image: String, known: String },
    #[error("command {command:?} names no binary of the harness's images")]
    CommandNotInImage { command: String },
    #[error("{kind} {name:?} not found")]
    MissingObject { kind: &'static str, name: String },
    #[error("key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("{what} is not supported by the process kubelet")]
    Unsupported { what: String },
    #[error("invalid quantity {0:?}")]
    BadQuantity(String),
    #[error("container has runAsNonRoot and would run as root (set runAsUser)")]
    RunsAsRoot,
}

impl PlanError {
    /// The container's `state.waiting.reason` while this holds.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::ImageNotKnown { .. } => "ImageNotKnown",
            _ => "CreateContainerConfigError",
        }
    }

    /// Whether fetching the referenced objects again may cure it.
    pub(super) fn retryable(&self) -> bool {
        matches!(self, Self::MissingObject { .. } | Self::MissingKey { .. })
    }
}

/// The first container of a pod, ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// workingDir, or `/`: the harness does not know the image's WORKDIR.
    pub working_dir: String,
    pub volumes: Vec<VolumePlan>,
    /// Sorted so that a mount never hides one made before it.
    pub mounts: Vec<MountPlan>,
    pub user: UserPlan,
    pub readiness: Option<ProbePlan>,
    pub liveness: Option<ProbePlan>,
    pub restart: RestartPolicy,
    /// terminationGracePeriodSeconds, capped at 10 s: the wait between SIGTERM and SIGKILL.
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub(super) fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VolumePlan {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum VolumeSource {
    /// A directory of the node (already resolved under the node's root).
    Host { path: PathBuf, create: bool },
    /// A directory of the pod holding these files (none for an emptyDir).
    Files(Vec<FilePlan>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FilePlan {
    pub path: String,
    pub mode: u32,
    pub content: FileContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FileContent {
    Bytes(Vec<u8>),
    /// A ServiceAccount token bound to the pod, from the TokenRequest API.
    Token {
        audience: Option<String>,
        expiration_seconds: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountPlan {
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct UserPlan {
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub groups: Vec<i64>,
    pub no_new_privs: bool,
    pub caps: BTreeSet<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ProbeAction {
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

/// What the plan is made from besides the pod.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context<'a> {
    pub node: &'a str,
    pub node_root: &'a Path,
    pub images: &'a Images,
    /// The port of the API forwarder in the pod's network namespace.
    pub api_port: u16,
}

/// Plans the pod's first container.
pub(super) fn plan(pod: &Pod, refs: &Refs, cx: Context<'_>) -> Result<ContainerPlan, PlanError> {
    let spec = pod.spec.as_ref().ok_or(PlanError::NoContainers)?;
    let container = spec.containers.first().ok_or(PlanError::NoContainers)?;
    let image = container.image.clone().unwrap_or_default();
    let env = container_env(pod, container, refs, cx)?;
    let (program, args) = command_line(container, cx.images, &env)?;
    let mut volumes = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        volumes.push(VolumePlan {
            name: volume.name.clone(),
            source: volume_source(pod, volume, refs, cx)?,
        });
    }
    let mut mounts: Vec<MountPlan> = (container.volume_mounts.iter().flatten())
        .map(|m| MountPlan {
            volume: m.name.clone(),
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        })
        .collect();
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    let probe = |p: &Option<Probe>| p.as_ref().map(|p| probe_plan(p, container)).transpose();
    Ok(ContainerPlan {
        name: container.name.clone(),
        image,
        program,
        args,
        env,
        working_dir: container
            .working_dir
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".into()),
        volumes,
        mounts,
        user: user_plan(spec, container)?,
        readiness: probe(&container.readiness_probe)?,
        liveness: probe(&container.liveness_probe)?,
        restart: match spec.restart_policy.as_deref() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        },
        grace: Duration::from_secs(
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .clamp(0, 10) as u64,
        ),
    })
}

/// The names of the ConfigMaps and Secrets the pod references: (config maps, secrets).
pub(super) fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for c in spec.containers.iter().take(1) {
        for from in c.env_from.iter().flatten() {
            cms.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for source in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            cms.extend(source.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(source.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    for v in spec.volumes.iter().flatten() {
        cms.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            cms.extend(p.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(p.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    (cms, secrets)
}

/// The repository of an image reference: without `@digest` and without `:tag` (a colon
/// before the last `/` is a registry's port).
pub(super) fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// The binary and its arguments. `command[0]` is a path inside the image: it must name, by
/// file name, the binary of one of the harness's images.
fn command_line(
    c: &Container,
    images: &Images,
    env: &[(String, String)],
) -> Result<(PathBuf, Vec<String>), PlanError> {
    let image = c.image.as_deref().unwrap_or_default();
    let entrypoint = images
        .get(repository(image))
        .ok_or_else(|| PlanError::ImageNotKnown {
            image: image.to_owned(),
            known: images.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let command = c.command.as_deref().unwrap_or_default();
    let (program, mut args) = match command.split_first() {
        None => (entrypoint.clone(), Vec::new()),
        Some((first, rest)) => {
            let first = expand(first, lookup);
            let name = Path::new(&first).file_name();
            let program = std::iter::once(entrypoint)
                .chain(images.values())
                .find(|bin| bin.file_name() == name)
                .ok_or(PlanError::CommandNotInImage {
                    command: first.clone(),
                })?;
            (
                program.clone(),
                rest.iter().map(|a| expand(a, lookup)).collect(),
            )
        }
    };
    args.extend(c.args.iter().flatten().map(|a| expand(a, lookup)));
    Ok((program, args))
}

/// Kubernetes' `$(VAR)` expansion: a defined `$(VAR)` is replaced, an undefined one kept as
/// written, `$$` is a literal `$`, any other `$` is kept.
pub(super) fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment, from an empty one, in kubelet's order: the harness's base
/// variables, `envFrom`, then `env` (each `value` expanded with the variables before it).
fn container_env(
    pod: &Pod,
    c: &Container,
    refs: &Refs,
    cx: Context<'_>,
) -> Result<Vec<(String, String)>, PlanError> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let hostname = if host_network {
        cx.node.to_owned()
    } else {
        name_of(pod)
    };
    let port = cx.api_port.to_string();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: &str, value: String| match env
        .iter_mut()
        .find(|(n, _)| n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_owned(), value)),
    };
    for (name, value) in [
        ("PATH", PATH),
        ("HOSTNAME", &hostname),
        ("KUBERNETES_SERVICE_HOST", NODE_IP),
        ("KUBERNETES_SERVICE_PORT", &port),
        ("KUBERNETES_SERVICE_PORT_HTTPS", &port),
    ] {
        set(&mut env, name, value.to_owned());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional, objects) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => ("ConfigMap", &r.name, r.optional, &refs.config_maps),
            (_, Some(r)) => ("Secret", &r.name, r.optional, &refs.secrets),
            _ => continue,
        };
        match objects.get(name) {
            Some(data) => {
                for (key, value) in data {
                    set(
                        &mut env,
                        &format!("{prefix}{key}"),
                        String::from_utf8_lossy(value).into(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(PlanError::MissingObject {
                    kind,
                    name: name.clone(),
                });
            }
        }
    }
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let selected = if let Some(f) = &from.field_ref {
                    Some(field_value(pod, f, cx.node)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_value(pod, c, r)?)
                } else if let Some(k) = &from.config_map_key_ref {
                    key_value("ConfigMap", &refs.config_maps, &k.name, &k.key, k.optional)?
                } else if let Some(k) = &from.secret_key_ref {
                    key_value("Secret", &refs.secrets, &k.name, &k.key, k.optional)?
                } else {
                    None
                };
                match selected {
                    Some(value) => value,
                    None => continue,
                }
            }
            (Some(value), None) => expand(value, |n| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
            }),
            (None, None) => String::new(),
        };
        set(&mut env, &var.name, value);
    }
    if !env.iter().any(|(n, _)| n == "HOME") {
        let uid = user_plan(pod.spec.as_ref().expect("checked"), c)
            .ok()
            .and_then(|u| u.uid);
        let home = if uid.unwrap_or(0) == 0 { "/root" } else { "/" };
        set(&mut env, "HOME", home.to_owned());
    }
    Ok(env)
}

fn key_value(
    kind: &'static str,
    objects: &BTreeMap<String, Data>,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, PlanError> {
    let found = objects.get(name).map(|data| data.get(key));
    match found {
        Some(Some(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        _ if optional == Some(true) => Ok(None),
        None => Err(PlanError::MissingObject {
            kind,
            name: name.to_owned(),
        }),
        Some(None) => Err(PlanError::MissingKey {
            kind,
            name: name.to_owned(),
            key: key.to_owned(),
        }),
    }
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// A downward API `fieldRef`, as kubelet renders it.
fn field_value(pod: &Pod, f: &ObjectFieldSelector, node: &str) -> Result<String, PlanError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = f.field_path.as_str();
    let map_entry = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let map_lines = |map: &Option<BTreeMap<String, String>>| {
        (map.iter().flatten())
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    let bracketed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    Ok(match path {
        "metadata.name" => name_of(pod),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(&meta.labels),
        "metadata.annotations" => map_lines(&meta.annotations),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.to_owned()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => NODE_IP.to_owned(),
        _ => {
            if let Some(key) = bracketed("metadata.labels") {
                map_entry(&meta.labels, key)
            } else if let Some(key) = bracketed("metadata.annotations") {
                map_entry(&meta.annotations, key)
            } else {
                return Err(PlanError::Unsupported {
                    what: format!("fieldRef {path}"),
                });
            }
        }
    })
}

/// A downward API `resourceFieldRef`, as kubelet renders it: the value divided by the divisor
/// (default 1) and rounded up, so cpu comes in whole cores and memory in bytes; an unset limit
/// is the node's allocatable.
fn resource_value(
    pod: &Pod,
    own: &Container,
    r: &ResourceFieldSelector,
) -> Result<String, PlanError> {
    let spec = pod.spec.as_ref().ok_or(PlanError::NoContainers)?;
    let container = match &r.container_name {
        Some(name) if !name.is_empty() => spec
            .containers
            .iter()
            .find(|c| &c.name == name)
            .unwrap_or(own),
        _ => own,
    };
    let resources = container.resources.as_ref();
    let unsupported = || PlanError::Unsupported {
        what: format!("resourceFieldRef {}", r.resource),
    };
    let (list, resource) = r.resource.split_once('.').ok_or_else(unsupported)?;
    let fallback = match resource {
        "cpu" => ALLOCATABLE_CPU,
        "memory" => ALLOCATABLE_MEMORY,
        _ => return Err(unsupported()),
    };
    let set = match list {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(unsupported()),
    };
    let value = match set.and_then(|s| s.get(resource)) {
        Some(q) => q.0.as_str(),
        None if list == "limits" => fallback,
        None => "0",
    };
    let divisor = r.divisor.as_ref().map_or("1", |d| d.0.as_str());
    let (value, divisor) = (nanos(value)?, nanos(divisor)?);
    if divisor <= 0 {
        return Err(PlanError::BadQuantity(
            r.divisor.as_ref().map(|d| d.0.clone()).unwrap_or_default(),
        ));
    }
    Ok(((value + divisor - 1).div_euclid(divisor)).to_string())
}

/// A Kubernetes quantity ("100m", "64Mi", "1.5", "2e3") in billionths, rounded up.
pub(super) fn nanos(quantity: &str) -> Result<i128, PlanError> {
    let bad = || PlanError::BadQuantity(quantity.to_owned());
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        s if s.starts_with(['e', 'E']) => (0, s[1..].parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let (negative, number) = match number.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad());
    }
    let digits: i128 = format!("{whole}{fraction}").parse().map_err(|_| bad())?;
    let exponent = decimal + 9 - fraction.len() as i32;
    let scaled = if exponent >= 0 {
        digits
            .checked_mul(10i128.checked_pow(exponent as u32).ok_or_else(bad)?)
            .ok_or_else(bad)?
    } else {
        let divisor = 10i128
            .checked_pow(exponent.unsigned_abs())
            .ok_or_else(bad)?;
        (digits + divisor - 1) / divisor
    };
    let value = scaled.checked_mul(1i128 << binary).ok_or_else(bad)?;
    Ok(if negative { -value } else { value })
}

fn volume_source(
    pod: &Pod,
    v: &Volume,
    refs: &Refs,
    cx: Context<'_>,
) -> Result<VolumeSource, PlanError> {
    let mut files = Vec::new();
    if let Some(h) = &v.host_path {
        let kind = h.type_.as_deref().unwrap_or_default();
        if !matches!(kind, "" | "Directory" | "DirectoryOrCreate") {
            return Err(PlanError::Unsupported {
                what: format!("hostPath type {kind}"),
            });
        }
        let path = cx.node_root.join(h.path.trim_start_matches('/'));
        return Ok(VolumeSource::Host {
            path,
            create: kind == "DirectoryOrCreate",
        });
    } else if v.empty_dir.is_some() {
    } else if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(0o644);
        files = keys_to_files(
            "ConfigMap",
            &refs.config_maps,
            &c.name,
            &c.items,
            c.optional,
            mode,
        )?;
    } else if let Some(s) = &v.secret {
        let mode = s.default_mode.unwrap_or(0o644);
        let name = s.secret_name.clone().unwrap_or_default();
        files = keys_to_files("Secret", &refs.secrets, &name, &s.items, s.optional, mode)?;
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644);
        files = downward_files(pod, d.items.as_deref().unwrap_or_default(), mode, cx.node)?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644);
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                files.push(FilePlan {
                    path: t.path.clone(),
                    mode: mode as u32,
                    content: FileContent::Token {
                        audience: t.audience.clone().filter(|a| !a.is_empty()),
                        expiration_seconds: t.expiration_seconds.unwrap_or(3600).max(600),
                    },
                });
            } else if let Some(c) = &source.config_map {
                files.extend(keys_to_files(
                    "ConfigMap",
                    &refs.config_maps,
                    &c.name,
                    &c.items,
                    c.optional,
                    mode,
                )?);
            } else if let Some(s) = &source.secret {
                files.extend(keys_to_files(
                    "Secret",
                    &refs.secrets,
                    &s.name,
                    &s.items,
                    s.optional,
                    mode,
                )?);
            } else if let Some(d) = &source.downward_api {
                files.extend(downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    cx.node,
                )?);
            } else {
                return Err(PlanError::Unsupported {
                    what: format!("a source of projected volume {}", v.name),
                });
            }
        }
    } else {
        return Err(PlanError::Unsupported {
            what: format!("the kind of volume {}", v.name),
        });
    }
    Ok(VolumeSource::Files(files))
}

fn keys_to_files(
    kind: &'static str,
    objects: &BTreeMap<String, Data>,
    name: &str,
    items: &Option<Vec<KeyToPath>>,
    optional: Option<bool>,
    mode: i32,
) -> Result<Vec<FilePlan>, PlanError> {
    let Some(data) = objects.get(name) else {
        return match optional {
            Some(true) => Ok(Vec::new()),
            _ => Err(PlanError::MissingObject {
                kind,
                name: name.to_owned(),
            }),
        };
    };
    let file = |path: &str, mode: i32, bytes: &Vec<u8>| FilePlan {
        path: path.to_owned(),
        mode: mode as u32,
        content: FileContent::Bytes(bytes.clone()),
    };
    let Some(items) = items else {
        return Ok(data
            .iter()
            .map(|(key, bytes)| file(key, mode, bytes))
            .collect());
    };
    let mut files = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(bytes) => files.push(file(&item.path, item.mode.unwrap_or(mode), bytes)),
            None if optional == Some(true) => {}
            None => {
                let (name, key) = (name.to_owned(), item.key.clone());
                return Err(PlanError::MissingKey { kind, name, key });
            }
        }
    }
    Ok(files)
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
    node: &str,
) -> Result<Vec<FilePlan>, PlanError> {
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or(PlanError::NoContainers)?;
    let mut files = Vec::new();
    for item in items {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), _) => field_value(pod, f, node)?,
            (_, Some(r)) => resource_value(pod, container, r)?,
            _ => continue,
        };
        files.push(FilePlan {
            path: item.path.clone(),
            mode: item.mode.unwrap_or(mode) as u32,
            content: FileContent::Bytes(value.into_bytes()),
        });
    }
    Ok(files)
}

/// The process's identity: the container's securityContext over the pod's, capabilities as
/// containerd computes them (add ALL, drop ALL, then the named adds, then the named drops).
fn user_plan(spec: &PodSpec, c: &Container) -> Result<UserPlan, PlanError> {
    let pod = spec.security_context.clone().unwrap_or_default();
    let own = c.security_context.clone().unwrap_or_default();
    let uid = own.run_as_user.or(pod.run_as_user);
    if own.run_as_non_root.or(pod.run_as_non_root) == Some(true) && uid.unwrap_or(0) == 0 {
        return Err(PlanError::RunsAsRoot);
    }
    let mut groups: Vec<i64> = pod
        .fs_group
        .into_iter()
        .chain(pod.supplemental_groups.into_iter().flatten())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let caps = if own.privileged == Some(true) {
        ALL_CAPS.split_whitespace().collect()
    } else {
        capabilities(own.capabilities.as_ref())
    };
    Ok(UserPlan {
        uid,
        gid: own.run_as_group.or(pod.run_as_group),
        groups,
        no_new_privs: own.allow_privilege_escalation == Some(false),
        caps,
    })
}

pub(super) fn capabilities(caps: Option<&Capabilities>) -> BTreeSet<&'static str> {
    let normalize = |name: &str| {
        let lower = name.to_ascii_lowercase();
        let lower = lower.strip_prefix("cap_").unwrap_or(&lower).to_owned();
        ALL_CAPS.split_whitespace().find(|c| *c == lower)
    };
    let add = caps.and_then(|c| c.add.clone()).unwrap_or_default();
    let drop = caps.and_then(|c| c.drop.clone()).unwrap_or_default();
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    let mut set: BTreeSet<&'static str> = DEFAULT_CAPS.split_whitespace().collect();
    if add.iter().any(is_all) {
        set.extend(ALL_CAPS.split_whitespace());
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    set.extend(add.iter().filter_map(|n| normalize(n)));
    for name in drop.iter().filter_map(|n| normalize(n)) {
        set.remove(name);
    }
    set
}

/// util-linux `setpriv` options that give the process `user`'s identity. As with containerd,
/// the capabilities are the bounding set and nothing is inheritable or ambient: root gets them
/// all at exec, any other user none (Kubernetes has no ambient capabilities).
pub(super) fn setpriv_args(user: &UserPlan) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(gid) = user.gid {
        args.push(format!("--regid={gid}"));
    }
    if let Some(uid) = user.uid {
        args.push(format!("--reuid={uid}"));
    }
    if user.uid.is_some() || user.gid.is_some() {
        if user.groups.is_empty() {
            args.push("--clear-groups".into());
        } else {
            let groups: Vec<String> = user.groups.iter().map(i64::to_string).collect();
            args.push(format!("--groups={}", groups.join(",")));
        }
    }
    let bounding: String = user.caps.iter().map(|c| format!(",+{c}")).collect();
    args.push("--inh-caps=-all".into());
    args.push("--ambient-caps=-all".into());
    args.push(format!("--bounding-set=-all{bounding}"));
    if user.no_new_privs {
        args.push("--no-new-privs".into());
    }
    args
}

fn probe_plan(p: &Probe, c: &Container) -> Result<ProbePlan, PlanError> {
    let port = |port: &IntOrString| -> Result<u16, PlanError> {
        let number = match port {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => (c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .or_else(|| name.parse().ok()),
        };
        number
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| PlanError::Unsupported {
                what: format!("probe port {port:?} of container {}", c.name),
            })
    };
    let host = |h: &Option<String>| {
        h.clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| NODE_IP.into())
    };
    let action = if let Some(h) = &p.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err(PlanError::Unsupported {
                what: "an HTTPS probe".into(),
            });
        }
        ProbeAction::Http {
            host: host(&h.host),
            port: port(&h.port)?,
            path: h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: (h.http_headers.iter().flatten())
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::Tcp {
            host: host(&t.host),
            port: port(&t.port)?,
        }
    } else if let Some(e) = &p.exec {
        ProbeAction::Exec {
            command: e.command.clone().unwrap_or_default(),
        }
    } else {
        return Err(PlanError::Unsupported {
            what: "a gRPC probe".into(),
        });
    };
    let seconds =
        |s: Option<i32>, default: i32| Duration::from_secs(s.unwrap_or(default).max(0) as u64);
    Ok(ProbePlan {
        action,
        initial_delay: seconds(p.initial_delay_seconds, 0),
        period: seconds(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: seconds(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "apps", "uid": "1234-abcd",
                         "labels": {"app": "web"}},
            "spec": spec,
        }))
        .expect("a valid pod")
    }

    fn images() -> Images {
        Images::from([
            (
                "mirrornet/mirrornet-agent".into(),
                PathBuf::from("/t/mirrornet-agent"),
            ),
            (
                "mirrornet/mirrornet-operator".into(),
                PathBuf::from("/t/mirrornet-operator"),
            ),
        ])
    }

    fn plan_of(spec: serde_json::Value, refs: &Refs) -> Result<ContainerPlan, PlanError> {
        let images = images();
        let cx = Context {
            node: "n1",
            node_root: Path::new("/nodes/n1"),
            images: &images,
            api_port: 4321,
        };
        plan(&pod(spec), refs, cx)
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = BTreeMap::from([("A", "x"), ("B", "y")]);
        let lookup = |n: &str| vars.get(n).copied();
        for (input, expected) in [
            ("$(A)-$(B)", "x-y"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$A $", "$A $"),
            ("a$(A", "a$(A"),
            ("$()", "$()"),
            ("$$$(A)", "$x"),
        ] {
            assert_eq!(expand(input, lookup), expected, "{input}");
        }
    }

    #[test]
    fn image_repository_drops_tag_and_digest_but_not_a_registry_port() {
        assert_eq!(
            repository("mirrornet/mirrornet-agent:0.1.0"),
            "mirrornet/mirrornet-agent"
        );
        assert_eq!(repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(repository("reg:5000/a/b:v1@sha256:00"), "reg:5000/a/b");
        assert_eq!(repository("busybox"), "busybox");
    }

    #[test]
    fn quantities_parse_to_billionths() {
        assert_eq!(nanos("100m"), Ok(100_000_000));
        assert_eq!(nanos("1.5"), Ok(1_500_000_000));
        assert_eq!(nanos("64Mi"), Ok(64 << 20).map(|v: i128| v * 1_000_000_000));
        assert_eq!(nanos("2e3"), Ok(2_000_000_000_000));
        assert_eq!(nanos("1k"), nanos("1000"));
        assert!(nanos("12x").is_err() && nanos("").is_err());
    }

    #[test]
    fn capabilities_are_computed_as_containerd_does() {
        let caps = |add: &[&str], drop: &[&str]| {
            let strings = |s: &[&str]| Some(s.iter().map(|s| s.to_string()).collect());
            capabilities(Some(&Capabilities {
                add: strings(add),
                drop: strings(drop),
            }))
        };
        assert_eq!(
            caps(&["NET_ADMIN"], &["ALL"]),
            BTreeSet::from(["net_admin"])
        );
        assert_eq!(caps(&[], &[]).len(), 14);
        let fewer = caps(&["CAP_NET_ADMIN"], &["NET_RAW", "kill"]);
        assert!(
            fewer.contains("net_admin") && !fewer.contains("net_raw") && !fewer.contains("kill")
        );
        assert_eq!(caps(&["ALL"], &["CHOWN"]).len(), 40);
        assert_eq!(caps(&["ALL"], &["ALL"]), BTreeSet::new());
    }

    #[test]
    fn setpriv_gets_identity_and_bounding_set() {
        let user = UserPlan {
            uid: Some(65532),
            gid: Some(65532),
            groups: vec![],
            no_new_privs: true,
            caps: BTreeSet::new(),
        };
        assert_eq!(
            setpriv_args(&user),
            [
                "--regid=65532",
                "--reuid=65532",
                "--clear-groups",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs"
            ]
        );
        let root = UserPlan {
            caps: BTreeSet::from(["net_admin", "kill"]),
            ..UserPlan::default()
        };
        assert_eq!(
            setpriv_args(&root),
            [
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all,+kill,+net_admin"
            ]
        );
    }

    #[test]
    fn the_agent_pod_plans_as_the_operator_writes_it() {
        let plan = plan_of(
            json!({
                "hostNetwork": true,
                "securityContext": {},
                "volumes": [{"name": "state", "hostPath": {"path": "/run/mirrornet", "type": "DirectoryOrCreate"}}],
                "containers": [{
                    "name": "agent", "image": "mirrornet/mirrornet-agent:0.1.0",
                    "args": ["run", "--node", "$(NODE_NAME)"],
                    "ports": [{"name": "metrics", "containerPort": 9102}],
                    "env": [
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                        {"name": "GREETING", "value": "hi $(APP) on $(HOSTNAME)"},
                    ],
                    "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
                    "volumeMounts": [{"name": "state", "mountPath": "/run/mirrornet"}],
                    "securityContext": {"allowPrivilegeEscalation": false,
                                        "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}},
                }],
            }),
            &Refs::default(),
        )
        .expect("a plan");
        assert_eq!(plan.program, PathBuf::from("/t/mirrornet-agent"));
        assert_eq!(plan.args, ["run", "--node", "n1"]);
        let env: BTreeMap<_, _> = plan.env.iter().cloned().collect();
        assert_eq!(env["HOSTNAME"], "n1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "4321");
        assert_eq!(env["MEM"], "128");
        assert_eq!(env["CPU"], "1");
        assert_eq!(env["GREETING"], "hi web on n1");
        assert_eq!(env["HOME"], "/root");
        assert_eq!(
            plan.volumes[0].source,
            VolumeSource::Host {
                path: "/nodes/n1/run/mirrornet".into(),
                create: true
            }
        );
        assert_eq!(plan.user.caps, BTreeSet::from(["net_admin"]));
        let probe = plan.readiness.expect("a readiness probe");
        assert_eq!(
            probe.action,
            ProbeAction::Http {
                host: NODE_IP.into(),
                port: 9102,
                path: "/readyz".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            (probe.period, probe.failure_threshold),
            (Duration::from_secs(5), 3)
        );
    }

    #[test]
    fn the_service_account_volume_needs_the_root_ca() {
        let spec = json!({
            "volumes": [{"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]}}],
            "containers": [{"name": "op", "image": "mirrornet/mirrornet-operator",
                            "command": ["/usr/local/bin/mirrornet-agent"], "args": ["x"]}],
        });
        let missing = plan_of(spec.clone(), &Refs::default()).unwrap_err();
        assert!(missing.retryable(), "{missing}");
        let mut refs = Refs::default();
        refs.config_maps.insert(
            "kube-root-ca.crt".into(),
            Data::from([("ca.crt".into(), b"PEM".to_vec())]),
        );
        let plan = plan_of(spec, &refs).expect("a plan");
        assert_eq!(
            (plan.program.to_str(), plan.args.as_slice()),
            (Some("/t/mirrornet-agent"), &["x".to_string()][..])
        );
        let VolumeSource::Files(files) = &plan.volumes[0].source else {
            panic!("files")
        };
        let paths: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        assert_eq!(
            paths,
            [("token", 0o644), ("ca.crt", 0o644), ("namespace", 0o644)]
        );
        assert_eq!(
            files[0].content,
            FileContent::Token {
                audience: None,
                expiration_seconds: 3607
            }
        );
        assert_eq!(files[2].content, FileContent::Bytes(b"apps".to_vec()));
    }

    #[test]
    fn unknown_images_and_root_with_run_as_non_root_are_refused() {
        let err = plan_of(
            json!({"containers": [{"name": "c", "image": "nginx:1"}]}),
            &Refs::default(),
        );
        assert_eq!(err.map_err(|e| e.reason()), Err("ImageNotKnown"));
        let err = plan_of(
            json!({"securityContext": {"runAsNonRoot": true},
                   "containers": [{"name": "c", "image": "mirrornet/mirrornet-agent"}]}),
            &Refs::default(),
        );
        assert_eq!(err, Err(PlanError::RunsAsRoot));
    }
}
