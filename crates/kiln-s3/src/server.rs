//! Serving the S3 protocol on a TCP listener (HTTP/1.1, which is what S3 clients speak).

use std::convert::Infallible;
use std::pin::pin;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kiln_http::linger::{Lingering, expects_continue};
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::KilnS3;
use crate::host::VirtualHosts;
use crate::keys::{BucketAccess, KeyRing};
use crate::sendfile::SendfileStream;
use crate::store::ObjectStore;

/// The S3 endpoint of a node: one protocol service, served on as many listeners as needed
/// (the public address and each org's gateway).
#[derive(Clone, Debug)]
pub struct S3Endpoint {
    service: S3Service,
}

impl S3Endpoint {
    /// Builds the endpoint over a store, the node's keys and its virtual-host domains.
    pub fn new(store: ObjectStore, keys: KeyRing, hosts: VirtualHosts) -> S3Endpoint {
        let mut builder = S3ServiceBuilder::new(KilnS3 {
            store,
            keys: keys.clone(),
        });
        builder.set_auth(keys.clone());
        builder.set_access(BucketAccess { keys });
        builder.set_host(hosts);
        S3Endpoint {
            service: builder.build(),
        }
    }

    /// Accepts connections until `shutdown`; connections in flight finish their request.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Infallible> {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "S3 accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let s3 = self.service.clone();
            // What a refusal leaves unread of a body (bad credentials, a missing bucket) is
            // read beside the answer, so a client still sending gets the S3 error, not a reset.
            let service = service_fn(move |request: Request<Incoming>| {
                let s3 = s3.clone();
                let request = if expects_continue(request.headers()) {
                    request.map(s3s::Body::from)
                } else {
                    request.map(|body| s3s::Body::http_body(Lingering::new(body)))
                };
                async move { s3.call(request).await }
            });
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(SendfileStream::new(stream)), service);
                let mut conn = pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "S3 connection ended with an error");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }
}
