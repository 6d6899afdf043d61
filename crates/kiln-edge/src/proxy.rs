//! One request through the edge: check it, resolve its host, and either answer with a branded
//! page or stream it to one of the route's machines and stream the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kiln_http::linger::{discard, expects_continue};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::EdgeConfig;
use crate::body::{BodyTooLarge, EdgeBody, LimitedBody};
use crate::framing::FramingVerdict;
use crate::pages::{self, PageKind};
use crate::routes::{
    Backend, Brand, Resolution, Route, RouteKind, RouteTable, Routes, normalize_host,
};
use crate::upstream::UpstreamPool;

/// What every request handler shares, across all workers.
pub(crate) struct Shared {
    pub(crate) config: EdgeConfig,
    pub(crate) routes: Routes,
}

/// What the requests of one worker thread share.
pub(crate) struct Worker {
    /// This worker's upstream connections: they live on this worker's thread, so a request
    /// never waits on another thread.
    pub(crate) upstream: UpstreamPool,
    /// This worker's machine connections for the relay (plain requests).
    pub(crate) relay: crate::relay::Pool,
    /// Every task of this worker (connections and spliced upgrades); the worker waits for
    /// them before it exits.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when shutdown starts; ends spliced (WebSocket) connections.
    pub(crate) stopping: CancellationToken,
}

/// Builds one worker's upstream connection pool.
pub(crate) fn upstream_pool(config: &EdgeConfig) -> UpstreamPool {
    UpstreamPool::new(config.upstream_connect_timeout, UPSTREAM_IDLE_TIMEOUT)
}

/// How long a kept-alive upstream connection may sit unused.
pub(crate) const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handler knows about the downstream connection a request came on.
pub(crate) struct ConnInfo {
    pub(crate) worker: Arc<Worker>,
    pub(crate) remote: SocketAddr,
    /// The client's address as forwarded in `X-Forwarded-For`, rendered once per connection.
    pub(crate) client_ip: HeaderValue,
    pub(crate) http2: bool,
    /// It came over TLS.
    pub(crate) secure: bool,
    /// The framing scanner's findings (HTTP/1 only).
    pub(crate) framing: Option<Arc<FramingVerdict>>,
    /// Requests seen so far; HTTP/1 handles them strictly in order, so this is the index the
    /// framing scanner uses too.
    pub(crate) requests: AtomicU64,
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones that are used the same way. They never cross the edge.
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Handles one request; never fails, because every failure is answered with a page.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<EdgeBody> {
    let index = conn.requests.fetch_add(1, Ordering::Relaxed);
    // One snapshot for the whole request: a route swap mid-request changes nothing for it.
    let table = shared.routes.current();
    let fallback = &shared.config.fallback_brand;

    let Some((host, host_value)) = request_host(&req, conn.http2) else {
        debug!(remote = %conn.remote, "refused: missing, duplicate or invalid host");
        return pages::response(PageKind::BadRequest, fallback, req.headers());
    };

    if conn
        .framing
        .as_ref()
        .is_some_and(|verdict| verdict.is_ambiguous(index))
    {
        debug!(remote = %conn.remote, %host, "refused: both Content-Length and Transfer-Encoding");
        let brand = brand_for(&table, &host, fallback);
        return close_after(pages::response(PageKind::BadRequest, brand, req.headers()));
    }

    // CONNECT asks the edge to be a forward proxy, which it never is.
    if req.method() == Method::CONNECT {
        let brand = brand_for(&table, &host, fallback);
        return pages::response(PageKind::BadRequest, brand, req.headers());
    }

    let (route, upstream) = match table.pick(&host) {
        Some(picked) => picked,
        None => {
            let (kind, brand) = page_without_machine(&table, &host, fallback);
            return pages::response(kind, brand, req.headers());
        }
    };
    let brand: &Brand = &route.brand;
    let unanswered = unanswered_page(route);

    let limit = shared.config.max_request_body;
    match declared_length(req.headers()) {
        Some(Ok(len)) if len > limit => {
            // Refused before the upstream is contacted. A client that asked
            // `Expect: 100-continue` has not sent the body and never will; any other is sending
            // it now, so read and drop it for a while before the connection closes.
            let response = close_after(pages::response(PageKind::TooLarge, brand, req.headers()));
            if !expects_continue(req.headers()) {
                tokio::spawn(discard(req.into_body()));
            }
            return response;
        }
        Some(Err(())) => return pages::response(PageKind::BadRequest, brand, req.headers()),
        _ => {}
    }

    let websocket = !conn.http2 && wants_websocket(req.headers());
    let downstream_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    // Only a request with a body needs to signal when that body is done.
    let (body_done, body_sent) = if req.body().is_end_stream() {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let upstream_req = match upstream_request(req, &host_value, &conn, websocket) {
        Ok((parts, body)) => Request::from_parts(parts, LimitedBody::new(body, limit, body_done)),
        Err(headers) => return pages::response(PageKind::BadRequest, brand, &headers),
    };
    let accept = upstream_req.headers().get(header::ACCEPT).cloned();
    let accept_headers = || {
        let mut h = HeaderMap::new();
        if let Some(v) = &accept {
            h.insert(header::ACCEPT, v.clone());
        }
        h
    };

    // The response timeout runs from the moment the whole request has gone upstream.
    let response_timeout = shared.config.upstream_response_timeout;
    let deadline = async move {
        if let Some(body_sent) = body_sent {
            let _ = body_sent.await;
        }
        tokio::time::sleep(response_timeout).await;
    };
    let answer = tokio::select! {
        answer = conn.worker.upstream.send(upstream, upstream_req) => Some(answer),
        () = deadline => None,
    };
    let mut response = match answer {
        Some(Ok(response)) => response,
        Some(Err(e)) => {
            if find_cause::<BodyTooLarge>(&e).is_some() {
                debug!(%host, "refused: request body over the limit while streaming");
                return close_after(pages::response(
                    PageKind::TooLarge,
                    brand,
                    &accept_headers(),
                ));
            }
            warn!(%host, %upstream, error = %error_chain(&e), "upstream failed before answering");
            return pages::response(unanswered, brand, &accept_headers());
        }
        None => {
            warn!(%host, %upstream, "upstream did not answer in time");
            return pages::response(PageKind::Timeout, brand, &accept_headers());
        }
    };

    if let Some(downstream) = downstream_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let stop = conn.worker.stopping.clone();
        conn.worker.tasks.spawn(async move {
            let (downstream, upstream) = match tokio::try_join!(downstream, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (mut a, mut b) = (TokioIo::new(downstream), TokioIo::new(upstream));
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut a, &mut b) => {
                    if let Err(e) = result {
                        debug!(error = %e, "upgraded connection ended with an error");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
        let (mut parts, body) = response.into_parts();
        let upgrade = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(upgrade) = upgrade {
            parts.headers.insert(header::UPGRADE, upgrade);
        }
        parts.version = Version::HTTP_11;
        return Response::from_parts(parts, EdgeBody::Upstream(body));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The downstream connection has its own version; hyper frames the answer for it.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, EdgeBody::Upstream(body))
}

/// The page, and its brand, for a request to `host` when it has no machine to relay to: an
/// unknown host's 404, a starting route's loading page, or a stopped route's 502.
pub(crate) fn page_without_machine<'t>(
    table: &'t RouteTable,
    host: &str,
    fallback: &'t Brand,
) -> (PageKind, &'t Brand) {
    match table.resolve(host) {
        Resolution::Route(route) => match route.backend {
            Backend::Starting => (PageKind::Starting, &route.brand),
            Backend::Stopped | Backend::Ready(_) => (PageKind::NotRunning, &route.brand),
        },
        Resolution::Unknown(site) => (
            PageKind::NotFound,
            site.map_or(fallback, |site| &site.brand),
        ),
    }
}

/// The page for a request its route's machine did not answer. A preview's dev server
/// restarts all the time (file edits, crashes, reinstalls): while nothing answers, end users
/// see the loading page that retries, not "not running".
pub(crate) fn unanswered_page(route: &Route) -> PageKind {
    if route.kind == RouteKind::Preview {
        PageKind::Starting
    } else {
        PageKind::NotRunning
    }
}

/// The routing host: `:authority` for HTTP/2 (or `Host` if a client sent only that), and for
/// HTTP/1 the single `Host` header only. An absolute-form target's authority
/// (`GET http://other/ HTTP/1.1`) is deliberately ignored for routing and never dialled: the
/// edge routes on `Host` and forwards only the path, so the app sees the host it was routed by.
/// Returns the normalised host and the value to forward as `Host`.
fn request_host(req: &Request<Incoming>, http2: bool) -> Option<(String, HeaderValue)> {
    if http2 && let Some(authority) = req.uri().authority() {
        let value = HeaderValue::from_str(authority.as_str()).ok()?;
        return Some((normalize_host(authority.as_str())?, value));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let value = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    let host = normalize_host(value.to_str().ok()?)?;
    Some((host, value.clone()))
}

/// The brand for pages about `host` when the answer is not about its route's backend.
fn brand_for<'a>(table: &'a RouteTable, host: &str, fallback: &'a Brand) -> &'a Brand {
    match table.resolve(host) {
        Resolution::Route(route) => &route.brand,
        Resolution::Unknown(Some(site)) => &site.brand,
        Resolution::Unknown(None) => fallback,
    }
}

/// The declared body length: `None` without `Content-Length`, `Err` when it is unparsable.
/// hyper has already refused malformed lengths on HTTP/1; HTTP/2 carries the header verbatim.
fn declared_length(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let parse = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(())
    };
    let len = parse(first);
    for other in values {
        if parse(other) != len {
            return Some(Err(()));
        }
    }
    Some(len)
}

/// Whether the request asks to become a WebSocket: `Upgrade: websocket` and `Connection`
/// naming `upgrade`. Other upgrades (h2c) are not forwarded.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
    upgrade && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than nine removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Turns the downstream request into the upstream one. On failure, hands back the request's
/// headers so the caller can still answer in the format the client asked for.
fn upstream_request(
    req: Request<Incoming>,
    host_value: &HeaderValue,
    conn: &ConnInfo,
    websocket: bool,
) -> Result<(http::request::Parts, Incoming), HeaderMap> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Origin-form: the connection already leads to the machine.
    let uri = Uri::from(path);

    let headers = &mut parts.headers;
    let upgrade = websocket
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(headers);
    // The edge answers `Expect: 100-continue` itself when it starts reading the body; the
    // upstream gets the body without having to be asked.
    headers.remove(header::EXPECT);
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
    if conn.http2 {
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
        let cookies: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
        if cookies.len() > 1 {
            let joined = cookies
                .iter()
                .map(HeaderValue::as_bytes)
                .collect::<Vec<_>>()
                .join(&b"; "[..]);
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                headers.insert(header::COOKIE, value);
            }
        }
    }
    headers.insert(header::HOST, host_value.clone());

    let forwarded_for = if headers.contains_key(&X_FORWARDED_FOR) {
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let client_ip = conn.client_ip.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {client_ip}", previous.join(", ")))
    } else {
        Ok(conn.client_ip.clone())
    };
    match forwarded_for {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        Err(_) => return Err(parts.headers),
    }
    let proto = if conn.secure { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_HOST, host_value.clone());

    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok((parts, body))
}

/// Marks an answer as the last on its HTTP/1 connection (hyper drops the header for HTTP/2).
fn close_after(mut response: Response<EdgeBody>) -> Response<EdgeBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The first error of type `E` in `error`'s source chain.
fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// "outer: inner: root" for one log line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::SERVER, HeaderValue::from_static("app/1.0"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["content-type", "server"]);
    }

    #[test]
    fn declared_length_table() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            declared_length(&h)
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["10"]), Some(Ok(10)));
        assert_eq!(with(&["10", "10"]), Some(Ok(10)));
        assert_eq!(with(&["10", "11"]), Some(Err(())));
        assert_eq!(with(&["-1"]), Some(Err(())));
        assert_eq!(with(&["+1"]), Some(Err(())));
    }

    #[test]
    fn websocket_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(!wants_websocket(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&h));
    }
}
