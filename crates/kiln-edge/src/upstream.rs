//! Keep-alive HTTP/1.1 connections from one edge worker to machines.
//!
//! Written on hyper's connection API rather than `hyper_util`'s pooled client because the
//! latter's generic machinery (a pool keyed by scheme and authority under SipHash, lazy
//! connectors, boxed futures moved around per request) cost as many instructions per proxied
//! request as the rest of the edge together. Here a checkout is one map look-up and a scan of
//! that machine's connections for one that is idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::LimitedBody;

/// Connections kept per machine; more than this many idle ones are closed.
const MAX_PER_UPSTREAM: usize = 256;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be made in time.
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the upstream exchange failed")]
    Http(#[source] hyper::Error),
}

struct Idle {
    sender: SendRequest<LimitedBody>,
    since: Instant,
}

/// One worker's connections, by machine address.
pub(crate) struct UpstreamPool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl UpstreamPool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> UpstreamPool {
        UpstreamPool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle kept-alive connection,
    /// or a new one. A request that a reused connection refused before sending a byte (the
    /// machine closed it while idle) is sent again on a fresh connection.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<LimitedBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let req = match self.checkout(addr) {
            Some(mut sender) => {
                let sent = sender.try_send_request(req);
                self.checkin(addr, sender);
                match sent.await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match e.take_message() {
                        Some(req) => req,
                        None => return Err(UpstreamError::Http(e.into_error())),
                    },
                }
            }
            None => req,
        };
        let mut sender = self.connect(addr).await?;
        let sent = sender.send_request(req);
        self.checkin(addr, sender);
        sent.await.map_err(UpstreamError::Http)
    }

    /// An idle connection to `addr`, dropping closed and expired ones on the way.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<LimitedBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let entry = &list[i];
            if entry.sender.is_closed() {
                list.swap_remove(i);
            } else if entry.sender.is_ready() {
                let entry = list.swap_remove(i);
                if now.duration_since(entry.since) <= self.idle_timeout {
                    return Some(entry.sender);
                }
            }
        }
        None
    }

    /// Keeps a connection for later. It is busy until its response has been read; `checkout`
    /// skips it until then. Its idle time counts from here, a little early for long answers.
    fn checkin(&self, addr: SocketAddr, sender: SendRequest<LimitedBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_PER_UPSTREAM {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<LimitedBody>, UpstreamError> {
        let connect_error = |source| UpstreamError::Connect { addr, source };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        // Small requests should leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        // Not tracked with the worker's tasks: an idle kept-alive connection must not hold up
        // shutdown; it ends with the runtime.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes idle connections that expired or whose machine closed them.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|entry| {
                !entry.sender.is_closed()
                    && (!entry.sender.is_ready()
                        || now.duration_since(entry.since) <= self.idle_timeout)
            });
            !list.is_empty()
        });
    }
}
