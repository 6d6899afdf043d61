//! The guest agent that runs as PID 1 inside every machine, its wire protocol and its client.
//!
//! Kiln reaches a machine only through its network address and this agent, never through host
//! paths or host pids, so every runtime driver (`process`, `qemu`, `firecracker`) is
//! interchangeable: the drivers differ only in how the agent's byte stream is reached (an
//! inherited unix socket, TCP, Firecracker's vsock).
//!
//! # Parts
//!
//! - [`protocol`]: frames, [`protocol::Request`], [`protocol::Response`] and the data types.
//!   The wire format is documented there.
//! - [`client`]: [`AgentClient`], the async client the host uses.
//! - [`agent`]: the serving side: exec, files confined to the workspace, supervised processes
//!   with restart and captured logs, port checks, health.
//! - [`init`]: what the binary does as PID 1: re-executes itself as the serving child, reaps
//!   every orphan, forwards termination signals and exits with the child.
//! - [`cli`]: the `kiln-guest` command line.
//! - [`vsock`]: the host side of Firecracker's vsock (`CONNECT <port>` over a unix socket).
//! - [`cli`]: the `kiln-guest` command line; [`config`]: its `--config` file.
//!
//! # The protocol in one paragraph
//!
//! One request per connection. Frames are `kind: u8`, `length: u32` big-endian, payload; kind 1
//! is a JSON control message, 2/3 stdout/stderr chunks, 4 a data chunk, 5 end-of-data. The host
//! sends one JSON [`protocol::Request`] (`{"op":"exec",...}`), followed for `put_file` by data
//! frames and an end frame once the agent answered `ready`. The agent answers with one JSON
//! [`protocol::Response`] (`{"type":...}`), for streaming requests followed by output or data
//! frames and a final control or end frame; any failure is `{"type":"error","kind":...,
//! "message":...}`. [`protocol::PROTOCOL_VERSION`] is reported by `health`.
//!
//! # Invariants
//!
//! - A file operation never touches anything outside the workspace: paths are checked
//!   lexically and then resolved by the kernel with `openat2(RESOLVE_BENEATH)`, so neither
//!   `..` nor a symbolic link (even one swapped in concurrently) leads out. The agent therefore
//!   needs Linux 5.6 or later and refuses to start without `openat2`.
//! - Every command the agent runs gets a clean environment, the unprivileged `--run-as` user
//!   (when the agent is root) and its own process group, which is killed as a whole.
//! - The agent never fails a request because of what a command did: a missing program is an
//!   exit with code 127, not an agent error.

// One `unsafe` in the crate: taking ownership of the inherited listening socket
// (`agent::listen::adopt_listening_fd`), allowed locally with its SAFETY argument.
#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod client;
pub mod config;
pub mod init;
pub mod protocol;
pub mod vsock;

pub use client::{
    AgentClient, AgentError, ByteStream, Endpoint, ExecEvent, ExecOutput, ExecStream,
};
pub use protocol::{
    DirEntry, EntryKind, ErrorBody, ErrorKind, ExecRequest, ExitInfo, FileStat, HealthInfo,
    PortStatus, ProcessInfo, ProcessSpec, ProcessStatus,
};

/// A bidirectional byte stream the protocol can run over (unix socket, TCP, ...).
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// `err` and its sources as one line, for messages that cross the wire as plain strings.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
