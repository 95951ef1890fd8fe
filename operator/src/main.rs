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
    // Campaign, lead until the Lease is lost, and campaign again: a replica that lost the
    // Lease (the API server away past the renew deadline, another replica faster) stops
    // acting at once, the controller and its caches dropped mid-flight, and stands by in the
    // same process; the next term starts with fresh caches and a fresh allocator view.
    loop {
        let (leading_tx, mut leading) = watch::channel(false);
        // A follower is ready once the API server answers the elector: it stands by.
        let campaign = tokio::spawn(elector.clone().run(leading_tx, probes.ready.clone()));
        info!(lease = %args.lease_name, identity = %args.identity, "waiting to become leader");
        tokio::select! {
            _ = leading.wait_for(|l| *l) => {}
            _ = terminated() => return Ok(()),
        }
        metrics.leader(true);
        let controller = mirrornet_operator::run::controller(
            client.clone(),
            config.clone(),
            metrics.clone(),
            args.identity.clone(),
            terminated(),
        );
        let terminating = tokio::select! {
            _ = controller => true,
            _ = leading.wait_for(|l| !*l) => {
                error!("lost the leader lease; standing by");
                false
            }
        };
        metrics.leader(false);
        if terminating {
            campaign.abort();
            break;
        }
        let _ = campaign.await;
    }
    if let Err(e) = elector.release().await {
        error!(error = %e, "could not release the lease");
    }
    Ok(())
}
