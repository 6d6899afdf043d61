//! Where the agent listens: an inherited socket, a unix socket path, a TCP address or a vsock
//! port.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::socket::{
    AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};

use crate::Io;

/// The value of `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `fd:N`: a listening socket (unix or TCP) inherited as descriptor `N`. The `process`
    /// driver binds the socket on the host side and passes it in, so the host can connect
    /// without entering the machine's namespaces.
    Fd(RawFd),
    /// `unix:PATH`: bind a unix socket at `PATH` (a stale socket there is replaced).
    Unix(PathBuf),
    /// `tcp:ADDR:PORT`: bind a TCP socket (VM drivers with user networking).
    Tcp(SocketAddr),
    /// `vsock:PORT`: bind an `AF_VSOCK` stream socket on `PORT` for any CID (the `firecracker`
    /// driver, whose host side reaches it through the vsock device's unix socket).
    Vsock(u32),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Fd(fd) => write!(f, "fd:{fd}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "tcp:{addr}"),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

/// Why a string is not a [`ListenAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a listen address; expected `fd:N` (N >= 3), `unix:PATH`, `tcp:IP:PORT` or `vsock:PORT`"
)]
pub struct ParseListenAddrError(String);

impl FromStr for ListenAddr {
    type Err = ParseListenAddrError;

    fn from_str(s: &str) -> Result<ListenAddr, ParseListenAddrError> {
        let bad = || ParseListenAddrError(s.to_owned());
        match s.split_once(':') {
            Some(("fd", n)) => match n.parse::<RawFd>() {
                // 0-2 are standard streams, never a listening socket.
                Ok(fd) if fd >= 3 => Ok(ListenAddr::Fd(fd)),
                _ => Err(bad()),
            },
            Some(("unix", path)) if !path.is_empty() => Ok(ListenAddr::Unix(PathBuf::from(path))),
            Some(("tcp", addr)) => addr.parse().map(ListenAddr::Tcp).map_err(|_| bad()),
            Some(("vsock", port)) => port.parse().map(ListenAddr::Vsock).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// Takes ownership of the inherited listening socket `fd`.
///
/// Call once, early in `main`: the descriptor number belongs to whoever started us, and this
/// makes the process its one owner.
#[allow(unsafe_code)]
pub fn adopt_listening_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // getsockname on a raw number is harmless when the descriptor is closed or not a socket:
    // it fails with EBADF or ENOTSOCK, which is the check we want before taking ownership.
    getsockname::<SockaddrStorage>(fd).map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("--listen fd:{fd}: not an open socket ({errno})"),
        )
    })?;
    // SAFETY: getsockname just proved `fd` is an open descriptor. By the `--listen fd:N`
    // contract our parent handed it to this process, and nothing else in the process refers to
    // that number (this runs once, before any other descriptor handling), so the OwnedFd is its
    // only owner and closes it exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Commands the agent runs must never inherit the agent's socket (they could accept the
    // host's connections); init clears the flag again only for its serving child.
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(io::Error::from)?;
    if !listening {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--listen fd:{fd}: the socket is not listening"),
        ));
    }
    Ok(owned)
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// A unix stream socket; `remove` is the path to unlink when the listener is dropped.
    Unix {
        /// The socket.
        listener: tokio::net::UnixListener,
        /// The socket file this process created, if any.
        remove: Option<PathBuf>,
    },
    /// A TCP socket.
    Tcp(tokio::net::TcpListener),
    /// An `AF_VSOCK` stream socket.
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    /// Binds `addr`; for [`ListenAddr::Fd`] pass the descriptor from [`adopt_listening_fd`].
    /// Must run inside a tokio runtime.
    pub fn bind(addr: &ListenAddr, inherited: Option<OwnedFd>) -> io::Result<Listener> {
        match (addr, inherited) {
            (ListenAddr::Fd(_), Some(fd)) => Listener::from_fd(fd),
            (ListenAddr::Fd(fd), None) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--listen fd:{fd}: the descriptor was not adopted"),
            )),
            (ListenAddr::Unix(path), _) => {
                // A socket left by an earlier run would make bind fail with EADDRINUSE; only a
                // socket is removed, never another kind of file.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                Ok(Listener::Unix {
                    listener,
                    remove: Some(path.clone()),
                })
            }
            (ListenAddr::Tcp(addr), _) => {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?))
            }
            (ListenAddr::Vsock(port), _) => {
                let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                tokio_vsock::VsockListener::bind(addr)
                    .map(Listener::Vsock)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("bind vsock port {port} (is the guest kernel's vsock driver loaded?): {e}"),
                        )
                    })
            }
        }
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Listener> {
        let family = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(io::Error::from)?
            .family();
        match family {
            Some(AddressFamily::Unix) => {
                let listener = std::os::unix::net::UnixListener::from(fd);
                listener.set_nonblocking(true)?;
                Ok(Listener::Unix {
                    listener: tokio::net::UnixListener::from_std(listener)?,
                    remove: None,
                })
            }
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                let listener = std::net::TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                Ok(Listener::Tcp(tokio::net::TcpListener::from_std(listener)?))
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the inherited socket has unsupported address family {other:?}"),
            )),
        }
    }

    /// Waits for the next connection.
    pub(crate) async fn accept(&self) -> io::Result<Box<dyn Io>> {
        match self {
            Listener::Unix { listener, .. } => Ok(Box::new(listener.accept().await?.0)),
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream))
            }
            Listener::Vsock(listener) => Ok(Box::new(listener.accept().await?.0)),
        }
    }

    /// Where the listener listens, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { listener, .. } => match listener.local_addr() {
                Ok(addr) => match addr.as_pathname() {
                    Some(path) => format!("unix:{}", path.display()),
                    None => "unix:(unnamed)".to_owned(),
                },
                Err(_) => "unix:(unknown)".to_owned(),
            },
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("tcp:{addr}"),
                Err(_) => "tcp:(unknown)".to_owned(),
            },
            Listener::Vsock(listener) => match listener.local_addr() {
                Ok(addr) => format!("vsock:{}", addr.port()),
                Err(_) => "vsock:(unknown)".to_owned(),
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix {
            remove: Some(path), ..
        } = self
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        let cases = [
            ("fd:3", Some(ListenAddr::Fd(3))),
            (
                "unix:/run/a.sock",
                Some(ListenAddr::Unix("/run/a.sock".into())),
            ),
            (
                "tcp:0.0.0.0:7000",
                Some(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 7000)))),
            ),
            ("vsock:1024", Some(ListenAddr::Vsock(1024))),
            ("vsock:x", None),
            ("vsock:3:52", None),
            ("fd:1", None),
            ("fd:x", None),
            ("unix:", None),
            ("tcp:7000", None),
            ("7000", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ListenAddr>().ok(), want, "{text}");
        }
    }

    #[tokio::test]
    async fn a_vsock_listener_binds_its_port() {
        // Binding needs only the host kernel's AF_VSOCK core, which every VM-capable kernel
        // has; connecting would need a vsock transport, which a plain host may lack.
        let listener = match Listener::bind(&ListenAddr::Vsock(47_011), None) {
            Ok(listener) => listener,
            Err(err) if err.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
                eprintln!("skipped: this kernel has no AF_VSOCK ({err})");
                return;
            }
            Err(err) => panic!("bind vsock: {err}"),
        };
        assert_eq!(listener.describe(), "vsock:47011");
    }

    #[test]
    fn a_closed_descriptor_is_not_adopted() {
        let err = adopt_listening_fd(987).expect_err("fd 987 is not open");
        assert!(err.to_string().contains("fd:987"), "{err}");
    }
}
