//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas can run and only
//! one acts. The same protocol as client-go's leaderelection: the holder renews `renewTime`
//! every retry period; a candidate takes over a Lease whose `renewTime + leaseDuration` has
//! passed; every write carries the resourceVersion it read, so two candidates cannot both win.
//! A leader that cannot renew within the renew deadline steps down: `run` returns, and the
//! caller drops everything the term started before it campaigns again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::Result;

/// How the Lease is used.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down (< lease_duration).
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Another holder let it expire (or nobody holds it): take it over.
    TakeOver,
    /// Another replica holds a valid Lease.
    Follow { holder: String },
}

/// Decides the next step from the Lease as read. Pure, so the protocol is table-tested.
pub fn step(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    match renewed {
        Some(t) if t + duration > now => Step::Follow { holder },
        _ => Step::TakeOver,
    }
}

/// Campaigns for and keeps the Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    fn held_spec(
        &self,
        now: Timestamp,
        acquired: Option<MicroTime>,
        transitions: i32,
    ) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt. `Ok(true)` when this replica holds the Lease afterwards; a lost race
    /// (409: someone else wrote first) is `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.settings.name).await?;
        let written = match step(current.as_ref(), &self.settings.identity, now) {
            Step::Follow { .. } => return Ok(false),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.held_spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Renew => {
                let mut lease = current.unwrap_or_default();
                let old = lease.spec.clone().unwrap_or_default();
                lease.spec =
                    Some(self.held_spec(now, old.acquire_time, old.lease_transitions.unwrap_or(0)));
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
            Step::TakeOver => {
                let mut lease = current.unwrap_or_default();
                let old = lease.spec.clone().unwrap_or_default();
                lease.spec = Some(self.held_spec(
                    now,
                    None,
                    old.lease_transitions.unwrap_or(0).saturating_add(1),
                ));
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Campaigns forever: `leading` turns true when the Lease is won and false when it is
    /// lost (then this function returns). `reachable` tells readiness that the API answers.
    pub async fn run(self, leading: watch::Sender<bool>, reachable: Arc<AtomicBool>) {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    reachable.store(true, Ordering::Relaxed);
                    if last_renewal.is_none() {
                        info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                        leading.send_replace(true);
                    }
                    last_renewal = Some(tokio::time::Instant::now());
                }
                Ok(false) => {
                    reachable.store(true, Ordering::Relaxed);
                    if last_renewal.is_some() {
                        warn!(lease = %self.settings.name, "another replica took the lease");
                        leading.send_replace(false);
                        return;
                    }
                }
                Err(e) => {
                    warn!(lease = %self.settings.name, error = %e, "lease request failed");
                    if let Some(t) = last_renewal
                        && t.elapsed() > self.settings.renew_deadline
                    {
                        warn!(lease = %self.settings.name, "could not renew the lease in time; stepping down");
                        leading.send_replace(false);
                        return;
                    }
                }
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Gives the Lease up on shutdown, so the other replica need not wait for it to expire.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use mirrornet_api::mock_api::{self, expect, fail, serve};
    use serde_json::json;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

    /// One campaign step against a scripted API server.
    async fn attempt(script: Vec<mock_api::Exchange>) -> Result<bool> {
        let (client, handle) = mock_api::client();
        let server = tokio::spawn(async move {
            let mut handle = handle;
            serve(&mut handle, script).await
        });
        let elector = Elector::new(client, LeaseSettings::new("op", "ns", "me"));
        let won = tokio::time::timeout(Duration::from_secs(5), elector.try_acquire_or_renew())
            .await
            .expect("the elector made an unexpected request");
        server.await.expect("requests matched the script");
        won
    }

    fn not_found() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
    }

    #[tokio::test]
    async fn creates_a_missing_lease() {
        let won = attempt(vec![
            mock_api::Exchange::with_status(
                expect(Method::GET, format!("{LEASE}/op"), |_| not_found()),
                404,
            ),
            expect(Method::POST, format!("{LEASE}?"), |body| {
                assert_eq!(body["spec"]["holderIdentity"], "me");
                assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                body.clone()
            }),
        ])
        .await;
        assert!(won.unwrap());
    }

    #[tokio::test]
    async fn follows_a_valid_lease_without_writing() {
        let held = serde_json::to_value(Lease {
            metadata: ObjectMeta {
                name: Some("op".into()),
                resource_version: Some("5".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("other".into()),
                lease_duration_seconds: Some(3600),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        })
        .unwrap();
        let won = attempt(vec![expect(
            Method::GET,
            format!("{LEASE}/op"),
            move |_| held,
        )])
        .await;
        assert!(!won.unwrap());
    }

    #[tokio::test]
    async fn takes_over_an_expired_lease_and_loses_a_race_gracefully() {
        let expired = serde_json::to_value(lease(Some("other"), 1, 15)).unwrap();
        let again = expired.clone();
        let won = attempt(vec![
            expect(Method::GET, format!("{LEASE}/op"), move |_| expired),
            expect(Method::PUT, format!("{LEASE}/op?"), |body| {
                assert_eq!(body["spec"]["holderIdentity"], "me");
                assert_eq!(body["spec"]["leaseTransitions"], 1);
                body.clone()
            }),
        ])
        .await;
        assert!(won.unwrap());
        // Someone else wrote first: not leader, and not an error.
        let lost = attempt(vec![
            expect(Method::GET, format!("{LEASE}/op"), move |_| again),
            fail(Method::PUT, format!("{LEASE}/op?"), 409),
        ])
        .await;
        assert!(!lost.unwrap());
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("op".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn election_steps() {
        let now = Timestamp::from_second(1000).unwrap();
        let table = [
            ("no lease", None, Step::Create),
            ("mine", Some(lease(Some("me"), 999, 15)), Step::Renew),
            (
                "mine, even if expired",
                Some(lease(Some("me"), 1, 15)),
                Step::Renew,
            ),
            (
                "other, valid",
                Some(lease(Some("other"), 990, 15)),
                Step::Follow {
                    holder: "other".into(),
                },
            ),
            (
                "other, expired",
                Some(lease(Some("other"), 980, 15)),
                Step::TakeOver,
            ),
            ("released", Some(lease(None, 999, 1)), Step::TakeOver),
        ];
        for (name, l, expected) in table {
            assert_eq!(step(l.as_ref(), "me", now), expected, "{name}");
        }
    }
}
