//! `kiln edge`: the edge as its own process. It long-polls the control plane for the route
//! set and swaps its table atomically on every change; when the API is unreachable it keeps
//! serving the last table it had.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use kiln_api::Client;
use kiln_control::config::TlsFiles;
use kiln_edge::{Edge, EdgeConfig, RouteTable, Routes};
use tokio_util::sync::CancellationToken;

use crate::cli::EdgeArgs;

/// How long one long-poll may wait for a change.
const POLL_WAIT_S: u64 = 30;
/// Longest pause between retries when the API does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Serves end users on the addresses in `args` until SIGINT or SIGTERM.
pub async fn run(client: Client, args: EdgeArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let listener = bind(args.listen).await?;
    let routes = Routes::default();
    let shutdown = CancellationToken::new();
    tokio::spawn(follow(client, routes.clone(), shutdown.clone()));
    println!("edge listening on {}", listener.local_addr()?);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::logging::shutdown_signal().await;
        stop.cancel();
    });
    let config = EdgeConfig {
        pin_workers: args.pin_workers,
        ..EdgeConfig::default()
    };
    let mut edge = Edge::new(config, routes);
    if let Some(addr) = args.https_listen {
        let files = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        };
        let tls = kiln_control::edge_tls::load(files.as_ref(), &args.local_ca_dir)?;
        let listener = bind(addr).await?;
        println!("edge listening for HTTPS on {}", listener.local_addr()?);
        edge = edge.with_tls(listener, tls)?;
    }
    edge.serve(listener, async move { shutdown.cancelled().await })
        .await
        .context("serve the edge")
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the edge address {addr}"))
}

/// Applies every new route set the control plane publishes.
async fn follow(client: Client, routes: Routes, shutdown: CancellationToken) {
    let mut generation = 0;
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        let poll = tokio::select! {
            () = shutdown.cancelled() => return,
            poll = client.edge_routes(generation, POLL_WAIT_S) => poll,
        };
        match poll {
            Ok(set) if set.generation == generation => {}
            Ok(set) => match RouteTable::from_set(&set) {
                Ok(table) => {
                    routes.publish(table);
                    generation = set.generation;
                    backoff = Duration::from_millis(250);
                    tracing::debug!(generation, routes = set.routes.len(), "routes updated");
                }
                Err(e) => {
                    tracing::error!(error = %e, generation = set.generation, "refusing an invalid route set; keeping the last one");
                    tokio::time::sleep(backoff).await;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch routes; serving the last ones");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
