//! What can go wrong while running Firecracker machines; every message says what the operator
//! can do about it.

use std::{io, path::PathBuf};

/// Errors of the `firecracker` driver (wrapped in [`crate::RuntimeError::Firecracker`]).
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    /// The Firecracker (or jailer) binary was not found.
    #[error(
        "the {what} binary {path} was not found: install Firecracker and set {env} to its path (or put `{name}` on PATH)"
    )]
    BinaryMissing {
        /// `firecracker` or `jailer`.
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// The program name searched on PATH.
        name: &'static str,
        /// The environment variable that overrides it.
        env: &'static str,
    },

    /// `/dev/kvm` is absent or cannot be opened read-write.
    #[error(
        "{path} cannot be opened ({source}): load the kvm module (kvm_intel or kvm_amd) and run Kiln as a user with access to {path}, or pick another driver (KILN_RUNTIME=qemu or process)"
    )]
    KvmUnavailable {
        /// The device path.
        path: PathBuf,
        /// Why opening it failed.
        #[source]
        source: io::Error,
    },

    /// A boot file of the guest image is missing.
    #[error(
        "the guest {what} {path} does not exist: build the guest image (`kiln image build`) or fix the configured path"
    )]
    BootFileMissing {
        /// `kernel`, `initrd`, `root file system` or `workspace drive`.
        what: &'static str,
        /// The missing file.
        path: PathBuf,
    },

    /// The API socket could not be reached.
    #[error("cannot connect to Firecracker's API socket {socket}")]
    ApiConnect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Firecracker refused an API call.
    #[error("Firecracker refused {method} {path} ({status}): {fault_message}")]
    Api {
        /// The HTTP method.
        method: String,
        /// The API path.
        path: String,
        /// The HTTP status line.
        status: String,
        /// Firecracker's explanation.
        fault_message: String,
    },

    /// An API call broke before Firecracker answered.
    #[error("Firecracker API call {method} {path} failed: {detail}")]
    ApiTransport {
        /// The HTTP method.
        method: String,
        /// The API path.
        path: String,
        /// What went wrong.
        detail: String,
    },

    /// Firecracker exited while the machine was being configured or booted.
    #[error(
        "firecracker for machine {id} exited ({status}) before the guest answered; its output:\n{console}"
    )]
    Exited {
        /// The machine.
        id: String,
        /// How the process ended.
        status: String,
        /// The tail of its output (Firecracker's messages and the guest's serial console).
        console: String,
    },

    /// Firecracker never opened its API socket.
    #[error(
        "firecracker for machine {id} did not open its API socket {socket} within {secs} s; its output:\n{console}"
    )]
    NoApiSocket {
        /// The machine.
        id: String,
        /// The socket that never took a connection.
        socket: PathBuf,
        /// How long the driver waited.
        secs: u64,
        /// The tail of its output.
        console: String,
    },

    /// The guest booted (or tried to) but its agent never answered on the vsock.
    #[error(
        "machine {id}: the guest never answered within {secs} s (its agent should listen on vsock port {port}); if the kernel hangs, this host cannot run this guest under KVM. Serial console tail:\n{console}"
    )]
    GuestNeverAnswered {
        /// The machine.
        id: String,
        /// The boot deadline in seconds.
        secs: u64,
        /// The vsock port the agent should listen on.
        port: u32,
        /// The tail of the serial console.
        console: String,
    },

    /// A unix socket path would exceed Linux's 107-byte limit.
    #[error(
        "socket path {path} is longer than 107 bytes; configure a shorter state or chroot base directory"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
    },

    /// A boot file could not be linked or copied into the jailer's chroot.
    #[error("cannot place {from} into the jail as {to}: {detail}")]
    Stage {
        /// The file on the host.
        from: PathBuf,
        /// Its path in the chroot.
        to: PathBuf,
        /// What went wrong and what to do.
        detail: String,
    },
}
