//! Lingering close: reading what a client is still sending after its request was answered.
//!
//! A server may answer without reading the whole request body: a refusal of a body that is too
//! large, or of a request that failed authentication. hyper then closes the connection with the
//! client's bytes unread, the kernel answers them with a reset, and a client still writing its
//! body gets a broken pipe instead of the answer that says what to fix. So, like nginx's
//! lingering close, the rest of the body is read and thrown away beside the answer, for at most
//! [`LINGER`]; while it is being read, hyper keeps the connection open.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// How long the rest of an unread body is read and thrown away.
pub const LINGER: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end, goes on being read and thrown away in the
/// background (see the module docs). Outside a Tokio runtime it is simply dropped.
///
/// Not for a request that asked `Expect: 100-continue` ([`expects_continue`]): such a client
/// sends its body only once told to, and may take a refusal as the end of that request; reading
/// the body anyway then takes the first bytes of the connection's next request as the body
/// (seen with boto3: a ListObjectsV2 after a refused PutObject lost its `G`).
pub struct Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    inner: Option<B>,
}

impl<B> Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        Lingering { inner: Some(body) }
    }
}

impl<B> Body for Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for Lingering<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take()
            && !rest.is_end_stream()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(discard(rest));
        }
    }
}

/// Whether the client waits for `100 Continue` before it sends the body.
pub fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::EXPECT)
}

/// Reads `body` to its end (or for [`LINGER`]) and throws the bytes away.
pub async fn discard<B: Body + Unpin>(mut body: B) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves one connection whose handler refuses every request without reading its body,
    /// with the body wrapped in [`Lingering`] or not; sends it a 32 MiB upload and answers what
    /// came back.
    async fn refused_upload(linger: bool) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let refuse = service_fn(move |request: Request<Incoming>| {
                let body = request.into_body();
                if linger {
                    drop(Lingering::new(body));
                } else {
                    drop(body);
                }
                async {
                    let mut response = Response::new(http_body_util::Empty::<Bytes>::new());
                    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                    Ok::<_, Infallible>(response)
                }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), refuse)
                .await
                .map_err(std::io::Error::other)
        });
        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let body = vec![b'x'; 32 << 20];
        let head = format!(
            "PUT /file HTTP/1.1\r\nhost: server\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await?;
        // More than socket buffers hold: unless the server reads on, this write meets a reset.
        client.write_all(&body).await?;
        let mut answer = vec![0; 4096];
        let n = client.read(&mut answer).await?;
        server.abort();
        Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
    }

    #[tokio::test]
    async fn a_client_still_sending_a_refused_body_gets_the_refusal() -> std::io::Result<()> {
        let answer = refused_upload(true).await?;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        Ok(())
    }

    #[tokio::test]
    async fn without_it_the_client_meets_a_reset() {
        let outcome = refused_upload(false).await;
        assert!(
            !outcome
                .as_ref()
                .is_ok_and(|answer| answer.starts_with("HTTP/1.1 413")),
            "the refusal reached a client still sending: {outcome:?}"
        );
    }
}
