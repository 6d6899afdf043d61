//! The HTTP/1.1 fast path: a plain request relayed to its machine and the answer relayed
//! back within the connection's own task, heads rewritten from buffer to buffer and bodies
//! copied byte for byte.
//!
//! Why not hyper for this: proxying through hyper's server and client means parsing each
//! head into a `HeaderMap`, re-encoding it, and passing request, response and body frames
//! between the connection task and the machine connection's task over channels. For the small
//! answers that make up most of an app's traffic that machinery cost the edge more CPU than
//! nginx spends on the whole request. Here a request costs two `httparse` passes, two buffer
//! rewrites and four system calls.
//!
//! Only the common case comes here: an HTTP/1.1 request with one `Host`, no upgrade, no
//! `Expect`, and at most a small body of declared length. It is relayed when its host names a
//! route with a ready machine, and answered with the branded page otherwise (unknown host,
//! starting, stopped: the same pages hyper's side renders). Anything else, valid or not, is
//! handed to hyper with every byte read so far, from the start of that request, so hyper's
//! checks stay the one implementation of everything unusual. Machine answers of any framing
//! are relayed: by length, chunked (its end found as it passes, not re-encoded), or until the
//! machine closes.

mod chunked;
mod deadline;
mod head;
mod pool;

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::chunked::ChunkedEnd;
use self::deadline::Deadline;
use self::head::{FinalHead, Framing, Plain};
pub(crate) use self::pool::Pool;
use crate::body::EdgeBody;
use crate::pages::{self, PageKind};
use crate::proxy::{self, Shared, Worker};
use crate::routes::Brand;

/// Buffer space made ready before each read.
const READ_SPACE: usize = 16 << 10;
/// A long answer body is read in steps that grow to this size while they come back full.
const MAX_BODY_READ: usize = 64 << 10;
/// Longest response head taken from a machine.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// How the relay left a connection.
pub(crate) enum Ended {
    /// Closed, or to be closed.
    Closed,
    /// A request the relay does not take: hyper serves the connection from here, starting
    /// with these bytes.
    HandOver(Bytes),
}

/// Serves requests on a downstream HTTP/1 connection while they are plain. `buf` holds the
/// bytes read so far.
pub(crate) async fn serve<IO>(
    io: &mut IO,
    mut buf: BytesMut,
    shared: &Shared,
    worker: &Worker,
    remote: SocketAddr,
    secure: bool,
    drain: &CancellationToken,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.config;
    let downstream = head::Downstream {
        ip: remote.ip().to_canonical().to_string(),
        secure,
    };
    let mut scratch = Scratch {
        request: Vec::new(),
        answer: BytesMut::new(),
        out: Vec::new(),
    };
    // Made once per connection and moved per request: cheaper than a timer per wait.
    let mut head_deadline = Deadline::new(Instant::now() + config.header_read_timeout);
    let mut answer_deadline = Deadline::new(Instant::now() + config.upstream_response_timeout);
    let mut drained = pin!(drain.cancelled());

    loop {
        // Slowloris defence, as on hyper's side: the whole head (and a small body) must
        // arrive within this time from the first wait for it; it also bounds how long an idle
        // connection is kept.
        let mut timer_armed = false;
        let plain = loop {
            match head::request(
                &buf,
                config.max_header_bytes,
                &downstream,
                &mut scratch.request,
            ) {
                head::Request::Plain(plain) => break plain,
                head::Request::Other => return Ended::HandOver(buf.freeze()),
                head::Request::PartialHead | head::Request::PartialBody => {}
            }
            if !timer_armed {
                head_deadline.set(Instant::now() + config.header_read_timeout);
                timer_armed = true;
            }
            buf.reserve(READ_SPACE);
            let idle = buf.is_empty();
            // Bytes that are already there are taken first: the other two are only looked at
            // when the connection has to wait.
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                },
                () = &mut drained, if idle => return Ended::Closed,
                () = head_deadline.passed() => {
                    debug!(%remote, "no complete request within the header read timeout");
                    return Ended::Closed;
                }
            }
        };

        let table = shared.routes.current();
        let Some((route, addr)) = table.pick(&plain.host) else {
            // No machine to relay to. The page is answered here, so a browser that keeps
            // retrying a starting preview stays on this path once the machine is ready.
            let (kind, brand) =
                proxy::page_without_machine(&table, &plain.host, &config.fallback_brand);
            let page = page_bytes(kind, brand, &plain);
            buf.advance(plain.len);
            if io.write_all(&page).await.is_err() || plain.close || drain.is_cancelled() {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            continue;
        };
        answer_deadline.set(Instant::now() + config.upstream_response_timeout);
        let exchange = Exchange {
            io: &mut *io,
            worker,
            addr,
            plain: &plain,
            deadline: &mut answer_deadline,
        };
        let close = match exchange.run(&mut scratch).await {
            Ok(close) => close,
            Err(failed @ (Failed::Unanswered | Failed::TimedOut)) => {
                let kind = match failed {
                    Failed::TimedOut => PageKind::Timeout,
                    _ => proxy::unanswered_page(route),
                };
                let page = page_bytes(kind, &route.brand, &plain);
                if io.write_all(&page).await.is_err() {
                    return Ended::Closed;
                }
                plain.close
            }
            Err(Failed::MidAnswer) => true,
        };
        buf.advance(plain.len);
        if close || drain.is_cancelled() {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Buffers kept for the life of a connection.
struct Scratch {
    /// The request as it goes to the machine.
    request: Vec<u8>,
    /// Bytes read from the machine.
    answer: BytesMut,
    /// Bytes on their way to the client.
    out: Vec<u8>,
}

/// Why an exchange ended early.
enum Failed {
    /// The machine failed before answering; nothing has reached the client.
    Unanswered,
    /// The machine did not answer within `upstream_response_timeout`.
    TimedOut,
    /// The answer was cut short; only closing the connection can tell the client.
    MidAnswer,
}

/// One request's trip to its machine and back.
struct Exchange<'a, IO> {
    io: &'a mut IO,
    worker: &'a Worker,
    addr: SocketAddr,
    plain: &'a Plain,
    /// Passes `upstream_response_timeout` after the request set off.
    deadline: &'a mut Deadline,
}

impl<IO: AsyncWrite + Unpin> Exchange<'_, IO> {
    /// Relays the request and its answer; `Ok(true)` when the connection must close after.
    async fn run(self, scratch: &mut Scratch) -> Result<bool, Failed> {
        let sent = tokio::select! {
            biased;
            sent = send(self.worker, self.addr, self.plain, scratch) => sent,
            () = self.deadline.passed() => {
                warn!(upstream = %self.addr, host = %self.plain.host, "upstream did not answer in time");
                return Err(Failed::TimedOut);
            }
        };
        let (mut upstream, head) = sent.map_err(|e| {
            warn!(upstream = %self.addr, host = %self.plain.host, error = %e, "upstream failed before answering");
            Failed::Unanswered
        })?;

        let mut body = BodyLeft::new(head.framing);
        let Scratch { answer, out, .. } = scratch;
        answer.advance(head.len);
        let (mut take, mut done) = body.step(&answer[..]).map_err(|()| Failed::MidAnswer)?;
        // The head and whatever part of the body came with it leave in one write.
        out.extend_from_slice(&answer[..take]);
        let mut overshoot = answer.len() > take;
        self.io
            .write_all(&out[..])
            .await
            .map_err(|_| Failed::MidAnswer)?;
        let mut space = READ_SPACE;
        while !done {
            answer.clear();
            answer.reserve(space);
            let read = upstream
                .read_buf(answer)
                .await
                .map_err(|_| Failed::MidAnswer)?;
            if read == 0 {
                if head.framing == Framing::UntilClose {
                    break;
                }
                debug!(upstream = %self.addr, "upstream closed mid-answer");
                return Err(Failed::MidAnswer);
            }
            if read >= space {
                space = (space * 2).min(MAX_BODY_READ);
            }
            (take, done) = body.step(&answer[..]).map_err(|()| Failed::MidAnswer)?;
            overshoot |= answer.len() > take;
            self.io
                .write_all(&answer[..take])
                .await
                .map_err(|_| Failed::MidAnswer)?;
        }
        // A machine that sent more than its answer is out of step: its connection goes.
        if head.reusable && !overshoot {
            self.worker.relay.checkin(self.addr, upstream);
        }
        Ok(head.close)
    }
}

/// Sends the request on a kept-alive connection (or a new one) and reads the answer's head
/// into `scratch.answer`, whose downstream form lands in `scratch.out`.
async fn send(
    worker: &Worker,
    addr: SocketAddr,
    plain: &Plain,
    scratch: &mut Scratch,
) -> io::Result<(TcpStream, FinalHead)> {
    let (mut upstream, mut reused) = match worker.relay.checkout(addr) {
        Some(stream) => (stream, true),
        None => (worker.relay.connect(addr).await?, false),
    };
    loop {
        match attempt(&mut upstream, plain, scratch).await {
            Ok(head) => return Ok((upstream, head)),
            // A kept-alive connection the machine closed as the request left: the machine
            // never saw it, so it may go again on a new connection, once, if repeating it
            // would be harmless anyway.
            Err(Attempt::Unanswered(_)) if reused && plain.idempotent => {
                reused = false;
                upstream = worker.relay.connect(addr).await?;
            }
            Err(Attempt::Unanswered(e) | Attempt::Answered(e)) => return Err(e),
        }
    }
}

/// How one attempt failed.
enum Attempt {
    /// Before a byte of answer arrived.
    Unanswered(io::Error),
    Answered(io::Error),
}

async fn attempt(
    upstream: &mut TcpStream,
    plain: &Plain,
    scratch: &mut Scratch,
) -> Result<FinalHead, Attempt> {
    upstream
        .write_all(&scratch.request)
        .await
        .map_err(Attempt::Unanswered)?;
    let answer = &mut scratch.answer;
    answer.clear();
    let mut answered = false;
    loop {
        match head::response(
            &answer[..],
            MAX_RESPONSE_HEAD,
            plain.head_method,
            plain.close,
            &mut scratch.out,
        ) {
            head::Response::Final(head) => return Ok(head),
            head::Response::Interim(len) => {
                answer.advance(len);
                continue;
            }
            head::Response::Invalid => {
                return Err(Attempt::Answered(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the answer is not a valid HTTP/1.1 response head",
                )));
            }
            head::Response::Partial => {}
        }
        answer.reserve(READ_SPACE);
        let read = upstream.read_buf(answer).await;
        let failed = match read {
            Ok(0) => io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering"),
            Ok(_) => {
                answered = true;
                continue;
            }
            Err(e) => e,
        };
        return Err(if answered {
            Attempt::Answered(failed)
        } else {
            Attempt::Unanswered(failed)
        });
    }
}

/// What is left of an answer's body.
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedEnd),
    UntilClose,
}

impl BodyLeft {
    fn new(framing: Framing) -> BodyLeft {
        match framing {
            Framing::Empty => BodyLeft::Length(0),
            Framing::Length(n) => BodyLeft::Length(n),
            Framing::Chunked => BodyLeft::Chunked(ChunkedEnd::new()),
            Framing::UntilClose => BodyLeft::UntilClose,
        }
    }

    /// How many of these bytes (the next of the answer) belong to the body, and whether the
    /// body ends with them.
    fn step(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            BodyLeft::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            BodyLeft::Chunked(end) => match end.feed(bytes) {
                Ok(Some(n)) => Ok((n, true)),
                Ok(None) => Ok((bytes.len(), false)),
                Err(chunked::Malformed) => Err(()),
            },
            BodyLeft::UntilClose => Ok((bytes.len(), false)),
        }
    }
}

/// A page the edge answers `request` with itself, as bytes on the wire (hyper frames the same
/// pages on its side): headers only for a HEAD request.
fn page_bytes(kind: PageKind, brand: &Brand, request: &Plain) -> Vec<u8> {
    let mut request_headers = HeaderMap::new();
    if let Some(accept) = &request.accept {
        request_headers.insert(header::ACCEPT, accept.clone());
    }
    let (parts, body) = pages::response(kind, brand, &request_headers).into_parts();
    let body = match body {
        EdgeBody::Full(body) => body.unwrap_or_default(),
        EdgeBody::Upstream(_) => Bytes::new(),
    };
    let mut out = Vec::with_capacity(body.len() + 512);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_str(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\ndate: {}\r\n",
            body.len(),
            httpdate::fmt_http_date(SystemTime::now())
        )
        .as_bytes(),
    );
    if request.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !request.head_method {
        out.extend_from_slice(&body);
    }
    out
}
