//! `kiln edge`: the edge as its own process. It long-polls the control plane for the route
//! set and swaps its table atomically on every change; when the API is unreachable it keeps
//! serving the last table it had.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use kiln_api::Client;
use kiln_edge::{Edge, EdgeConfig, RouteTable, Routes};
use tokio_util::sync::CancellationToken;

/// How long one long-poll may wait for a change.
const POLL_WAIT_S: u64 = 30;
/// Longest pause between retries when the API does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Serves end users on `listen` until SIGINT or SIGTERM; `pin_workers` pins each worker
/// thread to its own CPU.
pub async fn run(client: Client, listen: SocketAddr, pin_workers: bool) -> anyhow::Result<()> {
    crate::logging::init();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind the edge address {listen}"))?;
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
        pin_workers,
        ..EdgeConfig::default()
    };
    Edge::new(config, routes)
        .serve(listener, async move { shutdown.cancelled().await })
        .await
        .context("serve the edge")
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
