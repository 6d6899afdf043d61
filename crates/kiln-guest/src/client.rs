//! The async client the host uses to reach a guest agent.
//!
//! Every call opens a fresh connection, sends one [`Request`] and reads the answer (see
//! [`crate::protocol`]). Connections are cheap (a unix socket or a local TCP hop) and this keeps
//! a broken or cancelled call from affecting any other: dropping a returned stream closes its
//! connection, and the agent then cancels the work (kills the `exec`, stops following logs).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{SinkExt, Stream, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Framed;

use crate::Io;
use crate::protocol::AgentToken;
use crate::protocol::{
    DirEntry, ErrorBody, ErrorKind, ExecRequest, ExitInfo, FileStat, Frame, FrameCodec, FrameError,
    FrameKind, HealthInfo, MAX_FRAME_LEN, PortStatus, ProcessInfo, ProcessSpec, Request, Response,
};

/// The largest `Data` frame the client sends when uploading; bigger body chunks are split.
const UPLOAD_FRAME_LEN: usize = 1024 * 1024;

/// How long to look for the agent's error after an upload write failed.
const ERROR_GRACE: Duration = Duration::from_secs(1);

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A unix stream socket (the `process` driver; tests).
    Unix(PathBuf),
    /// A TCP address (the `qemu` driver with user networking).
    Tcp(SocketAddr),
    /// A guest vsock port behind Firecracker's host-side unix socket `uds` (the `firecracker`
    /// driver); see [`crate::vsock`].
    Vsock {
        /// The vsock device's `uds_path` on the host; always absolute.
        uds: PathBuf,
        /// The guest port the agent listens on.
        port: u32,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
            Endpoint::Vsock { uds, port } => write!(f, "vsock:{}:{port}", uds.display()),
        }
    }
}

/// Why a string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an agent endpoint; expected `unix:PATH`, `tcp:IP:PORT` or `vsock:/ABSOLUTE/UDS:PORT`"
)]
pub struct ParseEndpointError(String);

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    /// Parses `unix:PATH` or `tcp:IP:PORT` (the syntax of the agent's `--listen`), or
    /// `vsock:UDS:PORT` with an absolute `UDS` (a CID-style `vsock:3:52` is not an endpoint the
    /// host can reach: Firecracker's vsock is a unix socket on the host).
    fn from_str(s: &str) -> Result<Endpoint, ParseEndpointError> {
        let bad = || ParseEndpointError(s.to_owned());
        match s.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => Ok(Endpoint::Unix(PathBuf::from(path))),
            Some(("tcp", addr)) => addr.parse().map(Endpoint::Tcp).map_err(|_| bad()),
            Some(("vsock", rest)) => {
                let (uds, port) = rest.rsplit_once(':').ok_or_else(bad)?;
                let port = port.parse().map_err(|_| bad())?;
                let uds = PathBuf::from(uds);
                if !uds.is_absolute() {
                    return Err(bad());
                }
                Ok(Endpoint::Vsock { uds, port })
            }
            _ => Err(bad()),
        }
    }
}

/// Why a call to the agent failed.
///
/// The variants that carry a `String` mirror [`ErrorKind`]: the agent understood the request
/// and refused it, and the string is its explanation, fit to show to a user.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection could be made: the socket is gone, nothing listens, or the connect timed
    /// out. The machine is down or still booting.
    #[error("the guest agent is unreachable")]
    Unreachable(#[source] io::Error),
    /// The agent did not answer within the client's request timeout.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke after it was made.
    #[error("the connection to the guest agent broke")]
    Transport(#[source] io::Error),
    /// The agent answered something this client does not understand, or a stream ended
    /// without its final frame.
    #[error("guest agent protocol error: {0}")]
    Protocol(String),
    /// The file, directory or process does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The path is absolute, escapes the workspace, or escapes it through a symbolic link.
    #[error("{0}")]
    InvalidPath(String),
    /// A file was expected, a directory was found.
    #[error("{0}")]
    IsADirectory(String),
    /// A directory was expected, something else was found.
    #[error("{0}")]
    NotADirectory(String),
    /// The current state forbids the request.
    #[error("{0}")]
    Conflict(String),
    /// The request was malformed or had invalid values.
    #[error("{0}")]
    InvalidRequest(String),
    /// The agent failed to carry out a valid request.
    #[error("{0}")]
    Io(String),
    /// The agent is too old to know the request.
    #[error("{0}")]
    Unsupported(String),
    /// The agent refused the connection's token.
    #[error("{0}")]
    Unauthorized(String),
    /// The body given to [`AgentClient::put_file`] failed; nothing was written.
    #[error("reading the upload body failed")]
    Body(#[source] io::Error),
}

impl From<ErrorBody> for AgentError {
    fn from(body: ErrorBody) -> AgentError {
        let ErrorBody { kind, message } = body;
        match kind {
            ErrorKind::NotFound => AgentError::NotFound(message),
            ErrorKind::InvalidPath => AgentError::InvalidPath(message),
            ErrorKind::IsADirectory => AgentError::IsADirectory(message),
            ErrorKind::NotADirectory => AgentError::NotADirectory(message),
            ErrorKind::Conflict => AgentError::Conflict(message),
            ErrorKind::InvalidRequest => AgentError::InvalidRequest(message),
            ErrorKind::Io => AgentError::Io(message),
            ErrorKind::Unsupported => AgentError::Unsupported(message),
            ErrorKind::Unauthorized => AgentError::Unauthorized(message),
            ErrorKind::Other => AgentError::Protocol(format!("unknown error kind: {message}")),
        }
    }
}

impl From<FrameError> for AgentError {
    fn from(err: FrameError) -> AgentError {
        match err {
            FrameError::Io(io) => AgentError::Transport(io),
            other => AgentError::Protocol(crate::error_chain(&other)),
        }
    }
}

/// One event of a running `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of standard output.
    Stdout(Bytes),
    /// A chunk of standard error.
    Stderr(Bytes),
    /// How the command ended; always the last event.
    Exit(ExitInfo),
}

/// The collected result of [`AgentClient::exec_collect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything the command wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to standard error.
    pub stderr: Vec<u8>,
    /// How the command ended.
    pub exit: ExitInfo,
}

/// The output of a running `exec`: [`ExecEvent`]s, ending with [`ExecEvent::Exit`].
///
/// Dropping the stream before the end disconnects, and the agent kills the command's process
/// group. A stream that ends without `Exit` yields an error last.
pub struct ExecStream {
    pid: Option<u32>,
    inner: BoxStream<'static, Result<ExecEvent, AgentError>>,
}

impl ExecStream {
    /// The command's pid inside the machine; `None` when the program could not be started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecStream")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Stream for ExecStream {
    type Item = Result<ExecEvent, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A stream of bytes from the agent: a file's contents or a process's log.
///
/// It ends cleanly only when the agent marked the end; a connection that breaks first, or an
/// error the agent reports mid-way, is yielded as an error.
pub struct ByteStream {
    size: Option<u64>,
    inner: BoxStream<'static, Result<Bytes, AgentError>>,
}

impl ByteStream {
    /// The file's size when the agent opened it; `None` for logs.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Reads the whole stream into memory.
    pub async fn collect_bytes(mut self) -> Result<Vec<u8>, AgentError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

type Conn = Framed<Box<dyn Io>, FrameCodec>;

/// A handle to one guest agent. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: Endpoint,
    connect_timeout: Duration,
    request_timeout: Duration,
    token: Option<AgentToken>,
}

impl AgentClient {
    /// How long a connect may take before the agent counts as unreachable. A unix socket that
    /// is gone fails at once; this bounds a TCP peer that does not answer.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

    /// How long the agent may take to give its first answer. Streams (exec output, files,
    /// logs) are not bounded once they started; stopping a process may take the agent's 5 s
    /// grace period.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

    /// A client for the agent at `endpoint`, with the default timeouts.
    pub fn new(endpoint: Endpoint) -> AgentClient {
        AgentClient {
            endpoint,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            token: None,
        }
    }

    /// The same client, opening every connection with `token` (see the protocol's
    /// authentication section); for agents reached over a network.
    pub fn with_token(self, token: AgentToken) -> AgentClient {
        AgentClient {
            token: Some(token),
            ..self
        }
    }

    /// The same client with other timeouts (see [`Self::DEFAULT_CONNECT_TIMEOUT`] and
    /// [`Self::DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_timeouts(self, connect: Duration, request: Duration) -> AgentClient {
        AgentClient {
            connect_timeout: connect,
            request_timeout: request,
            ..self
        }
    }

    /// Where this client connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Identity and uptime of the agent; the readiness probe of a machine.
    pub async fn health(&self) -> Result<HealthInfo, AgentError> {
        match self.unary(&Request::Health).await? {
            Response::Health(info) => Ok(info),
            other => Err(unexpected("health", &other)),
        }
    }

    /// Starts a command and streams its output.
    ///
    /// Returns once the agent started the command. A bad `cwd` or an invalid request is an
    /// error here; a program that does not exist is not: the stream then carries a message on
    /// standard error and an exit with `not_found` and code 127.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecStream, AgentError> {
        let (conn, response) = self.open(&Request::Exec(request)).await?;
        let Response::ExecStarted { pid } = response else {
            return Err(unexpected("exec", &response));
        };
        let inner = futures::stream::unfold(Some(conn), |conn| async move {
            let mut conn = conn?;
            let event = match conn.next().await {
                None => Err(AgentError::Protocol(
                    "the connection closed before the command's exit status".into(),
                )),
                Some(Err(err)) => Err(err.into()),
                Some(Ok(frame)) => match frame.kind {
                    FrameKind::Stdout => {
                        return Some((Ok(ExecEvent::Stdout(frame.payload)), Some(conn)));
                    }
                    FrameKind::Stderr => {
                        return Some((Ok(ExecEvent::Stderr(frame.payload)), Some(conn)));
                    }
                    FrameKind::Control => match frame.parse_control::<Response>() {
                        Ok(Response::Exit(info)) => Ok(ExecEvent::Exit(info)),
                        Ok(Response::Error(body)) => Err(body.into()),
                        Ok(other) => Err(unexpected("exec", &other)),
                        Err(err) => Err(err.into()),
                    },
                    kind => Err(unexpected_frame("exec", kind)),
                },
            };
            // After the exit status, or any error, the stream is over.
            Some((event, None))
        });
        Ok(ExecStream {
            pid,
            inner: inner.boxed(),
        })
    }

    /// Runs a command to completion and collects its output in memory.
    pub async fn exec_collect(&self, request: ExecRequest) -> Result<ExecOutput, AgentError> {
        let mut stream = self.exec(request).await?;
        let mut output = ExecOutput::default();
        while let Some(event) = stream.next().await {
            match event? {
                ExecEvent::Stdout(chunk) => output.stdout.extend_from_slice(&chunk),
                ExecEvent::Stderr(chunk) => output.stderr.extend_from_slice(&chunk),
                ExecEvent::Exit(exit) => {
                    output.exit = exit;
                    return Ok(output);
                }
            }
        }
        Err(AgentError::Protocol(
            "the exec stream ended without an exit status".into(),
        ))
    }

    /// Writes `body` to `path` (relative to the workspace), creating parent directories, and
    /// returns the number of bytes written.
    ///
    /// The file appears under its name only once it is complete: a failed or interrupted
    /// upload leaves the previous contents (or nothing) in place. `mode` is the permission
    /// bits, `0o644` when `None`.
    pub async fn put_file(
        &self,
        path: &str,
        mode: Option<u32>,
        mut body: impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin,
    ) -> Result<u64, AgentError> {
        let request = Request::PutFile {
            path: path.to_owned(),
            mode,
        };
        let (mut conn, response) = self.open(&request).await?;
        if response != Response::Ready {
            return Err(unexpected("put_file", &response));
        }
        while let Some(chunk) = body.next().await {
            // Returning drops the connection without `End`, so the agent discards the upload.
            let mut chunk = chunk.map_err(AgentError::Body)?;
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(UPLOAD_FRAME_LEN));
                if let Err(err) = conn.send(Frame::data(piece)).await {
                    return Err(error_after_failed_send(&mut conn, err).await);
                }
            }
        }
        if let Err(err) = conn.send(Frame::end()).await {
            return Err(error_after_failed_send(&mut conn, err).await);
        }
        match self.read_response(&mut conn).await? {
            Response::Written { size } => Ok(size),
            other => Err(unexpected("put_file", &other)),
        }
    }

    /// Streams the contents of the file at `path`.
    ///
    /// A missing file, a directory or an invalid path is an error here, before any byte is
    /// streamed.
    pub async fn get_file(&self, path: &str) -> Result<ByteStream, AgentError> {
        let request = Request::GetFile {
            path: path.to_owned(),
        };
        let (conn, response) = self.open(&request).await?;
        let Response::File { size } = response else {
            return Err(unexpected("get_file", &response));
        };
        Ok(data_stream(conn, Some(size), "get_file"))
    }

    /// A deterministic tar of the directory at `path` (`""` is the workspace root).
    pub async fn archive(&self, path: &str) -> Result<ByteStream, AgentError> {
        let request = Request::Archive {
            path: path.to_owned(),
        };
        let (conn, response) = self.open(&request).await?;
        let Response::Archive = response else {
            return Err(unexpected("archive", &response));
        };
        Ok(data_stream(conn, None, "archive"))
    }

    /// Lists the directory at `path` (`""` is the workspace root), sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, AgentError> {
        let request = Request::ListDir {
            path: path.to_owned(),
        };
        match self.unary(&request).await? {
            Response::Entries { entries } => Ok(entries),
            other => Err(unexpected("list_dir", &other)),
        }
    }

    /// Describes the entry at `path`, without following a final symbolic link.
    pub async fn stat(&self, path: &str) -> Result<FileStat, AgentError> {
        let request = Request::Stat {
            path: path.to_owned(),
        };
        match self.unary(&request).await? {
            Response::Stat(stat) => Ok(stat),
            other => Err(unexpected("stat", &other)),
        }
    }

    /// Removes the entry at `path`; a non-empty directory only with `recursive`. A symbolic
    /// link is removed itself, never its target.
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<(), AgentError> {
        let request = Request::Delete {
            path: path.to_owned(),
            recursive,
        };
        match self.unary(&request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Starts a supervised process, first stopping one of the same name if there is one.
    ///
    /// A program that cannot be started is not an error: the process is reported in
    /// [`crate::protocol::ProcessStatus::Backoff`] with `last_error` saying why, and retried.
    pub async fn process_start(&self, spec: ProcessSpec) -> Result<ProcessInfo, AgentError> {
        match self.unary(&Request::ProcessStart(spec)).await? {
            Response::Process(info) => Ok(info),
            other => Err(unexpected("process_start", &other)),
        }
    }

    /// Lists the supervised processes, sorted by name.
    pub async fn process_list(&self) -> Result<Vec<ProcessInfo>, AgentError> {
        match self.unary(&Request::ProcessList).await? {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected("process_list", &other)),
        }
    }

    /// Stops a supervised process (SIGTERM to its process group, SIGKILL after 5 s) and
    /// forgets it, logs included.
    pub async fn process_stop(&self, name: &str) -> Result<(), AgentError> {
        let request = Request::ProcessStop {
            name: name.to_owned(),
        };
        match self.unary(&request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("process_stop", &other)),
        }
    }

    /// The captured output (standard output and error interleaved) of a supervised process.
    ///
    /// Without `follow` the stream ends after the output buffered so far; with `follow` it
    /// keeps yielding new output until dropped or until the process is stopped.
    pub async fn process_logs(&self, name: &str, follow: bool) -> Result<ByteStream, AgentError> {
        let request = Request::ProcessLogs {
            name: name.to_owned(),
            follow,
        };
        let (conn, response) = self.open(&request).await?;
        if response != Response::Logs {
            return Err(unexpected("process_logs", &response));
        }
        Ok(data_stream(conn, None, "process_logs"))
    }

    /// Whether something inside the machine accepts TCP connections on `port`, and whether
    /// only on loopback.
    pub async fn port_check(&self, port: u16) -> Result<PortStatus, AgentError> {
        match self.unary(&Request::PortCheck { port }).await? {
            Response::Port(status) => Ok(status),
            other => Err(unexpected("port_check", &other)),
        }
    }

    /// Asks the agent to stop every process gracefully and exit; as PID 1, that ends the
    /// machine. Returns once the agent acknowledged.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        match self.unary(&Request::Shutdown).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected("shutdown", &other)),
        }
    }

    async fn connect(&self) -> Result<Conn, AgentError> {
        let connect = async {
            Ok::<Box<dyn Io>, io::Error>(match &self.endpoint {
                Endpoint::Unix(path) => Box::new(UnixStream::connect(path).await?),
                Endpoint::Tcp(addr) => {
                    let stream = TcpStream::connect(addr).await?;
                    // Control frames are small; do not let Nagle hold them back.
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                Endpoint::Vsock { uds, port } => Box::new(crate::vsock::connect(uds, *port).await?),
            })
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                AgentError::Unreachable(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {} timed out after {:?}",
                        self.endpoint, self.connect_timeout
                    ),
                ))
            })?
            .map_err(AgentError::Unreachable)?;
        Ok(Framed::new(stream, FrameCodec))
    }

    /// Connects, sends `request` and reads the agent's first answer, turning an error answer
    /// into `Err`.
    async fn open(&self, request: &Request) -> Result<(Conn, Response), AgentError> {
        let frame = Frame::control(request)?;
        if frame.payload.len() > MAX_FRAME_LEN {
            return Err(AgentError::InvalidRequest(format!(
                "the request is {} bytes, over the limit of {MAX_FRAME_LEN}; \
                 upload large standard input as a file instead",
                frame.payload.len()
            )));
        }
        let mut conn = self.connect().await?;
        if let Some(token) = &self.token {
            // Queued, not flushed: the token and the request leave in one write.
            let auth = Request::Auth {
                token: token.clone(),
            };
            conn.feed(Frame::control(&auth)?).await?;
        }
        conn.send(frame).await?;
        let response = self.read_response(&mut conn).await?;
        Ok((conn, response))
    }

    async fn unary(&self, request: &Request) -> Result<Response, AgentError> {
        self.open(request).await.map(|(_, response)| response)
    }

    async fn read_response(&self, conn: &mut Conn) -> Result<Response, AgentError> {
        let frame = tokio::time::timeout(self.request_timeout, conn.next())
            .await
            .map_err(|_| AgentError::Timeout(self.request_timeout))?;
        match frame {
            None => Err(AgentError::Protocol(
                "the agent closed the connection without answering".into(),
            )),
            Some(frame) => match frame?.parse_control::<Response>()? {
                Response::Error(body) => Err(body.into()),
                response => Ok(response),
            },
        }
    }
}

/// The `Data` frames of `conn` up to `End`, as a [`ByteStream`].
fn data_stream(conn: Conn, size: Option<u64>, op: &'static str) -> ByteStream {
    let inner = futures::stream::unfold(Some(conn), move |conn| async move {
        let mut conn = conn?;
        let item = match conn.next().await {
            None => Err(AgentError::Protocol(format!(
                "{op}: the connection closed before the end of the data"
            ))),
            Some(Err(err)) => Err(err.into()),
            Some(Ok(frame)) => match frame.kind {
                FrameKind::Data => return Some((Ok(frame.payload), Some(conn))),
                FrameKind::End => return None,
                FrameKind::Control => match frame.parse_control::<Response>() {
                    Ok(Response::Error(body)) => Err(body.into()),
                    Ok(other) => Err(unexpected(op, &other)),
                    Err(err) => Err(err.into()),
                },
                kind => Err(unexpected_frame(op, kind)),
            },
        };
        Some((item, None))
    });
    ByteStream {
        size,
        inner: inner.boxed(),
    }
}

/// After a write to the agent failed, the agent has usually said why before it closed (disk
/// full, say): prefer its explanation to the bare broken pipe.
async fn error_after_failed_send(conn: &mut Conn, err: FrameError) -> AgentError {
    if let Ok(Some(Ok(frame))) = tokio::time::timeout(ERROR_GRACE, conn.next()).await
        && let Ok(Response::Error(body)) = frame.parse_control::<Response>()
    {
        return body.into();
    }
    err.into()
}

fn unexpected(op: &str, response: &Response) -> AgentError {
    AgentError::Protocol(format!("unexpected answer to {op}: {response:?}"))
}

fn unexpected_frame(op: &str, kind: FrameKind) -> AgentError {
    AgentError::Protocol(format!("unexpected {kind:?} frame in the answer to {op}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        let cases = [
            (
                "unix:/run/agent.sock",
                Some(Endpoint::Unix("/run/agent.sock".into())),
            ),
            (
                "tcp:127.0.0.1:7000",
                Some(Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], 7000)))),
            ),
            (
                "tcp:[::1]:7000",
                Some(Endpoint::Tcp("[::1]:7000".parse().expect("addr"))),
            ),
            ("unix:", None),
            ("tcp:localhost:7000", None),
            (
                "vsock:/run/fc/v.sock:1024",
                Some(Endpoint::Vsock {
                    uds: "/run/fc/v.sock".into(),
                    port: 1024,
                }),
            ),
            ("vsock:3:52", None),
            ("vsock:/run/v.sock", None),
            ("vsock:/run/v.sock:x", None),
            ("/run/agent.sock", None),
        ];
        for (text, want) in cases {
            let got = text.parse::<Endpoint>().ok();
            assert_eq!(got, want, "{text}");
            if let Some(endpoint) = got {
                assert_eq!(endpoint.to_string(), text);
            }
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = AgentClient::new(Endpoint::Unix(dir.path().join("gone.sock")));
        let started = std::time::Instant::now();
        let err = client.health().await.expect_err("no agent");
        assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
