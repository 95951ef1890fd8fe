//! The operator's configuration: command-line flags (each also settable from the
//! environment, as the Helm chart does) turned into checked values.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use mirrornet_api::allocation::{IdRanges, RangeFlags};

use crate::error::{Error, Result};

/// Flags of `mirrornet-operator`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "mirrornet-operator",
    version,
    about = "Runs the mirrornet operator: validates MirrorNetworks, allocates kernel ids, keeps the agent DaemonSet in shape"
)]
pub struct Args {
    /// Namespace of the operator; the agent DaemonSet and the leader Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mirrornet-system")]
    pub namespace: String,

    /// This replica's identity in the leader Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "mirrornet-operator")]
    pub identity: String,

    /// Container image of the agent DaemonSet.
    #[arg(
        long,
        env = "MIRRORNET_AGENT_IMAGE",
        default_value = "mirrornet/mirrornet-agent:0.1.0"
    )]
    pub agent_image: String,

    /// Service account the agents run as.
    #[arg(
        long,
        env = "MIRRORNET_AGENT_SERVICE_ACCOUNT",
        default_value = "mirrornet-agent"
    )]
    pub agent_service_account: String,

    /// CPU request of an agent container.
    #[arg(long, env = "MIRRORNET_AGENT_CPU_REQUEST", default_value = "20m")]
    pub agent_cpu_request: String,

    /// Memory request of an agent container.
    #[arg(long, env = "MIRRORNET_AGENT_MEMORY_REQUEST", default_value = "32Mi")]
    pub agent_memory_request: String,

    /// Memory limit of an agent container.
    #[arg(long, env = "MIRRORNET_AGENT_MEMORY_LIMIT", default_value = "128Mi")]
    pub agent_memory_limit: String,

    /// Port of the agents' `/metrics`, `/healthz` and `/readyz` on every node (host network).
    #[arg(long, env = "MIRRORNET_AGENT_METRICS_PORT", default_value_t = 9090)]
    pub agent_metrics_port: u16,

    /// Image pull policy of the agent pods (Always, IfNotPresent, Never).
    #[arg(
        long,
        env = "MIRRORNET_AGENT_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub agent_image_pull_policy: String,

    /// Priority class of the agent pods; empty for none.
    #[arg(long, env = "MIRRORNET_AGENT_PRIORITY_CLASS", default_value = "")]
    pub agent_priority_class: String,

    /// Tolerations of the agent pods, as a JSON list. The default tolerates every taint:
    /// gateway nodes are often tainted, and an agent must reach a node to tear down.
    #[arg(
        long,
        env = "MIRRORNET_AGENT_TOLERATIONS",
        default_value = r#"[{"operator":"Exists"}]"#
    )]
    pub agent_tolerations: String,

    /// `--table-range`, `--zone-range`, `--rule-priority-range`, `--mark-mask`: the same
    /// flags (and variables) as the agent's.
    #[command(flatten)]
    pub ranges: RangeFlags,

    /// How long a deleting network waits for a NotReady node before releasing it (seconds).
    #[arg(long, env = "MIRRORNET_NODE_GRACE_SECONDS", default_value_t = 300)]
    pub node_grace_seconds: u64,

    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[arg(
        long,
        env = "MIRRORNET_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_address: SocketAddr,

    /// Elect a leader on a Lease, so that several replicas can run and only one acts.
    #[arg(
        long,
        env = "MIRRORNET_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "MIRRORNET_LEASE_NAME",
        default_value = "mirrornet-operator"
    )]
    pub lease_name: String,

    /// Log format: `json` (one object per line) or `text`.
    #[arg(long, env = "MIRRORNET_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

/// What the agent DaemonSet is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub namespace: String,
    pub image: String,
    pub service_account: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub tolerations: Vec<Toleration>,
    pub metrics_port: u16,
    pub image_pull_policy: String,
    /// `None` for no priority class.
    pub priority_class: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            namespace: "mirrornet-system".into(),
            image: "mirrornet/mirrornet-agent:0.1.0".into(),
            service_account: "mirrornet-agent".into(),
            cpu_request: "20m".into(),
            memory_request: "32Mi".into(),
            memory_limit: "128Mi".into(),
            tolerations: vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }],
            metrics_port: 9090,
            image_pull_policy: "IfNotPresent".into(),
            priority_class: None,
        }
    }
}

/// Everything reconcile needs to know that is not in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub ranges: IdRanges,
    /// How long a NotReady node may hold up a deletion.
    pub node_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            agent: AgentConfig::default(),
            ranges: IdRanges::default(),
            node_grace: Duration::from_secs(300),
        }
    }
}

impl Args {
    /// Checks the flags and builds the configuration.
    pub fn config(&self) -> Result<Config> {
        let tolerations: Vec<Toleration> =
            serde_json::from_str(&self.agent_tolerations).map_err(|e| {
                Error::Config(format!(
                    "--agent-tolerations: not a JSON list of tolerations: {e}"
                ))
            })?;
        let ranges = self
            .ranges
            .ranges()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Config {
            agent: AgentConfig {
                namespace: self.namespace.clone(),
                image: self.agent_image.clone(),
                service_account: self.agent_service_account.clone(),
                cpu_request: self.agent_cpu_request.clone(),
                memory_request: self.agent_memory_request.clone(),
                memory_limit: self.agent_memory_limit.clone(),
                tolerations,
                metrics_port: self.agent_metrics_port,
                image_pull_policy: self.agent_image_pull_policy.clone(),
                priority_class: Some(self.agent_priority_class.clone()).filter(|p| !p.is_empty()),
            },
            ranges,
            node_grace: Duration::from_secs(self.node_grace_seconds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_make_a_valid_config() {
        let args = Args::parse_from(["mirrornet-operator"]);
        let config = args.config().unwrap();
        assert_eq!(config.ranges, IdRanges::default());
        assert_eq!(config.agent, AgentConfig::default());
        assert_eq!(config.node_grace, Duration::from_secs(300));
        assert!(args.leader_election);
    }

    #[test]
    fn bad_flags_are_named() {
        let table = [
            (vec!["--table-range", "5"], "--table-range"),
            (vec!["--zone-range", "1-70000"], "--zone-range"),
            (vec!["--mark-mask", "0x0f0f0000"], "--mark-mask"),
            (
                vec!["--rule-priority-range", "900-1200"],
                "--rule-priority-range",
            ),
            (vec!["--agent-tolerations", "{}"], "--agent-tolerations"),
        ];
        for (flags, expected) in table {
            let args = Args::parse_from(std::iter::once("mirrornet-operator").chain(flags.clone()));
            let err = args.config().unwrap_err().to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
    }

    #[test]
    fn leader_election_can_be_switched_off() {
        let args = Args::parse_from(["mirrornet-operator", "--leader-election", "false"]);
        assert!(!args.leader_election);
    }
}
