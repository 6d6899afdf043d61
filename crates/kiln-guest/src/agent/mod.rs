//! The serving side of the agent: accepts connections and answers one request on each.
//!
//! [`serve`] is the whole agent minus process-level concerns (PID 1 duties live in
//! [`crate::init`], argument parsing in [`crate::cli`]); tests and other embeddings call it
//! directly.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    DATA_CHUNK_LEN, ErrorBody, ErrorKind, Frame, FrameCodec, FrameError, FrameKind, HealthInfo,
    PROTOCOL_VERSION, Request, Response,
};
use crate::{Io, error_chain};

mod exec;
mod files;
pub mod listen;
pub mod logs;
pub mod port;
pub mod spawn;
pub mod supervisor;
pub mod workspace;

pub use listen::{ListenAddr, Listener, adopt_listening_fd};
pub use spawn::RunAs;

pub use crate::protocol::AgentToken;

use self::exec::ExecGroups;
use self::spawn::UserCommands;
use self::supervisor::Supervisor;
use self::workspace::{PathError, Workspace, WorkspacePath};

/// How long a new connection may take to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed accept (e.g. out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the agent needs to know to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The workspace root; every file path is confined to it.
    pub workspace: PathBuf,
    /// Reported by `health`.
    pub machine_id: Option<String>,
    /// The user commands run as, when the agent runs as root.
    pub run_as: RunAs,
    /// Environment added to every command, over the base environment.
    pub env: Vec<(String, String)>,
    /// When set, every connection must begin with [`Request::Auth`] carrying this token.
    pub token: Option<AgentToken>,
}

/// Why the agent could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The workspace is missing, not a directory, or the kernel cannot confine paths in it.
    #[error("cannot use the workspace {path}")]
    Workspace {
        /// The `--workspace` given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot handle termination signals")]
    Signals(#[source] io::Error),
}

/// The agent's shared state.
#[derive(Debug)]
pub(crate) struct Agent {
    machine_id: Option<String>,
    boot_id: String,
    started: Instant,
    workspace: Workspace,
    commands: Arc<UserCommands>,
    supervisor: Supervisor,
    execs: Arc<ExecGroups>,
    shutdown: CancellationToken,
    token: Option<AgentToken>,
}

impl Agent {
    /// Runs a workspace operation on the blocking pool: they are plain system calls.
    async fn blocking<T, F>(self: &Arc<Self>, op: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Workspace) -> Result<T, PathError> + Send + 'static,
    {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || op(&agent.workspace))
            .await
            .map_err(|err| ErrorBody::new(ErrorKind::Io, format!("file operation failed: {err}")))?
            .map_err(Failure::from)
    }

    /// The host path of the working directory `raw` (relative to the workspace).
    async fn dir_path(self: &Arc<Self>, raw: &str) -> Result<PathBuf, Failure> {
        let path = WorkspacePath::parse(raw)?;
        self.blocking(move |workspace| workspace.dir_path(&path))
            .await
    }

    fn health(&self) -> HealthInfo {
        HealthInfo {
            machine_id: self.machine_id.clone(),
            boot_id: self.boot_id.clone(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            oom_kills: std::fs::read_to_string("/proc/vmstat")
                .ok()
                .and_then(|text| crate::protocol::parse_oom_kills(&text)),
        }
    }
}

/// Serves `listener` until `shutdown` is cancelled or a host sends `shutdown`; then stops the
/// supervised processes gracefully, kills running `exec`s and returns.
pub async fn serve(
    listener: Listener,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Files and directories the agent creates get predictable permissions whatever umask the
    // machine's init left.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let run_as = if nix::unistd::geteuid().is_root() {
        Some(config.run_as)
    } else {
        tracing::info!(
            run_as = %config.run_as,
            "not running as root; commands run as the agent's own user"
        );
        None
    };
    let workspace =
        Workspace::open(&config.workspace, run_as.map(|r| (r.uid, r.gid))).map_err(|source| {
            ServeError::Workspace {
                path: config.workspace.clone(),
                source,
            }
        })?;
    let commands = Arc::new(UserCommands {
        env: config.env,
        run_as,
    });
    let agent = Arc::new(Agent {
        machine_id: config.machine_id,
        boot_id: format!("{:032x}", rand::random::<u128>()),
        started: Instant::now(),
        workspace,
        supervisor: Supervisor::new(commands.clone()),
        commands,
        execs: Arc::default(),
        shutdown: shutdown.clone(),
        token: config.token,
    });
    tracing::info!(
        listen = %listener.describe(),
        workspace = %agent.workspace.root().display(),
        boot_id = %agent.boot_id,
        "guest agent serving"
    );

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    tokio::spawn(handle_connection(agent.clone(), stream));
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    tracing::info!("shutting down: stopping supervised processes");
    drop(listener);
    agent.supervisor.shutdown().await;
    agent.execs.kill_all();
    tracing::info!("guest agent stopped");
    Ok(())
}

/// [`serve`] until SIGTERM or SIGINT (what init forwards when the machine is stopped).
pub async fn serve_until_signalled(
    listener: Listener,
    config: AgentConfig,
) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};

    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        on_signal.cancel();
    });
    serve(listener, config, shutdown).await
}

pub(crate) type Rx = FramedRead<ReadHalf<Box<dyn Io>>, FrameCodec>;
pub(crate) type Tx = FramedWrite<WriteHalf<Box<dyn Io>>, FrameCodec>;

/// How a request ended other than successfully.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Tell the host with an error response.
    Reply(ErrorBody),
    /// The host is gone or the stream broke: there is nobody to tell.
    Gone,
}

impl From<ErrorBody> for Failure {
    fn from(body: ErrorBody) -> Failure {
        Failure::Reply(body)
    }
}

impl From<PathError> for Failure {
    fn from(err: PathError) -> Failure {
        Failure::Reply(err.into())
    }
}

impl From<FrameError> for Failure {
    fn from(err: FrameError) -> Failure {
        tracing::debug!(err = %error_chain(&err), "connection lost");
        Failure::Gone
    }
}

/// Sends one frame.
pub(crate) async fn send(tx: &mut Tx, frame: Frame) -> Result<(), Failure> {
    Ok(tx.send(frame).await?)
}

/// Sends a control response.
pub(crate) async fn reply(tx: &mut Tx, response: &Response) -> Result<(), Failure> {
    send(tx, Frame::control(response)?).await
}

/// Resolves when the host closes its side of the connection. The host sends nothing after its
/// request, so anything it still sends is ignored.
pub(crate) async fn host_gone(rx: &mut Rx) {
    while let Some(Ok(_)) = rx.next().await {}
}

async fn handle_connection(agent: Arc<Agent>, stream: Box<dyn Io>) {
    let (read, write) = tokio::io::split(stream);
    let mut rx = FramedRead::new(read, FrameCodec);
    let mut tx = FramedWrite::new(write, FrameCodec);
    let outcome = match authenticated_request(&agent, &mut rx).await {
        Ok(request) => dispatch(&agent, request, &mut rx, &mut tx).await,
        Err(failure) => Err(failure),
    };
    if let Err(Failure::Reply(body)) = outcome {
        tracing::debug!(kind = ?body.kind, message = %body.message, "request failed");
        if let Ok(frame) = Frame::control(&Response::Error(body)) {
            let _ = tx.send(frame).await;
        }
    }
    // Flush and half-close, so the host sees the end of the answer at once.
    let _ = tx.close().await;
}

/// The connection's request, after checking its [`Request::Auth`] frame when the agent has a
/// token. An agent without a token skips such a frame.
async fn authenticated_request(agent: &Agent, rx: &mut Rx) -> Result<Request, Failure> {
    let unauthorized = || {
        Failure::Reply(ErrorBody::new(
            ErrorKind::Unauthorized,
            "this agent requires its machine's token as the first frame of every connection",
        ))
    };
    match (read_request(rx).await?, &agent.token) {
        (Request::Auth { token }, Some(expected)) if expected.matches(token.expose()) => {
            read_request(rx).await
        }
        (Request::Auth { .. }, None) => read_request(rx).await,
        (_, Some(_)) => Err(unauthorized()),
        (request, None) => Ok(request),
    }
}

async fn read_request(rx: &mut Rx) -> Result<Request, Failure> {
    let invalid =
        |message: String| Failure::Reply(ErrorBody::new(ErrorKind::InvalidRequest, message));
    let frame = match tokio::time::timeout(REQUEST_READ_TIMEOUT, rx.next()).await {
        Err(_) | Ok(None) | Ok(Some(Err(FrameError::Io(_)))) => return Err(Failure::Gone),
        Ok(Some(Err(err))) => return Err(invalid(error_chain(&err))),
        Ok(Some(Ok(frame))) => frame,
    };
    if frame.kind != FrameKind::Control {
        return Err(invalid(format!(
            "the first frame must be a control frame holding a request, not {:?}",
            frame.kind
        )));
    }
    serde_json::from_slice::<Request>(&frame.payload).map_err(|err| {
        let message = format!("malformed request: {err}");
        // The op is the enum's tag: an unknown one means the host is newer than this agent.
        if err.to_string().contains("unknown variant") {
            Failure::Reply(ErrorBody::new(ErrorKind::Unsupported, message))
        } else {
            invalid(message)
        }
    })
}

async fn dispatch(
    agent: &Arc<Agent>,
    request: Request,
    rx: &mut Rx,
    tx: &mut Tx,
) -> Result<(), Failure> {
    match request {
        Request::Health => reply(tx, &Response::Health(agent.health())).await,
        Request::Exec(request) => exec::exec(agent, request, rx, tx).await,
        Request::PutFile { path, mode } => files::put_file(agent, path, mode, rx, tx).await,
        Request::GetFile { path } => files::get_file(agent, path, tx).await,
        Request::ListDir { path } => files::list_dir(agent, path, tx).await,
        Request::Archive { path } => files::archive(agent, path, tx).await,
        Request::Stat { path } => files::stat(agent, path, tx).await,
        Request::Delete { path, recursive } => files::delete(agent, path, recursive, tx).await,
        Request::ProcessStart(spec) => {
            supervisor::validate_spec(&spec)?;
            let cwd = agent
                .dir_path(spec.cwd.as_deref().unwrap_or_default())
                .await?;
            let info = agent.supervisor.start(spec, cwd).await?;
            reply(tx, &Response::Process(info)).await
        }
        Request::ProcessList => {
            let processes = agent.supervisor.list();
            reply(tx, &Response::Processes { processes }).await
        }
        Request::ProcessStop { name } => {
            agent.supervisor.stop(&name).await?;
            reply(tx, &Response::Ok).await
        }
        Request::ProcessLogs { name, follow } => process_logs(agent, &name, follow, rx, tx).await,
        Request::PortCheck { port } => {
            if port == 0 {
                return Err(
                    ErrorBody::new(ErrorKind::InvalidRequest, "port 0 cannot be checked").into(),
                );
            }
            reply(tx, &Response::Port(port::check(port).await)).await
        }
        Request::Auth { .. } => Err(ErrorBody::new(
            ErrorKind::InvalidRequest,
            "auth may only be the first frame of a connection",
        )
        .into()),
        Request::Shutdown => {
            tracing::info!("shutdown requested by the host");
            reply(tx, &Response::Ok).await?;
            let _ = tx.close().await;
            agent.shutdown.cancel();
            Ok(())
        }
    }
}

/// `process_logs`: what the ring holds, then (with `follow`) new output as it arrives.
async fn process_logs(
    agent: &Arc<Agent>,
    name: &str,
    follow: bool,
    rx: &mut Rx,
    tx: &mut Tx,
) -> Result<(), Failure> {
    let log = agent.supervisor.log(name)?;
    // Subscribe before the first read, so that nothing appended in between goes unnoticed.
    let mut changed = log.subscribe();
    reply(tx, &Response::Logs).await?;
    let mut offset = log.start();
    // Without `follow`, what was there when asked: a chatty process must not keep the answer
    // open forever.
    let until = if follow { u64::MAX } else { log.end() };
    loop {
        changed.borrow_and_update();
        let max = usize::try_from(until.saturating_sub(offset)).unwrap_or(usize::MAX);
        let chunk = log.read(offset, max.min(DATA_CHUNK_LEN));
        if !chunk.data.is_empty() {
            offset = chunk.next;
            send(tx, Frame::data(chunk.data)).await?;
            continue;
        }
        if !follow || chunk.closed {
            break;
        }
        tokio::select! {
            woke = changed.changed() => if woke.is_err() { break },
            () = host_gone(rx) => return Err(Failure::Gone),
            () = agent.shutdown.cancelled() => break,
        }
    }
    send(tx, Frame::end()).await
}
