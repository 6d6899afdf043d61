//! Reading what a client is still sending before answering it.
//!
//! A handler may answer without reading the whole request body: a refusal of a body that is too
//! large, say. hyper then closes the connection with the client's bytes unread, the kernel
//! answers them with a reset, and a client still writing its body gets a broken pipe instead of
//! the answer that says what to fix (seen with an 8 MiB upload refused for its declared length).
//! So, like nginx's lingering close (and the edge's), the answer goes at once and the rest of
//! the body is read and thrown away beside it, for at most [`LINGER`]: while the body is being
//! read, hyper keeps the connection open.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// How long the rest of a body no handler read is read and thrown away.
const LINGER: Duration = Duration::from_secs(5);

/// Middleware: runs the request, then reads what is left of its body beside the answer.
pub(crate) async fn linger(request: Request, next: Next) -> Response {
    let left = Arc::new(Mutex::new(None));
    let request = request.map(|body| {
        Body::new(Watched {
            inner: Some(body),
            left: Arc::clone(&left),
        })
    });
    let response = next.run(request).await;
    let rest = left.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rest) = rest {
        tokio::spawn(discard(rest));
    }
    response
}

/// A request body that, dropped before its end, leaves what is left of it behind.
struct Watched {
    inner: Option<Body>,
    left: Arc<Mutex<Option<Body>>>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
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
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !inner.is_end_stream()
        {
            *self.left.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
        }
    }
}

/// Reads `body` to its end (or for [`LINGER`]) and throws the bytes away.
async fn discard(mut body: Body) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::put;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Sends a 32 MiB body to a handler that refuses it unread; answers what came back.
    async fn refused_upload(app: Router) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let body = vec![b'x'; 32 << 20];
        let head = format!(
            "PUT /file HTTP/1.1\r\nhost: api\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await?;
        // More than socket buffers hold: without lingering this write meets a reset.
        client.write_all(&body).await?;
        let mut answer = vec![0; 4096];
        let n = client.read(&mut answer).await?;
        server.abort();
        Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
    }

    async fn refuse() -> StatusCode {
        StatusCode::PAYLOAD_TOO_LARGE
    }

    #[tokio::test]
    async fn a_client_still_sending_a_refused_body_gets_the_refusal() -> std::io::Result<()> {
        let app = Router::new()
            .route("/file", put(refuse))
            .layer(axum::middleware::from_fn(linger));
        let answer = refused_upload(app).await?;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        Ok(())
    }

    #[tokio::test]
    async fn without_it_the_client_meets_a_reset() {
        let app = Router::new().route("/file", put(refuse));
        let outcome = refused_upload(app).await;
        assert!(
            !outcome
                .as_ref()
                .is_ok_and(|answer| answer.starts_with("HTTP/1.1 413")),
            "the refusal reached a client still sending: {outcome:?}"
        );
    }
}
