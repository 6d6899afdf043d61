//! One worker's kept-alive machine connections for the relay: plain TCP streams, idle ones
//! kept per machine address, newest first.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per machine; more are closed.
const MAX_IDLE_PER_MACHINE: usize = 256;

pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// The most recently used idle connection to `addr` that is still open.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some((stream, since)) = list.pop() {
            if now.duration_since(since) <= self.idle_timeout && is_quiet(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection that has finished an exchange cleanly.
    pub(crate) fn checkin(&self, addr: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_MACHINE {
            list.push((stream, Instant::now()));
        }
    }

    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        // Small requests should leave at once, not wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Closes idle connections that expired or that their machine closed.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|(stream, since)| {
                now.duration_since(*since) <= self.idle_timeout && is_quiet(stream)
            });
            !list.is_empty()
        });
    }
}

/// An idle connection must have nothing to read: a close (EOF), a reset or stray bytes all
/// make it unusable. Only readiness the reactor has already seen costs a system call.
fn is_quiet(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}
