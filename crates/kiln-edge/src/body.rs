//! Body types: what the edge sends downstream, and the size-limited stream it sends upstream.
//!
//! Both stream frame by frame; the edge never holds a whole body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use kiln_http::linger::discard;
use tokio::sync::oneshot;

/// A response body: either a page the edge made or the upstream's body, streamed through.
///
/// An enum rather than a boxed trait object, so the hot path allocates nothing per response.
#[derive(Debug)]
pub(crate) enum EdgeBody {
    /// A complete body made by the edge (`None` once sent, or for an empty body).
    Full(Option<Bytes>),
    /// The upstream's body.
    Upstream(Incoming),
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            EdgeBody::Full(data) => Poll::Ready(data.take().map(|bytes| Ok(Frame::data(bytes)))),
            EdgeBody::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Full(data) => data.is_none(),
            EdgeBody::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            EdgeBody::Upstream(body) => body.size_hint(),
        }
    }
}

/// The error a [`LimitedBody`] ends with once more than the limit has arrived; the handler finds
/// it in the client's error chain and answers 413.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

/// The downstream request body on its way upstream, counted as it streams.
///
/// It also tells the handler when it is done (ended, failed or dropped), because the upstream
/// response timeout only starts then: an upload over a slow link is not a slow app.
#[derive(Debug)]
pub(crate) struct LimitedBody {
    /// `None` once the limit tripped and the rest was handed to [`discard`].
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    done: Option<oneshot::Sender<()>>,
}

impl LimitedBody {
    pub(crate) fn new(
        inner: Incoming,
        limit: u64,
        done: Option<oneshot::Sender<()>>,
    ) -> LimitedBody {
        LimitedBody {
            inner: Some(inner),
            seen: 0,
            limit,
            done,
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        this.finish();
                        if let Some(rest) = this.inner.take() {
                            tokio::spawn(discard(rest));
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                if inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
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
