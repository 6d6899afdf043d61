//! The one error type of the runtime crate: every message says what failed and, where the
//! operator can fix it, what to do.

use std::{io, path::PathBuf, time::Duration};

/// What can go wrong while managing machines, their network or their images.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A machine id that cannot be used as a file, cgroup and namespace name.
    #[error("invalid machine id {id:?}: {reason}")]
    InvalidMachineId {
        /// The offending id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An image reference that does not name a known image definition.
    #[error("unknown image {reference:?}: known images are {known}")]
    UnknownImage {
        /// The reference as given.
        reference: String,
        /// The images this build knows, for the message.
        known: String,
    },

    /// The driver configuration cannot work.
    #[error("invalid runtime configuration: {0}")]
    InvalidConfig(String),

    /// A host program the driver needs is not installed.
    #[error("{program} is not installed: run scripts/setup.sh (Debian package {package})")]
    MissingProgram {
        /// The program looked for on PATH.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// The process driver was started without root privileges.
    #[error(
        "the process driver needs root (namespaces, cgroups, bridges); run as root or pick another driver"
    )]
    NotRoot,

    /// A cgroup v1 controller the driver needs is not mounted.
    #[error(
        "cgroup v1 controller {controller:?} is not mounted at {path}; the process driver needs the memory, pids and cpu controllers"
    )]
    CgroupUnavailable {
        /// The controller name.
        controller: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// Every host address of an org's slice is taken.
    #[error("no free address in {slice}: stop or destroy machines of this org")]
    AddressExhausted {
        /// The slice, e.g. `10.88.3.0/24`.
        slice: String,
    },

    /// Every /24 slice of the node subnet is assigned to an org.
    #[error("no free /24 left in {subnet} for org {org_id}: configure a larger subnet")]
    SubnetExhausted {
        /// The configured node subnet.
        subnet: String,
        /// The org that needed a slice.
        org_id: String,
    },

    /// A host program exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the operator to retry by hand.
        command: String,
        /// The exit status as text.
        status: String,
        /// What the program printed on stderr (trimmed).
        stderr: String,
    },

    /// A file-system or process operation failed.
    #[error("cannot {what}")]
    Io {
        /// What was being done, e.g. "create /var/lib/kiln/machines".
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A state file exists but cannot be read as JSON.
    #[error("corrupt state file {path}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// Building an image failed.
    #[error("building image {image} failed: {detail} (build log: {log})")]
    ImageBuild {
        /// The image, e.g. `default:1`.
        image: String,
        /// What went wrong.
        detail: String,
        /// The build log to read.
        log: PathBuf,
    },

    /// An image directory exists but misses files every machine needs.
    #[error("image {image} at {path} is incomplete: {detail}; delete the directory to rebuild it")]
    ImageBroken {
        /// The image.
        image: String,
        /// The root file system.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },

    /// The machine's launcher or agent exited before the agent answered.
    #[error("machine {id} failed to boot ({status}); console:\n{console}")]
    BootFailed {
        /// The machine.
        id: String,
        /// How the launcher ended.
        status: String,
        /// The tail of the machine's console log.
        console: String,
    },

    /// The agent did not answer health in time.
    #[error("machine {id} did not answer health within {after:?}; console:\n{console}")]
    BootTimeout {
        /// The machine.
        id: String,
        /// How long the driver waited.
        after: Duration,
        /// The tail of the machine's console log.
        console: String,
    },

    /// The agent answered with another machine's identity.
    #[error("the agent at {endpoint} is machine {found}, expected {expected}")]
    AgentMismatch {
        /// Where the agent was asked (`unix:PATH`, `tcp:ADDR`).
        endpoint: String,
        /// The id it reported.
        found: String,
        /// The id the driver expected.
        expected: String,
    },

    /// The `firecracker` driver failed; the inner error says what to fix.
    #[error(transparent)]
    Firecracker(#[from] crate::firecracker::FirecrackerError),

    /// The machine's processes did not go away after SIGKILL.
    #[error("machine {id} still has processes {pids:?} after SIGKILL")]
    StopFailed {
        /// The machine.
        id: String,
        /// Host pids still in its cgroup.
        pids: Vec<i32>,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Attaches "what was being done" to I/O results.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`RuntimeError::Io`] with a lazily built description.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, RuntimeError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, RuntimeError> {
        self.map_err(|source| RuntimeError::io(what(), source))
    }
}

impl<T> IoContext<T> for Result<T, nix::errno::Errno> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, RuntimeError> {
        self.map_err(|errno| RuntimeError::io(what(), io::Error::from(errno)))
    }
}
