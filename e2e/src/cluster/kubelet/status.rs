//! A pod's status as kubelet reports it, computed from what the kubelet observed of its
//! container: phase, conditions, and the container's state, last state and restart count.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::plan::NODE_IP;

/// What the container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Run {
    Waiting { reason: String, message: String },
    Running { pid: u32, since: Time },
    Terminated(Exit),
}

/// How a run of the container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Exit {
    pub pid: u32,
    /// As a shell reports it: 128 + the signal for a process killed by one.
    pub code: i32,
    pub signal: Option<i32>,
    pub started: Time,
    pub finished: Time,
}

/// Everything the status is computed from; equal values give equal statuses, so an unchanged
/// one is never written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observed {
    pub start_time: Time,
    pub container: String,
    pub image: String,
    pub image_id: String,
    pub run: Run,
    pub last: Option<Exit>,
    pub restarts: i32,
    pub ready: bool,
    /// When `ready` last flipped (or the pod started).
    pub ready_changed: Time,
    /// No restart will follow the current state (restartPolicy says so).
    pub done: bool,
}

/// The status subresource's patch: a Pod holding only its name, namespace and status.
/// Its uid makes the patch fail, not land on a new pod of the same name.
pub(super) fn patch(name: &str, namespace: &str, uid: &str, o: &Observed) -> Pod {
    let ready = o.ready && matches!(o.run, Run::Running { .. });
    let phase = match (&o.run, o.done) {
        (Run::Terminated(exit), true) if exit.code == 0 => "Succeeded",
        (Run::Terminated(_), true) => "Failed",
        (Run::Waiting { .. }, _) if o.restarts == 0 && o.last.is_none() => "Pending",
        _ => "Running",
    };
    let condition = |type_: &str, status: bool, since: &Time| PodCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        last_transition_time: Some(since.clone()),
        reason: (!status).then(|| "ContainersNotReady".into()),
        message: (!status).then(|| format!("containers with unready status: [{}]", o.container)),
        ..Default::default()
    };
    let terminated = |e: &Exit| ContainerStateTerminated {
        container_id: Some(format!("process://{}", e.pid)),
        exit_code: e.code,
        signal: e.signal,
        reason: Some(if e.code == 0 { "Completed" } else { "Error" }.into()),
        started_at: Some(e.started.clone()),
        finished_at: Some(e.finished.clone()),
        message: None,
    };
    let (state, container_id) = match &o.run {
        Run::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: Some(message.clone()).filter(|m| !m.is_empty()),
                }),
                ..Default::default()
            },
            o.last.as_ref().map(|e| e.pid),
        ),
        Run::Running { pid, since } => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(since.clone()),
                }),
                ..Default::default()
            },
            Some(*pid),
        ),
        Run::Terminated(exit) => (
            ContainerState {
                terminated: Some(terminated(exit)),
                ..Default::default()
            },
            Some(exit.pid),
        ),
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some(phase.into()),
            host_ip: Some(NODE_IP.into()),
            host_ips: Some(vec![HostIP { ip: NODE_IP.into() }]),
            pod_ip: Some(NODE_IP.into()),
            pod_ips: Some(vec![PodIP { ip: NODE_IP.into() }]),
            start_time: Some(o.start_time.clone()),
            conditions: Some(vec![
                condition("PodScheduled", true, &o.start_time),
                condition("Initialized", true, &o.start_time),
                condition("ContainersReady", ready, &o.ready_changed),
                condition("Ready", ready, &o.ready_changed),
            ]),
            container_statuses: Some(vec![ContainerStatus {
                name: o.container.clone(),
                image: o.image.clone(),
                image_id: o.image_id.clone(),
                container_id: container_id.map(|pid| format!("process://{pid}")),
                ready,
                started: Some(matches!(o.run, Run::Running { .. })),
                restart_count: o.restarts,
                state: Some(state),
                last_state: o.last.as_ref().map(|e| ContainerState {
                    terminated: Some(terminated(e)),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn observed(run: Run) -> Observed {
        Observed {
            start_time: Time(Timestamp::UNIX_EPOCH),
            container: "agent".into(),
            image: "mirrornet/mirrornet-agent:0.1.0".into(),
            image_id: "process:///bin/agent".into(),
            run,
            last: None,
            restarts: 0,
            ready: true,
            ready_changed: Time(Timestamp::UNIX_EPOCH),
            done: false,
        }
    }

    fn exit(code: i32) -> Exit {
        let at = Time(Timestamp::UNIX_EPOCH);
        Exit {
            pid: 7,
            code,
            signal: None,
            started: at.clone(),
            finished: at,
        }
    }

    #[test]
    fn a_crashed_container_waits_in_back_off_with_its_last_exit() {
        let mut o = observed(Run::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        });
        o.last = Some(exit(3));
        o.restarts = 1;
        let status = patch("p", "ns", "u", &o).status.expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let c = &status.container_statuses.expect("container")[0];
        assert!(
            !c.ready
                && c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_none() && s.waiting.is_some())
        );
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("last exit");
        assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
        let ready = &status.conditions.expect("conditions")[3];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "False")
        );
    }

    #[test]
    fn phases_follow_the_container() {
        let phase = |o: Observed| {
            patch("p", "ns", "u", &o)
                .status
                .and_then(|s| s.phase)
                .expect("phase")
        };
        let at = Time(Timestamp::UNIX_EPOCH);
        assert_eq!(
            phase(observed(Run::Waiting {
                reason: "ImageNotKnown".into(),
                message: String::new()
            })),
            "Pending"
        );
        assert_eq!(
            phase(observed(Run::Running { pid: 1, since: at })),
            "Running"
        );
        assert_eq!(
            phase(Observed {
                done: true,
                ..observed(Run::Terminated(exit(0)))
            }),
            "Succeeded"
        );
        assert_eq!(
            phase(Observed {
                done: true,
                ..observed(Run::Terminated(exit(1)))
            }),
            "Failed"
        );
    }
}
