//! The wire protocol between the host and the guest agent: frames, requests and responses.
//!
//! # Framing
//!
//! The agent speaks over any reliable byte stream (a unix socket, TCP, later vsock). The stream
//! carries *frames*:
//!
//! ```text
//! +--------+----------------------+-------------------+
//! | kind   | length               | payload           |
//! | 1 byte | 4 bytes, big-endian  | `length` bytes    |
//! +--------+----------------------+-------------------+
//! ```
//!
//! | kind | name      | payload                                                   |
//! |------|-----------|-----------------------------------------------------------|
//! | 1    | `Control` | one JSON object: a [`Request`] (host → agent) or a [`Response`] (agent → host) |
//! | 2    | `Stdout`  | a chunk of a command's standard output                    |
//! | 3    | `Stderr`  | a chunk of a command's standard error                     |
//! | 4    | `Data`    | a chunk of file contents or log output                    |
//! | 5    | `End`     | empty: the end of a sequence of `Data` frames             |
//!
//! A frame's payload is at most [`MAX_FRAME_LEN`] bytes; a peer that announces more is
//! disconnected. Unknown frame kinds are a protocol error.
//!
//! # Conversation
//!
//! One connection carries exactly one request. The host connects, sends one `Control` frame
//! holding a [`Request`], and reads until the agent has answered and closes. Concurrency comes
//! from opening several connections. After its request (and its upload, if any) the host sends
//! nothing more but keeps its side open: the agent treats the end of the host's stream as "the
//! host went away" and cancels what it was doing for it (it kills a running `exec`, stops
//! following logs, discards an unfinished upload).
//!
//! Every failure is a `Control` frame holding [`Response::Error`], after which the agent closes
//! the connection. Failures are answered before any streaming starts wherever possible, so that
//! the host can map them (for example to HTTP 404 or 400) before it commits to a stream.
//!
//! | request                      | agent answers                                                                 |
//! |------------------------------|-------------------------------------------------------------------------------|
//! | [`Request::Health`]          | [`Response::Health`]                                                          |
//! | [`Request::Exec`]            | [`Response::ExecStarted`], then `Stdout`/`Stderr` frames in the order the output was read, then [`Response::Exit`] |
//! | [`Request::PutFile`]         | [`Response::Ready`]; the host then sends `Data` frames and one `End`; the agent answers [`Response::Written`] |
//! | [`Request::GetFile`]         | [`Response::File`], then `Data` frames, then `End`                            |
//! | [`Request::ListDir`]         | [`Response::Entries`]                                                         |
//! | [`Request::Stat`]            | [`Response::Stat`]                                                            |
//! | [`Request::Delete`]          | [`Response::Ok`]                                                              |
//! | [`Request::ProcessStart`]    | [`Response::Process`]                                                         |
//! | [`Request::ProcessList`]     | [`Response::Processes`]                                                       |
//! | [`Request::ProcessStop`]     | [`Response::Ok`]                                                              |
//! | [`Request::ProcessLogs`]     | [`Response::Logs`], then `Data` frames; `End` once the buffered log is sent, or, when following, once the process is stopped |
//! | [`Request::Archive`]         | [`Response::Archive`], then `Data` frames of a tar, then `End`                 |
//! | [`Request::PortCheck`]       | [`Response::Port`]                                                            |
//! | [`Request::Shutdown`]        | [`Response::Ok`], then the agent stops its processes and exits                |
//! | [`Request::Auth`]            | nothing; the real request follows in the next frame (see below)               |
//!
//! # Authentication
//!
//! An agent reached over a network (the VM drivers' TCP channel) is given a per-machine token
//! (`kiln-guest --config`, never on the command line) and then requires every connection to
//! begin with a [`Request::Auth`] frame carrying it; the comparison takes constant time. A
//! connection without it, or with another token, gets [`ErrorKind::Unauthorized`] and is
//! closed. An agent without a token (the `process` driver's unix socket, which only root can
//! open) accepts and ignores the frame, so one client works with both.
//!
//! An error in the middle of a stream (a read error while sending a file) is sent as
//! [`Response::Error`] in place of the rest of the stream. A stream that ends without its
//! terminating frame (`End` or `Exit`) was cut short and must not be trusted as complete.
//!
//! # Versioning
//!
//! [`PROTOCOL_VERSION`] is reported by [`Request::Health`]. It is raised whenever a change would
//! make an old peer misbehave; adding an optional field does not raise it. Unknown JSON fields
//! are ignored (rather than refused, as the public API does) so that a newer host can still
//! drive an older agent for everything both understand; an unknown `op` is answered with
//! [`ErrorKind::Unsupported`].
//!
//! # Paths
//!
//! File paths are relative to the workspace root and are confined to it: absolute paths, `..`
//! components that would leave the root, and symbolic links that resolve outside it are refused
//! with [`ErrorKind::InvalidPath`]. `""` and `"."` name the root itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol version this crate speaks; reported by [`Request::Health`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest payload a single frame may carry.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The size of the `Data`, `Stdout` and `Stderr` chunks this crate sends.
///
/// Receivers accept any size up to [`MAX_FRAME_LEN`]; this only keeps memory per connection
/// small and latency of streamed output low.
pub const DATA_CHUNK_LEN: usize = 64 * 1024;

/// Bytes in a frame header: one kind byte and a four-byte length.
const HEADER_LEN: usize = 5;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON [`Request`] or [`Response`].
    Control = 1,
    /// A chunk of standard output of an `exec`.
    Stdout = 2,
    /// A chunk of standard error of an `exec`.
    Stderr = 3,
    /// A chunk of file contents or log output.
    Data = 4,
    /// The end of a sequence of `Data` frames; the payload is empty.
    End = 5,
}

impl TryFrom<u8> for FrameKind {
    type Error = FrameError;

    fn try_from(value: u8) -> Result<Self, FrameError> {
        Ok(match value {
            1 => FrameKind::Control,
            2 => FrameKind::Stdout,
            3 => FrameKind::Stderr,
            4 => FrameKind::Data,
            5 => FrameKind::End,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// One frame of the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload, at most [`MAX_FRAME_LEN`] bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A `Control` frame holding `message` as JSON.
    pub fn control<T: Serialize>(message: &T) -> Result<Frame, FrameError> {
        let json = serde_json::to_vec(message).map_err(FrameError::Json)?;
        Ok(Frame {
            kind: FrameKind::Control,
            payload: Bytes::from(json),
        })
    }

    /// A `Data` frame.
    pub fn data(payload: Bytes) -> Frame {
        Frame {
            kind: FrameKind::Data,
            payload,
        }
    }

    /// The `End` frame.
    pub fn end() -> Frame {
        Frame {
            kind: FrameKind::End,
            payload: Bytes::new(),
        }
    }

    /// Decodes the JSON of a `Control` frame.
    pub fn parse_control<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        if self.kind != FrameKind::Control {
            return Err(FrameError::Unexpected(self.kind));
        }
        serde_json::from_slice(&self.payload).map_err(FrameError::Json)
    }
}

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("stream i/o failed")]
    Io(#[from] std::io::Error),
    /// The peer sent a kind byte this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The peer announced a payload larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// A `Control` frame did not hold the expected JSON.
    #[error("malformed control message")]
    Json(#[source] serde_json::Error),
    /// A frame of this kind was not expected here.
    #[error("unexpected {0:?} frame")]
    Unexpected(FrameKind),
}

/// The [`tokio_util::codec`] codec for [`Frame`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = FrameKind::try_from(src[0])?;
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        Ok(Some(Frame { kind, payload }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.payload.len();
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge { len });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u8(frame.kind as u8);
        // `len <= MAX_FRAME_LEN < u32::MAX`, checked above.
        dst.put_u32(len as u32);
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

/// A request from the host; the first and only `Control` frame the host sends on a connection.
///
/// JSON: an object with `"op"` naming the request in snake case, plus its fields, e.g.
/// `{"op":"get_file","path":"src/main.rs"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the agent alive, and which agent is it.
    Health,
    /// Run a command to completion, streaming its output.
    Exec(ExecRequest),
    /// Write a file atomically; its contents follow as `Data` frames after [`Response::Ready`].
    PutFile {
        /// Path relative to the workspace.
        path: String,
        /// Permission bits (at most `0o777`); `0o644` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Read a file; its contents follow as `Data` frames.
    GetFile {
        /// Path relative to the workspace.
        path: String,
    },
    /// List a directory.
    ListDir {
        /// Path relative to the workspace; `""` is the workspace root.
        path: String,
    },
    /// Describe one entry without following a final symbolic link.
    Stat {
        /// Path relative to the workspace.
        path: String,
    },
    /// Remove a file, a symbolic link (never its target) or a directory.
    Delete {
        /// Path relative to the workspace; the root itself cannot be deleted.
        path: String,
        /// Remove a non-empty directory with everything in it.
        #[serde(default)]
        recursive: bool,
    },
    /// Start (or replace) a supervised long-running process.
    ProcessStart(ProcessSpec),
    /// List the supervised processes.
    ProcessList,
    /// Stop a supervised process and forget it.
    ProcessStop {
        /// The process's name.
        name: String,
    },
    /// Read the captured output of a supervised process.
    ProcessLogs {
        /// The process's name.
        name: String,
        /// Keep streaming new output until the host disconnects or the process is stopped.
        #[serde(default)]
        follow: bool,
    },
    /// A deterministic tar of a directory of the workspace (sorted entries, zeroed times and
    /// owners, `.kilnignore` honoured), for publishing.
    Archive {
        /// The directory, relative to the workspace; `""` is the whole workspace.
        #[serde(default)]
        path: String,
    },
    /// Is something accepting TCP connections on this port inside the machine.
    PortCheck {
        /// The TCP port.
        port: u16,
    },
    /// Stop every process gracefully and exit the agent (and with it the machine's init).
    Shutdown,
    /// Proves the host may talk to this agent. When the agent was given a token it must be the
    /// first frame of every connection, followed by the real request in the next frame; the
    /// agent does not answer a valid one, and answers a missing or wrong one with an
    /// `unauthorized` error and closes. An agent without a token skips it.
    Auth {
        /// The machine's agent token.
        token: AgentToken,
    },
}

/// A per-machine agent token. Its `Debug` form hides the value, so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentToken(String);

impl AgentToken {
    /// Wraps a token value.
    pub fn new(value: impl Into<String>) -> AgentToken {
        AgentToken(value.into())
    }

    /// The token's value, for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `offered` is this token, in time that depends only on the lengths, so that a
    /// peer cannot learn the token byte by byte from response times.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        let diff = a
            .iter()
            .zip(b)
            .fold(u8::from(a.len() != b.len()), |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentToken(..)")
    }
}

/// A command to run to completion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments. A program without `/` is looked up in `PATH`.
    pub cmd: Vec<String>,
    /// Working directory relative to the workspace; the workspace root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment added on top of the agent's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the command (its whole process group) after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes fed to the command's standard input, which is then closed; base64 in JSON.
    /// Standard input is empty (`/dev/null`) when absent. Limited by [`MAX_FRAME_LEN`]: larger
    /// inputs belong in a file.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub stdin: Option<Vec<u8>>,
}

impl ExecRequest {
    /// A request to run `cmd` in the workspace root with no extra environment, no timeout and
    /// empty standard input.
    pub fn new<S: Into<String>>(cmd: impl IntoIterator<Item = S>) -> ExecRequest {
        ExecRequest {
            cmd: cmd.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, when the command exited normally (127 when the program was not found).
    pub code: Option<i32>,
    /// The signal that killed the command, when a signal did.
    pub signal: Option<i32>,
    /// The command ran past its `timeout_ms` and was killed.
    pub timed_out: bool,
    /// The program could not be found; nothing ran.
    pub not_found: bool,
}

impl ExitInfo {
    /// The command exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A long-running process for the agent to keep alive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// A unique name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
    pub name: String,
    /// Program and arguments, as for [`ExecRequest::cmd`].
    pub cmd: Vec<String>,
    /// Working directory relative to the workspace; the workspace root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Environment added on top of the agent's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The TCP port the process is expected to serve; informational, reported back in
    /// [`ProcessInfo`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A response from the agent: the JSON of a `Control` frame it sends.
///
/// JSON: an object with `"type"` naming the response in snake case, plus its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Health`].
    Health(HealthInfo),
    /// The command was started (or could not be, and the output says why); output frames and
    /// [`Response::Exit`] follow.
    ExecStarted {
        /// The command's pid inside the machine; absent when the program could not be started.
        pid: Option<u32>,
    },
    /// How the command ended; the last frame of an `exec`.
    Exit(ExitInfo),
    /// The upload target is ready: send `Data` frames and one `End`.
    Ready,
    /// The upload was written and is now visible under its name.
    Written {
        /// Bytes written.
        size: u64,
    },
    /// The file is open; its `Data` frames and `End` follow.
    File {
        /// The file's size when it was opened.
        size: u64,
    },
    /// Answer to [`Request::ListDir`], sorted by name.
    Entries {
        /// The directory's entries, without `.` and `..`.
        entries: Vec<DirEntry>,
    },
    /// Answer to [`Request::Stat`].
    Stat(FileStat),
    /// Answer to [`Request::ProcessStart`].
    Process(ProcessInfo),
    /// Answer to [`Request::ProcessList`], sorted by name.
    Processes {
        /// Every supervised process.
        processes: Vec<ProcessInfo>,
    },
    /// The log follows as `Data` frames.
    Logs,
    /// Answer to [`Request::Archive`]; `Data` frames of the tar and `End` follow.
    Archive,
    /// Answer to [`Request::PortCheck`].
    Port(PortStatus),
    /// The request was carried out ([`Request::Delete`], [`Request::ProcessStop`],
    /// [`Request::Shutdown`]).
    Ok,
    /// The request failed; the agent closes the connection after this frame.
    Error(ErrorBody),
}

/// Identity and liveness of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// The `--machine-id` the agent was started with.
    pub machine_id: Option<String>,
    /// Random per agent start: a change means the machine (or its agent) restarted.
    pub boot_id: String,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// The agent's crate version.
    pub version: String,
    /// The agent's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Processes the kernel's OOM killer has killed since the kernel booted (`oom_kill` of
    /// `/proc/vmstat`). Inside a VM that is the machine's own count; inside a `process`
    /// machine it is the host's, and the driver uses its cgroup instead. Absent when the
    /// kernel does not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// The `oom_kill` counter of a `/proc/vmstat` text.
pub fn parse_oom_kills(vmstat: &str) -> Option<u64> {
    vmstat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// What kind of file system object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed when listing or stat-ing).
    Symlink,
    /// Anything else: a FIFO, a socket, a device.
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name (not a path). Names that are not UTF-8 are shown lossily.
    pub name: String,
    /// What the entry is; symbolic links are not followed.
    pub kind: EntryKind,
    /// Size in bytes for files and symbolic links (the length of the target); 0 otherwise.
    pub size: u64,
}

/// Metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// The normalized path relative to the workspace (`""` for the root).
    pub path: String,
    /// What the entry is; a final symbolic link is not followed.
    pub kind: EntryKind,
    /// Size in bytes for files and symbolic links; 0 otherwise.
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Last modification, in milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// The state of a supervised process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// The process is running.
    Running,
    /// The process exited (or could not start) and is waiting to be restarted.
    Backoff,
    /// The process is being stopped, or the agent is shutting down.
    Stopped,
}

/// A supervised process as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The process's unique name.
    pub name: String,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// The port from the [`ProcessSpec`].
    pub port: Option<u16>,
    /// Current state.
    pub status: ProcessStatus,
    /// How many times the process was restarted after exiting or failing to start.
    pub restarts: u32,
    /// Exit code of the last run, if it exited normally.
    pub last_exit_code: Option<i32>,
    /// Signal that ended the last run, if a signal did.
    pub last_exit_signal: Option<i32>,
    /// Why the last start attempt failed (e.g. the program was not found).
    pub last_error: Option<String>,
    /// Pid inside the machine of the running process.
    pub pid_in_machine: Option<u32>,
}

/// Whether a port answers, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// Something accepted a TCP connection on the port on at least one address.
    pub answering: bool,
    /// It answered on loopback but on none of the machine's other addresses, so nothing
    /// outside the machine (the edge) can reach it: the server binds `127.0.0.1`/`localhost`
    /// where it should bind `0.0.0.0`.
    pub loopback_only: bool,
    /// The addresses that answered.
    pub addresses: Vec<IpAddr>,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file, directory or process does not exist.
    NotFound,
    /// The path is absolute, leaves the workspace, or resolves outside it through a symbolic
    /// link; the message says which.
    InvalidPath,
    /// A file was expected, a directory was found.
    IsADirectory,
    /// A directory was expected, something else was found.
    NotADirectory,
    /// The current state forbids the request (e.g. deleting a non-empty directory without
    /// `recursive`).
    Conflict,
    /// The request is malformed or its values are invalid.
    InvalidRequest,
    /// The agent failed to carry out a valid request (disk full, permission denied, ...).
    Io,
    /// The agent does not know this request (it is older than the host).
    Unsupported,
    /// The connection did not start with the machine's agent token.
    Unauthorized,
    /// A kind this version does not know (the agent is newer than the host).
    #[serde(other)]
    Other,
}

/// The body of [`Response::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A sentence for humans saying what went wrong.
    pub message: String,
}

impl ErrorBody {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            kind,
            message: message.into(),
        }
    }
}

/// Serde helper: `Option<Vec<u8>>` as a base64 string (standard alphabet, padded).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_vmstat() {
        assert_eq!(
            parse_oom_kills("nr_free_pages 1\noom_kill 3\nother 9\n"),
            Some(3)
        );
        assert_eq!(parse_oom_kills("nr_free_pages 1\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }

    fn roundtrip(frame: Frame) -> Frame {
        let mut buf = BytesMut::new();
        FrameCodec.encode(frame, &mut buf).expect("encode");
        FrameCodec
            .decode(&mut buf)
            .expect("decode")
            .expect("complete frame")
    }

    #[test]
    fn frames_round_trip_and_wait_for_the_whole_payload() {
        let frame = Frame::data(Bytes::from_static(b"hello"));
        assert_eq!(roundtrip(frame.clone()), frame);

        let mut buf = BytesMut::new();
        FrameCodec.encode(frame.clone(), &mut buf).expect("encode");
        let mut partial = buf.split_to(7);
        assert_eq!(FrameCodec.decode(&mut partial).expect("decode"), None);
        partial.unsplit(buf);
        assert_eq!(
            FrameCodec.decode(&mut partial).expect("decode"),
            Some(frame)
        );
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut buf = BytesMut::new();
        buf.put_u8(4);
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));

        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0][..]);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Err(FrameError::UnknownKind(9))
        ));
    }

    #[test]
    fn requests_have_a_stable_json_shape() {
        let cases: Vec<(Request, &str)> = vec![
            (Request::Health, r#"{"op":"health"}"#),
            (
                Request::Exec(ExecRequest {
                    stdin: Some(b"hi".to_vec()),
                    ..ExecRequest::new(["cat"])
                }),
                r#"{"op":"exec","cmd":["cat"],"stdin":"aGk="}"#,
            ),
            (
                Request::Delete {
                    path: "a".into(),
                    recursive: true,
                },
                r#"{"op":"delete","path":"a","recursive":true}"#,
            ),
            (
                Request::PortCheck { port: 80 },
                r#"{"op":"port_check","port":80}"#,
            ),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).expect("serialize"), json);
            let back: Request = serde_json::from_str(json).expect("deserialize");
            assert_eq!(back, request);
        }
    }

    #[test]
    fn unknown_error_kinds_and_fields_are_tolerated() {
        let body: Response = serde_json::from_str(
            r#"{"type":"error","kind":"quota_exceeded","message":"m","extra":1}"#,
        )
        .expect("deserialize");
        assert_eq!(body, Response::Error(ErrorBody::new(ErrorKind::Other, "m")));
    }
}
