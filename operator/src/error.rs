//! The operator's one error type, classified so that the controller knows whether to retry
//! soon (the API server had a bad moment) or to wait for the object to change.

use std::time::Duration;

/// Everything a reconcile (or the operator's start-up) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed; see [`Error::is_transient`] for which are retried.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] Box<kube::Error>),

    /// Adding or removing the finalizer, or the work it guards, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// Deletion is held until these nodes report the network's state removed. Not a failure:
    /// it is how the finalizer waits, and it is retried at a calm pace.
    #[error("waiting for nodes to remove the network's state: {}", .nodes.join(", "))]
    TeardownPending { nodes: Vec<String> },

    /// The object carries no name; only a hand-made object can, and retrying cannot help.
    #[error("object has no metadata.name")]
    MissingName,

    /// The operator's own configuration (flags, environment) is unusable.
    #[error("configuration: {0}")]
    Config(String),

    /// A body could not be encoded; a bug, so it is not retried quickly.
    #[error("could not encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(Box::new(e))
    }
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        // Unwrap the reconcile's own error, so classification sees what really failed.
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

/// How an error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying soon with backoff: timeouts, 5xx, 429, 409 (someone else wrote first).
    Transient,
    /// Expected waiting (deletion held by nodes): retried at a fixed, calm interval.
    Waiting,
    /// Retrying will not help until something changes: retried rarely, never hot-looped.
    Permanent,
}

impl Error {
    /// Sorts the error into transient, waiting or permanent.
    pub fn class(&self) -> Class {
        match self {
            Error::Kube(e) => kube_class(e),
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::AddFinalizer(k)
                | kube::runtime::finalizer::Error::RemoveFinalizer(k) => kube_class(k),
                _ => Class::Permanent,
            },
            Error::TeardownPending { .. } => Class::Waiting,
            Error::MissingName | Error::Config(_) | Error::Encode { .. } => Class::Permanent,
        }
    }

    /// True when a retry soon is likely to succeed.
    pub fn is_transient(&self) -> bool {
        self.class() == Class::Transient
    }

    /// A short, bounded label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(e) => match e.as_ref() {
                kube::Error::Api(s) if s.code == 409 => "api_conflict",
                kube::Error::Api(s) if s.code >= 500 => "api_server_error",
                kube::Error::Api(_) => "api_rejected",
                _ => "api_unreachable",
            },
            Error::Finalizer(_) => "finalizer",
            Error::TeardownPending { .. } => "teardown_pending",
            Error::MissingName => "missing_name",
            Error::Config(_) => "config",
            Error::Encode { .. } => "encode",
        }
    }
}

fn kube_class(e: &kube::Error) -> Class {
    match e {
        // 409: a concurrent writer (stale resourceVersion, finalizer list changed under us);
        // 422 from a JSON-patch `test` op is the same race seen by the finalizer helper.
        kube::Error::Api(s) if s.code == 409 || s.code == 429 || s.code >= 500 => Class::Transient,
        kube::Error::Api(s) if s.code == 422 && s.message.contains("test") => Class::Transient,
        kube::Error::Api(_) => Class::Permanent,
        // Transport, TLS, timeouts, decoding of a truncated body: the connection's fault.
        _ => Class::Transient,
    }
}

/// Retry delays: transient errors back off exponentially per object, from `base` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// How often a deletion held by nodes is re-checked.
    pub waiting: Duration,
    /// How often a permanent error is retried anyway (in case the cause went away unseen).
    pub permanent: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
            waiting: Duration::from_secs(15),
            permanent: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay after the `failures`-th consecutive failure (1-based) of one object.
    pub fn delay(&self, class: Class, failures: u32) -> Duration {
        match class {
            Class::Transient => {
                let factor = 1u32 << failures.saturating_sub(1).min(16);
                self.base.saturating_mul(factor).min(self.max)
            }
            Class::Waiting => self.waiting,
            Class::Permanent => self.permanent,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> Error {
        Error::from(kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        })))
    }

    #[test]
    fn classification() {
        let table = [
            (api(409, "the object has been modified"), Class::Transient),
            (api(500, "etcd"), Class::Transient),
            (api(503, "unavailable"), Class::Transient),
            (api(429, "slow down"), Class::Transient),
            (
                api(422, "the server rejected our request: test failed"),
                Class::Transient,
            ),
            (api(422, "spec.template: Invalid value"), Class::Permanent),
            (api(403, "forbidden"), Class::Permanent),
            (
                Error::TeardownPending {
                    nodes: vec!["n1".into()],
                },
                Class::Waiting,
            ),
            (Error::MissingName, Class::Permanent),
        ];
        for (error, class) in table {
            assert_eq!(error.class(), class, "{error}");
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(Class::Transient, 1), Duration::from_millis(500));
        assert_eq!(b.delay(Class::Transient, 2), Duration::from_secs(1));
        assert_eq!(b.delay(Class::Transient, 4), Duration::from_secs(4));
        assert_eq!(b.delay(Class::Transient, 40), Duration::from_secs(300));
        assert_eq!(b.delay(Class::Permanent, 1), Duration::from_secs(600));
        assert_eq!(b.delay(Class::Waiting, 7), Duration::from_secs(15));
    }
}
