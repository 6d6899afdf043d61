//! The edge: the only door for end users.
//!
//! It routes every request by host through one shared [`RouteTable`] (previews, production
//! hosts and custom domains alike), streams it to one of the route's machines over pooled
//! HTTP/1.1 connections, and streams the answer back: HTTP/1.1 and HTTP/2 (prior knowledge)
//! on one listener, and both over TLS (HTTP/2 chosen by ALPN) on another if it has one
//! ([`Edge::with_tls`]); WebSocket upgrades spliced through. Every answer it makes itself (unknown
//! host, app stopped or starting, timeout, too large, bad request) is a page in the org's brand
//! and never names the platform.
//!
//! *Invariant:* the edge never reads the store; it only consumes route tables published
//! through [`Routes`].
//!
//! ```no_run
//! # async fn run() -> Result<(), kiln_edge::EdgeError> {
//! use kiln_edge::{Edge, EdgeConfig, Routes};
//! let routes = Routes::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.expect("bind");
//! let edge = Edge::new(EdgeConfig::default(), routes.clone());
//! edge.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]

mod affinity;
mod balance;
mod body;
mod framing;
pub mod pages;
mod proxy;
mod relay;
mod routes;
mod server;
mod tls;
mod upstream;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use crate::routes::{
    Backend, Brand, OrgSite, Resolution, Route, RouteKind, RouteTable, RouteTableError, Routes,
    normalize_host,
};
pub use crate::tls::{Certificate, LocalIssuer, TlsConfig, TlsError};

/// Limits and timeouts of the edge.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Largest request body accepted, declared or streamed. Default 100 MiB.
    pub max_request_body: u64,
    /// Largest request head (HTTP/1) or header list (HTTP/2). Default 32 KiB.
    pub max_header_bytes: usize,
    /// Time to connect to a machine. Default 5 s.
    pub upstream_connect_timeout: Duration,
    /// Time from sending a request upstream to its response headers. Default 60 s.
    pub upstream_response_timeout: Duration,
    /// Time a client has to send a complete request head; also how long an idle HTTP/1
    /// keep-alive connection is kept. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing their connections.
    /// Default 30 s.
    pub shutdown_grace: Duration,
    /// Worker threads. Each runs its own single-threaded runtime and upstream pool, so a
    /// request is served start to finish on one thread; measured 20–25% more requests per
    /// second than a work-stealing runtime. Default: one per available core.
    pub workers: usize,
    /// Pins worker *i* to the *i*-th CPU the process may run on, like nginx's
    /// `worker_cpu_affinity auto`. Measured 6–15% more requests per second on a 2-core box
    /// shared with the load generator and the app; p99 can rise when other work crowds a
    /// pinned core, so it suits a node that runs the edge alone. Default off.
    pub pin_workers: bool,
    /// The brand for hosts that belong to no org at all: neutral, no name, no logo.
    pub fallback_brand: Brand,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            max_request_body: 100 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            pin_workers: false,
            fallback_brand: Brand::default(),
        }
    }
}

/// Errors of the edge as a whole (per-request failures are answered with pages instead).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The listener could not be shared with the worker threads.
    #[error("could not hand the listener to the workers")]
    Listener(#[source] std::io::Error),
    /// A worker thread or its runtime could not be started.
    #[error("could not start an edge worker")]
    Worker(#[source] std::io::Error),
    /// The probe could not connect to the edge.
    #[error("probe could not connect to the edge at {addr}")]
    ProbeConnect {
        /// The edge's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The probe's request was malformed (host or path not valid in HTTP).
    #[error("probe request for host {host:?} path {path:?} is not valid HTTP")]
    ProbeRequest {
        /// The host asked for.
        host: String,
        /// The path asked for.
        path: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// The probe's HTTP exchange failed.
    #[error("probe through the edge failed")]
    Probe(#[source] hyper::Error),
    /// The edge did not answer the probe in time.
    #[error("probe through the edge timed out after {0:?}")]
    ProbeTimeout(Duration),
    /// The TLS settings cannot be used.
    #[error("TLS settings of the edge: {0}")]
    Tls(#[from] TlsError),
}

/// The edge proxy. Build it with [`Edge::new`] and run it with [`Edge::serve`].
pub struct Edge {
    shared: Arc<proxy::Shared>,
    protocols: Arc<server::Protocols>,
    tls: Option<server::TlsListener>,
}

impl Edge {
    /// Builds an edge that routes through `routes`; publishing a new table there takes effect
    /// on the next request.
    pub fn new(config: EdgeConfig, routes: Routes) -> Edge {
        let protocols = Arc::new(server::Protocols::new(&config));
        Edge {
            shared: Arc::new(proxy::Shared { config, routes }),
            protocols,
            tls: None,
        }
    }

    /// Also serves HTTPS on `listener`: each handshake gets its certificate by SNI from `tls`,
    /// and ALPN picks HTTP/2 or HTTP/1.1. Requests are routed by `Host` as on plain HTTP and
    /// reach machines with `X-Forwarded-Proto: https`.
    pub fn with_tls(mut self, listener: TcpListener, tls: TlsConfig) -> Result<Edge, EdgeError> {
        let acceptor = tls::acceptor(tls, self.shared.routes.clone())?;
        self.tls = Some(server::TlsListener { listener, acceptor });
        Ok(self)
    }

    /// Serves connections from `listener` on [`EdgeConfig::workers`] threads of its own until
    /// `shutdown` resolves; then stops accepting, closes upgraded (WebSocket) connections, lets
    /// in-flight requests finish (up to [`EdgeConfig::shutdown_grace`]) and returns. Dropping
    /// the returned future instead ends every connection at once.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), EdgeError> {
        server::serve(self.shared, self.protocols, listener, self.tls, shutdown).await
    }
}

/// How long [`probe`] waits for the whole exchange.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches `path` for `host` through the edge itself and returns the status: what a preview
/// check uses to know "the port answers through the edge". The body is discarded.
pub async fn probe(edge_addr: SocketAddr, host: &str, path: &str) -> Result<u16, EdgeError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(edge_addr)
            .await
            .map_err(|source| EdgeError::ProbeConnect {
                addr: edge_addr,
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(EdgeError::Probe)?;
        let connection = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|source| EdgeError::ProbeRequest {
                host: host.to_owned(),
                path: path.to_owned(),
                source,
            })?;
        let response = sender.send_request(request).await.map_err(EdgeError::Probe);
        connection.abort();
        Ok(response?.status().as_u16())
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| EdgeError::ProbeTimeout(PROBE_TIMEOUT))?
}
