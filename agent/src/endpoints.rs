//! `/metrics`, `/healthz` and `/readyz`.
//!
//! Healthy while the loop keeps completing passes (a stuck loop fails liveness); ready once a
//! first pass has reported every desired network, programmed or failing with a reason.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::reconciler::{Metrics, NodeReport};
use mirrornet_api::conditions::NodeReason;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    report: watch::Receiver<NodeReport>,
    /// A pass older than this means the loop is stuck.
    stale_after: Duration,
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    report: watch::Receiver<NodeReport>,
    stale_after: Duration,
) -> std::io::Result<()> {
    let shared = Shared {
        metrics,
        report,
        stale_after,
    };
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    axum::serve(listener, router).await
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    let metrics = shared.metrics.clone();
    // One `nft -j list` per scrape: the counters are read when someone asks.
    let _ = tokio::task::spawn_blocking(move || metrics.read_traffic()).await;
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &shared.metrics.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, String::new()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(shared): State<Shared>) -> impl IntoResponse {
    let last = shared.metrics.last_pass_ms.load(Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if last == 0 || now.saturating_sub(last) <= shared.stale_after.as_millis() as u64 {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reconcile loop stalled\n")
    }
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    let report = shared.report.borrow().clone();
    if !report.synced {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "first pass not done\n".to_owned(),
        );
    }
    let failing: Vec<String> = report
        .networks
        .values()
        .filter(|n| !n.programmed)
        .map(|n| {
            format!(
                "{}: {}",
                n.name,
                n.reason.map(|r| r.as_str()).unwrap_or_default()
            )
        })
        .chain(
            report
                .networks
                .values()
                .filter(|n| n.taken.as_ref().is_some_and(|t| !t.is_empty()))
                .map(|n| format!("{}: {}", n.name, NodeReason::AddressTaken)),
        )
        .collect();
    let body = if failing.is_empty() {
        "ok\n".to_owned()
    } else {
        format!("ok (reported failing: {})\n", failing.join("; "))
    };
    (StatusCode::OK, body)
}
