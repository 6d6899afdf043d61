//! Sandboxes: exec, files and supervised processes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/apps/{app}/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Image as `name` or `name:version`; the default image when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Virtual CPUs (CPU shares on the process driver).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Environment of every command run in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Lifecycle of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// The machine is booting.
    Starting,
    /// The guest agent answers.
    Running,
    /// The machine could not be started; see `error`.
    Failed,
    /// Deletion is in progress.
    Deleting,
}

/// A sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    /// `sbx_…`
    pub id: String,
    /// Owning app, `app_…`.
    pub app: String,
    /// Current status.
    pub status: SandboxStatus,
    /// Image as `name:version`.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory limit in MiB.
    pub memory_mib: u32,
    /// The machine's address on the node network, once running.
    pub address: Option<String>,
    /// Why the sandbox failed, when it did.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/sandboxes/{sbx}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments; the program is looked up on `PATH`.
    pub cmd: Vec<String>,
    /// Working directory relative to the workspace root.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this many seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Bytes fed to standard input (UTF-8).
    #[serde(default)]
    pub stdin: Option<String>,
}

/// Answer of a non-streaming exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit code; `128 + signal` when killed by a signal, as shells report it.
    pub exit_code: i32,
    /// Captured standard output (lossy UTF-8).
    pub stdout: String,
    /// Captured standard error (lossy UTF-8).
    pub stderr: String,
    /// Signal that killed the command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why the command ended abnormally: `out_of_memory`, `timeout`, `not_found`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of a streaming exec (`Accept: application/x-ndjson`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExecEvent {
    /// A chunk of standard output.
    Stdout {
        /// The chunk (lossy UTF-8).
        stdout: String,
    },
    /// A chunk of standard error.
    Stderr {
        /// The chunk (lossy UTF-8).
        stderr: String,
    },
    /// The end of the command; always the last line.
    Exit {
        /// As in [`ExecResult::exit_code`].
        exit_code: i32,
        /// Signal that killed the command, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// As in [`ExecResult::reason`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// Answer of a file write.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    /// Path relative to the workspace root.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
}

/// Body of `POST /v1/sandboxes/{sbx}/processes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Unique name within the sandbox, e.g. `dev`.
    pub name: String,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// Working directory relative to the workspace root.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Port the process serves, if any.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A supervised process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Process {
    /// Name within the sandbox.
    pub name: String,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// Port the process serves, if any.
    pub port: Option<u16>,
    /// `running`, `backoff` (waiting to restart after a crash) or `stopped`.
    pub status: String,
    /// How often it was restarted after exiting.
    pub restarts: u32,
    /// Exit code of the last run, if it ended.
    pub last_exit_code: Option<i32>,
}
