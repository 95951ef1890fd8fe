//! The HTTP endpoints: `/metrics` (Prometheus / OpenMetrics text), `/healthz` (the process
//! serves) and `/readyz` (the API server has answered; for the leader, the controller runs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the endpoints report on.
#[derive(Debug, Default)]
pub struct Probes {
    /// Set once this replica has talked to the API server (elector or controller).
    pub ready: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.probes.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The routes.
pub fn router(metrics_: Arc<Metrics>, probes: Arc<Probes>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared {
            metrics: metrics_,
            probes,
        })
}

/// Serves the routes on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Binds `address` (a separate step, so a bad address fails start-up, not a background task).
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_path(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        let probes = Arc::new(Probes::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, router(metrics.clone(), probes.clone())));
        assert!(get_path(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get_path(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        probes.ready.store(true, Ordering::Relaxed);
        assert!(get_path(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        metrics.leader(true);
        let body = get_path(addr, "/metrics").await;
        assert!(body.contains("mirrornet_operator_leader 1"), "{body}");
        assert!(body.contains("# EOF"), "{body}");
        server.abort();
    }
}
