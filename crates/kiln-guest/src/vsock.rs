//! The host side of Firecracker's vsock: a unix socket on which Firecracker forwards a
//! connection to a port of the guest after a one-line handshake.
//!
//! The host connects to the vsock device's `uds_path`, writes `CONNECT <port>\n` and reads one
//! line back: `OK <host port>\n` means the guest accepted and the stream is now the guest
//! connection; Firecracker closes the socket instead when nothing listens on that port in the
//! guest. (Firecracker's `docs/vsock.md`.)

use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest answer line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_ANSWER: usize = 32;

/// Connects to guest port `port` through the Firecracker vsock socket `uds`.
///
/// A guest that does not listen (yet) is [`io::ErrorKind::ConnectionRefused`], so callers can
/// retry while the machine boots; an answer that is not `OK <number>` is
/// [`io::ErrorKind::InvalidData`].
pub async fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let line = read_answer(&mut stream).await.map_err(|e| match e.kind() {
        // Firecracker answers a port nobody listens on by closing the connection.
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "{}: nothing in the guest accepted vsock port {port}",
                uds.display()
            ),
        ),
        _ => e,
    })?;
    parse_answer(&line).map_err(|detail| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: unexpected answer to CONNECT {port}: {detail}",
                uds.display()
            ),
        )
    })?;
    Ok(stream)
}

/// Reads up to and including the first `\n`, one byte at a time: whatever follows already
/// belongs to the guest connection and must stay in the socket.
async fn read_answer(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(16);
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return Ok(line);
        }
        line.push(byte);
        if line.len() > MAX_ANSWER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "answer to CONNECT longer than {MAX_ANSWER} bytes: {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
    }
}

/// Checks an answer line (without its `\n`) is `OK <host port>`; returns the host port.
fn parse_answer(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| format!("{line:?} is not text"))?;
    text.strip_prefix("OK ")
        .and_then(|port| port.trim_end_matches('\r').parse::<u32>().ok())
        .ok_or_else(|| format!("{text:?}, expected `OK <port>`"))
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A fake Firecracker vsock socket: accepts one connection, checks the `CONNECT` line and
    /// answers with `answer` (or closes when `None`), then echoes a byte for the test.
    fn fake_vsock(dir: &Path, answer: Option<&'static [u8]>) -> std::path::PathBuf {
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 11];
            conn.read_exact(&mut request).await.expect("read CONNECT");
            assert_eq!(&request, b"CONNECT 52\n");
            match answer {
                None => drop(conn),
                Some(answer) => {
                    conn.write_all(answer).await.expect("answer");
                    let mut byte = [0u8; 1];
                    if conn.read_exact(&mut byte).await.is_ok() {
                        let _ = conn.write_all(&byte).await;
                    }
                }
            }
        });
        path
    }

    #[tokio::test]
    async fn ok_answer_yields_the_guest_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The first guest byte arrives in the same write as the answer: it must not be lost.
        let uds = fake_vsock(dir.path(), Some(b"OK 1073741824\nG"));
        let mut stream = connect(&uds, 52).await.expect("connect");
        assert_eq!(stream.read_u8().await.expect("guest byte"), b'G');
        stream.write_all(b"x").await.expect("write");
        assert_eq!(stream.read_u8().await.expect("echo"), b'x');
    }

    #[tokio::test]
    async fn a_closed_socket_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = fake_vsock(dir.path(), None);
        let err = connect(&uds, 52).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains("port 52"), "{err}");
    }

    #[tokio::test]
    async fn a_garbage_answer_is_invalid_data() {
        for answer in [&b"NOPE\n"[..], b"OK x\n", &[b'A'; 40]] {
            let dir = tempfile::tempdir().expect("tempdir");
            let uds = fake_vsock(dir.path(), Some(answer));
            let err = connect(&uds, 52).await.expect_err("garbage");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_fails_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = connect(&dir.path().join("gone.sock"), 52)
            .await
            .expect_err("no socket");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer(b"OK 1073741824"), Ok(1_073_741_824));
        assert_eq!(parse_answer(b"OK 5\r"), Ok(5));
        for bad in [&b"OK"[..], b"ok 5", b"OK -1", b"", b"\xff"] {
            assert!(parse_answer(bad).is_err(), "{bad:?}");
        }
    }
}
