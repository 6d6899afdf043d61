//! Accepting connections, plain and TLS, choosing HTTP/1.1 or HTTP/2 for each, and shutting
//! down gracefully.
//!
//! Connections are served over any `AsyncRead + AsyncWrite` stream, so TLS is a handshake in
//! front of [`serve_connection`] and nothing below it changes.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::EdgeError;
use crate::affinity;
use crate::balance::{Balance, Handed, Live, Placed};
use crate::framing::{FramingScanner, FramingVerdict};
use crate::proxy::{self, ConnInfo, Shared, Worker};
use crate::relay;

/// The HTTP/2 connection preface (RFC 9113 §3.4): "prior knowledge" clients start with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Protocol builders, made once and shared by every connection.
pub(crate) struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    pub(crate) fn new(config: &crate::EdgeConfig) -> Protocols {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Slowloris defence: the whole head must arrive within this time, however slowly
            // it trickles; it also bounds how long an idle keep-alive connection is kept.
            .header_read_timeout(config.header_read_timeout)
            // hyper's default cap of 100 header lines is kept: raising it moves its parse
            // buffer from the stack to the heap on every request.
            .max_header_size(config.max_header_bytes);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            // Pings find peers that vanished without closing, so their streams are freed.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Protocols {
            http1: h1,
            http2: h2,
        }
    }
}

/// The HTTPS listener and how its handshakes are done.
pub(crate) struct TlsListener {
    pub(crate) listener: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

/// Tokens that end connections at shutdown: `drain` stops accepting and asks connections to
/// finish their current requests; `abort` ends those still open when the grace period is over.
#[derive(Clone)]
struct Stop {
    drain: CancellationToken,
    abort: CancellationToken,
}

/// Starts the workers, waits for `shutdown`, then drains them.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    protocols: Arc<Protocols>,
    listener: TcpListener,
    tls: Option<TlsListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EdgeError> {
    let stop = Stop {
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    // If this future is dropped rather than shut down, the workers must not outlive it.
    let _abort_on_drop = stop.abort.clone().drop_guard();
    let _drain_on_drop = stop.drain.clone().drop_guard();

    // Each worker accepts on its own duplicate of the listening socket, registered with its own
    // runtime; the kernel hands each new connection to one of them, and the balance moves it
    // to a worker with fewer connections if there is one.
    let listener = listener.into_std().map_err(EdgeError::Listener)?;
    let tls = match tls {
        Some(TlsListener { listener, acceptor }) => {
            Some((listener.into_std().map_err(EdgeError::Listener)?, acceptor))
        }
        None => None,
    };
    let (balance, inboxes) = Balance::new(shared.config.workers.max(1));
    let cpus = if shared.config.pin_workers {
        affinity::allowed_cpus()
    } else {
        Vec::new()
    };
    let mut exited = Vec::new();
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        let listener = listener.try_clone().map_err(EdgeError::Listener)?;
        let tls = match &tls {
            Some((listener, acceptor)) => Some((
                listener.try_clone().map_err(EdgeError::Listener)?,
                acceptor.clone(),
            )),
            None => None,
        };
        let place = Place {
            balance: Arc::clone(&balance),
            index,
            inbox,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EdgeError::Worker)?;
        let (done, done_rx) = oneshot::channel::<()>();
        let (shared, protocols, stop) = (Arc::clone(&shared), Arc::clone(&protocols), stop.clone());
        std::thread::Builder::new()
            .name(format!("edge-worker-{index}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    affinity::pin_current_thread(cpu);
                }
                runtime.block_on(worker(shared, protocols, listener, tls, place, stop));
                let _ = done.send(());
            })
            .map_err(EdgeError::Worker)?;
        exited.push(done_rx);
    }
    drop(listener);
    drop(tls);

    shutdown.await;
    stop.drain.cancel();
    let all_exited = async {
        for done in exited {
            let _ = done.await;
        }
    };
    let mut all_exited = pin!(all_exited);
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, all_exited.as_mut())
        .await
        .is_err()
    {
        warn!("connections still busy after the grace period; closing them");
        stop.abort.cancel();
        all_exited.await;
    }
    Ok(())
}

/// A worker's place among the others.
struct Place {
    balance: Arc<Balance>,
    index: usize,
    /// Connections other workers accepted for this one.
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// One worker: accepts and serves connections on its own single-threaded runtime until
/// shutdown, then waits for its connections to drain.
async fn worker(
    shared: Arc<Shared>,
    protocols: Arc<Protocols>,
    listener: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, TlsAcceptor)>,
    mut place: Place,
    stop: Stop,
) {
    let registered = TcpListener::from_std(listener).and_then(|listener| {
        let tls = match tls {
            Some((listener, acceptor)) => Some((TcpListener::from_std(listener)?, acceptor)),
            None => None,
        };
        Ok((listener, tls))
    });
    let (listener, tls) = match registered {
        Ok(registered) => registered,
        Err(e) => {
            warn!(error = %e, "edge worker could not register its listeners");
            return;
        }
    };
    let acceptor = tls.as_ref().map(|(_, acceptor)| acceptor.clone());
    let worker = Arc::new(Worker {
        upstream: proxy::upstream_pool(&shared.config),
        relay: relay::Pool::new(
            shared.config.upstream_connect_timeout,
            proxy::UPSTREAM_IDLE_TIMEOUT,
        ),
        tasks: TaskTracker::new(),
        stopping: stop.drain.clone(),
    });
    let serve = |stream: TcpStream, remote: SocketAddr, tls: bool, live: Live| {
        let (shared, protocols, stop) = (Arc::clone(&shared), Arc::clone(&protocols), stop.clone());
        let own = Arc::clone(&worker);
        let acceptor = acceptor.clone().filter(|_| tls);
        worker.tasks.spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    serve_tls(acceptor, shared, protocols, own, stream, remote, stop).await;
                }
                None => serve_connection(shared, protocols, own, stream, remote, false, stop).await,
            }
            drop(live);
        });
    };
    let mut sweep = tokio::time::interval(proxy::UPSTREAM_IDLE_TIMEOUT / 3);
    loop {
        tokio::select! {
            biased;
            () = stop.drain.cancelled() => break,
            _ = sweep.tick() => {
                worker.upstream.sweep();
                worker.relay.sweep();
            }
            Some(handed) = place.inbox.recv() => match TcpStream::from_std(handed.stream) {
                Ok(stream) => serve(stream, handed.remote, handed.tls, handed.live),
                Err(e) => warn!(error = %e, "could not take over a connection from another worker"),
            },
            accepted = listener.accept() => {
                place_accepted(&place.balance, place.index, accepted, false, &serve).await;
            }
            accepted = accept_on(tls.as_ref().map(|(listener, _)| listener)) => {
                place_accepted(&place.balance, place.index, accepted, true, &serve).await;
            }
        }
    }
    // Closing the listeners now means new connections are refused, not left hanging.
    drop(listener);
    drop(tls);
    worker.tasks.close();
    worker.tasks.wait().await;
}

/// The next connection on `listener`; never, if there is none.
async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves a connection one of the listeners accepted here, or hands it to a worker with
/// fewer connections.
async fn place_accepted(
    balance: &Arc<Balance>,
    index: usize,
    accepted: io::Result<(TcpStream, SocketAddr)>,
    tls: bool,
    serve: &impl Fn(TcpStream, SocketAddr, bool, Live),
) {
    match accepted {
        Ok((stream, remote)) => {
            // Small answers should leave at once, not wait for Nagle.
            let _ = stream.set_nodelay(true);
            match balance.place(index) {
                Placed::Here(live) => serve(stream, remote, tls, live),
                Placed::There(to, live) => match stream.into_std() {
                    Ok(stream) => balance.hand_over(
                        to,
                        Handed {
                            stream,
                            remote,
                            tls,
                            live,
                        },
                    ),
                    Err(e) => warn!(error = %e, "could not hand a connection to another worker"),
                },
            }
        }
        Err(e) => {
            // Accept errors are about one connection or a passing shortage (EMFILE); a pause
            // lets descriptors free up instead of spinning.
            warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plain HTTP sent to the HTTPS port.
const PLAIN_HTTP_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
    content-type: text/plain; charset=utf-8\r\n\
    content-length: 56\r\n\
    connection: close\r\n\r\n\
    This port speaks HTTPS: use an https:// address for it.\n";

/// Completes the TLS handshake (within the header read timeout, like a request head) and
/// serves the connection inside it.
async fn serve_tls(
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    protocols: Arc<Protocols>,
    worker: Arc<Worker>,
    mut stream: TcpStream,
    remote: SocketAddr,
    stop: Stop,
) {
    let timeout = shared.config.header_read_timeout;
    let handshake = async {
        // Plain HTTP sent here gets an answer that says what is wrong, not a bare close.
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
            answer_and_close(&mut stream, PLAIN_HTTP_ON_TLS_PORT).await;
            return Ok(None);
        }
        acceptor.accept(stream).await.map(Some)
    };
    let handshake = tokio::select! {
        () = stop.drain.cancelled() => return,
        done = tokio::time::timeout(timeout, handshake) => done,
    };
    match handshake {
        Ok(Ok(Some(stream))) => {
            serve_connection(shared, protocols, worker, stream, remote, true, stop).await;
        }
        Ok(Ok(None)) => debug!(%remote, "plain HTTP on the HTTPS port"),
        Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_elapsed) => debug!(%remote, "no TLS handshake within the header read timeout"),
    }
}

/// Writes `answer`, then reads what the client still sends for a moment before closing, so
/// the close does not reset the connection before the client has read the answer.
async fn answer_and_close(stream: &mut TcpStream, answer: &[u8]) {
    if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The client address as `X-Forwarded-For` gives it (IPv4-mapped IPv6 shown as IPv4).
fn client_ip_value(remote: SocketAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(&remote.ip().to_canonical().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

/// Serves one downstream connection, HTTP/1.1 or HTTP/2 (prior knowledge, or chosen by ALPN
/// over TLS), until it closes or shutdown ends it. `secure`: it came over TLS.
async fn serve_connection<IO>(
    shared: Arc<Shared>,
    protocols: Arc<Protocols>,
    worker: Arc<Worker>,
    mut io: IO,
    remote: SocketAddr,
    secure: bool,
    stop: Stop,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The first bytes decide the protocol. A client that sends nothing is cut off like one
    // that trickles its head: neither may hold a connection open for free.
    let sniffed = tokio::select! {
        () = stop.drain.cancelled() => return,
        sniffed = tokio::time::timeout(shared.config.header_read_timeout, sniff(&mut io)) => sniffed,
    };
    let (prefix, http2) = match sniffed {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "connection failed before its first request");
            return;
        }
        Err(_elapsed) => {
            debug!(%remote, "no request head within the header read timeout");
            return;
        }
    };

    // Plain HTTP/1.1 requests take the relay; hyper serves the connection from the first
    // request that is not plain (and serves HTTP/2 throughout).
    let prefix = if http2 {
        prefix.freeze()
    } else {
        let relayed = relay::serve(
            &mut io,
            prefix,
            &shared,
            &worker,
            remote,
            secure,
            &stop.drain,
        );
        let ended = tokio::select! {
            ended = relayed => ended,
            () = stop.abort.cancelled() => return,
        };
        match ended {
            relay::Ended::Closed => return,
            relay::Ended::HandOver(rest) => rest,
        }
    };

    let framing = (!http2).then(|| Arc::new(FramingVerdict::new()));
    let scanner = framing
        .as_ref()
        .map(|verdict| FramingScanner::new(shared.config.max_header_bytes, Arc::clone(verdict)));
    let conn = Arc::new(ConnInfo {
        worker,
        remote,
        client_ip: client_ip_value(remote),
        http2,
        secure,
        framing,
        requests: AtomicU64::new(0),
    });
    let io = TokioIo::new(EdgeIo {
        prefix,
        inner: io,
        scanner,
    });
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(proxy::handle(shared, conn, req).await) }
    });

    // The two connection types share no trait for graceful shutdown, so the same drive loop
    // is written out for each.
    macro_rules! drive {
        ($conn:expr) => {{
            let mut conn = pin!($conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = stop.abort.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                debug!(%remote, error = %e, "connection ended with an error");
            }
        }};
    }
    if http2 {
        drive!(protocols.http2.serve_connection(io, service));
    } else {
        drive!(
            protocols
                .http1
                .serve_connection(io, service)
                .with_upgrades()
        );
    }
}

/// Reads until the bytes show whether this is an HTTP/2 prior-knowledge connection. Returns
/// the bytes read (to be replayed) and whether it is HTTP/2; `None` if the peer closed
/// without sending anything.
async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Option<(BytesMut, bool)>> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let n = io.read_buf(&mut buf).await?;
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok(Some((buf, false)));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Some((buf, true)));
        }
        if n == 0 {
            // Closed mid-preface (or before anything): nothing worth answering.
            return Ok(None);
        }
    }
}

/// The downstream stream as hyper sees it: the sniffed bytes replayed first, and every byte
/// read shown to the framing scanner (HTTP/1) before hyper parses it.
struct EdgeIo<IO> {
    prefix: Bytes,
    inner: IO,
    scanner: Option<FramingScanner>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for EdgeIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
        } else {
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if let Some(scanner) = &mut this.scanner {
            scanner.feed(&buf.filled()[before..]);
            if !scanner.is_active() {
                this.scanner = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for EdgeIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
