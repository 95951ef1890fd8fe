//! `mirrornet-operator`: parses flags, serves metrics and probes, campaigns for the leader
//! Lease, and runs the controller while it leads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Parser;
use mirrornet_operator::config::Args;
use mirrornet_operator::endpoints::{self, Probes};
use mirrornet_operator::leader::{Elector, LeaseSettings};
use mirrornet_operator::metrics::Metrics;
use tokio::sync::watch;
use tracing::{error, info};

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "text" {
        builder.init();
    } else {
        // One JSON object per line; the span fields (network = ...) are in every line
        // logged inside a reconcile.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    }
}

/// Completes on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let config = args.config()?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or kubeconfig)")?;
    let metrics = Arc::new(Metrics::default());
    let probes = Arc::new(Probes::default());
    let listener = endpoints::bind(args.metrics_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_address))?;
    tokio::spawn(endpoints::serve(
        listener,
        endpoints::router(metrics.clone(), probes.clone()),
    ));
    info!(address = %args.metrics_address, "serving /metrics, /healthz, /readyz");

    if !args.leader_election {
        probes.ready.store(true, Ordering::Relaxed);
        metrics.leader(true);
        mirrornet_operator::run::controller(client, config, metrics, args.identity, terminated())
            .await;
        return Ok(());
    }

    let elector = Elector::new(
        client.clone(),
        LeaseSettings::new(&args.lease_name, &args.namespace, &args.identity),
    );
    let (leading_tx, mut leading) = watch::channel(false);
    // A follower is ready once the API server answers the elector: it stands by.
    tokio::spawn(elector.clone().run(leading_tx, probes.ready.clone()));
    info!(lease = %args.lease_name, identity = %args.identity, "waiting to become leader");
    tokio::select! {
        _ = leading.wait_for(|l| *l) => {}
        _ = terminated() => return Ok(()),
    }
    metrics.leader(true);
    let mut lost = leading.clone();
    let stop = async move {
        tokio::select! {
            _ = lost.wait_for(|l| !*l) => error!("lost the leader lease; stopping"),
            _ = terminated() => info!("terminating"),
        }
    };
    mirrornet_operator::run::controller(client, config, metrics.clone(), args.identity, stop).await;
    metrics.leader(false);
    if !*leading.borrow() {
        // Exit non-zero so the pod restarts as a follower with fresh caches and allocator.
        std::process::exit(1);
    }
    if let Err(e) = elector.release().await {
        error!(error = %e, "could not release the lease");
    }
    Ok(())
}
