//! The S3 endpoint's connections: a TCP stream whose writes send any body bytes that are a
//! view of a mapped object file with `sendfile`, from the page cache to the socket, instead
//! of copying them through user space. hyper queues a body's `Bytes` as they are (it writes
//! vectored), so the slices this writer receives are the mapping's own.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::mapped::{FileSpan, file_span};

/// One S3 connection, served by hyper.
pub(crate) struct SendfileStream(TcpStream);

impl SendfileStream {
    pub(crate) fn new(stream: TcpStream) -> SendfileStream {
        SendfileStream(stream)
    }

    /// Sends (some of) `bytes`, which show `span`, from the page cache; written from memory
    /// where the file cannot be sent (a filesystem without splice support).
    fn poll_send_span(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        span: &FileSpan,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            let sent = self.0.try_io(Interest::WRITABLE, || {
                let mut offset = i64::try_from(span.offset).map_err(std::io::Error::other)?;
                Ok(nix::sys::sendfile::sendfile64(
                    &self.0,
                    &*span.file,
                    Some(&mut offset),
                    bytes.len(),
                )?)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if cannot_splice(&e) => {
                    return Pin::new(&mut self.0).poll_write(cx, bytes);
                }
                sent => return Poll::Ready(sent),
            }
        }
    }
}

/// Whether `sendfile` failed because the file's filesystem cannot splice, not the disk or
/// the socket.
pub(crate) fn cannot_splice(e: &std::io::Error) -> bool {
    matches!(
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS
    )
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Writes the slices up to the first one that is a view of a file, or sends that one
    /// when it comes first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first_span = bufs
            .iter()
            .enumerate()
            .find_map(|(at, buf)| file_span(buf).map(|span| (at, span)));
        match first_span {
            None => Pin::new(&mut self.0).poll_write_vectored(cx, bufs),
            Some((0, span)) => self.poll_send_span(cx, &span, &bufs[0]),
            Some((at, _)) => Pin::new(&mut self.0).poll_write_vectored(cx, &bufs[..at]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bytes::Buf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::mapped::Mapped;

    #[tokio::test]
    async fn mapped_bytes_arrive_whole_and_in_order_after_bytes_from_memory() -> std::io::Result<()>
    {
        // Larger than the socket's buffers, so sends stop part-way and resume.
        let contents: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile()?;
        file.write_all(&contents)?;
        let (start, end) = (1_001, contents.len() - 5);
        let body =
            Mapped::new(Arc::new(file), start as u64, contents.len() as u64)?.slice(0..end - start);
        let head = bytes::Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (client, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr()?),
            listener.accept()
        );
        let (mut client, mut server) = (client?, SendfileStream::new(accepted?.0));
        let sender = tokio::spawn(async move {
            server.write_all_buf(&mut head.chain(body)).await?;
            server.shutdown().await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut received = Vec::new();
        client.read_to_end(&mut received).await?;
        sender.await??;

        let mut expected = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        expected.extend_from_slice(&contents[start..end]);
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "the bytes differ");
        Ok(())
    }
}
