//! End-to-end tests of the edge: real upstream servers and a real edge on loopback, driven by
//! real clients (reqwest for HTTP/1.1, hyper's HTTP/2 client with prior knowledge,
//! tokio-tungstenite for WebSocket, raw TCP for malformed input).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kiln_edge::{
    Backend, Brand, Edge, EdgeConfig, EdgeError, OrgSite, Route, RouteKind, RouteTable, Routes,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CLINIC_COLOR: &str = "#0a7cff";
const OTHER_COLOR: &str = "#b31d28";

// ---------------------------------------------------------------------------------------------
// Upstream: a small app server that records what it receives.

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, Vec<String>>,
}

#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `/stream` sends its second chunk only once this is notified.
    gate: Arc<Notify>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let upstream = Upstream {
            addr: listener.local_addr().expect("upstream addr"),
            seen: Arc::default(),
            gate: Arc::new(Notify::new()),
        };
        let state = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(name, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("upstream saw a request")
    }

    async fn answer(
        &self,
        name: &'static str,
        req: Request<Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            headers
                .entry(k.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        self.seen.lock().expect("lock").push(Seen {
            path: path.clone(),
            headers,
        });
        let full = |s: String| Full::new(Bytes::from(s)).boxed();
        match req.uri().path() {
            "/hello" => Response::builder()
                .header("server", "upstream-app/1.0")
                .header("x-powered-by", "upstream-framework")
                .header("keep-alive", "timeout=5")
                .header("connection", "x-drop-me")
                .header("x-drop-me", "1")
                .body(full(format!("hello from {name}")))
                .expect("response"),
            "/stream" => {
                let gate = Arc::clone(&self.gate);
                let stream = futures::stream::unfold(0u8, move |step| {
                    let gate = Arc::clone(&gate);
                    async move {
                        match step {
                            0 => Some((Ok(Frame::data(Bytes::from(format!("{name}:first;")))), 1)),
                            1 => {
                                gate.notified().await;
                                Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                            }
                            _ => None,
                        }
                    }
                });
                Response::new(BodyExt::boxed(StreamBody::new(stream)))
            }
            "/hash" => {
                let mut body = req.into_body();
                let mut hasher = Sha256::new();
                let mut len = 0usize;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else {
                        return Response::new(full("aborted".into()));
                    };
                    if let Some(data) = frame.data_ref() {
                        len += data.len();
                        hasher.update(data);
                    }
                }
                Response::new(full(format!("{len} {}", hex(&hasher.finalize()))))
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Response::new(full("late".into()))
            }
            _ => Response::new(full(format!("{name} {path}"))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A WebSocket echo server.
async fn start_ws_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let addr = listener.local_addr().expect("ws addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------------
// The edge under test, with two orgs.

fn clinic_brand() -> Arc<Brand> {
    Arc::new(Brand {
        name: "Clinic Cloud".into(),
        primary_color: Some(CLINIC_COLOR.into()),
        logo_url: Some("https://cdn.clinic.example/logo.svg".into()),
        support_url: Some("https://help.clinic.example/".into()),
    })
}

fn other_brand() -> Arc<Brand> {
    Arc::new(Brand {
        name: "Other Org".into(),
        primary_color: Some(OTHER_COLOR.into()),
        logo_url: None,
        support_url: None,
    })
}

struct Fixture {
    edge: SocketAddr,
    routes: Routes,
    app: Upstream,
    other: Upstream,
    ws: SocketAddr,
    refused: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<Result<(), EdgeError>>>,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::with_config(test_config()).await
    }

    async fn with_config(config: EdgeConfig) -> Fixture {
        let app = Upstream::start("clinic-app").await;
        let other = Upstream::start("other-app").await;
        let ws = start_ws_upstream().await;
        let refused = closed_port().await;
        let routes = Routes::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind edge");
        let edge_addr = listener.local_addr().expect("edge addr");
        let (tx, rx) = oneshot::channel::<()>();
        let edge = Edge::new(config, routes.clone());
        let served = tokio::spawn(edge.serve(listener, async move {
            let _ = rx.await;
        }));
        let fixture = Fixture {
            edge: edge_addr,
            routes,
            app,
            other,
            ws,
            refused,
            shutdown: Some(tx),
            served: Some(served),
        };
        fixture.routes.publish(fixture.table(fixture.app.addr));
        fixture
    }

    /// The standard table, with `app.clinic.test` pointing at `app_addr`.
    fn table(&self, app_addr: SocketAddr) -> RouteTable {
        let clinic = clinic_brand();
        let other = other_brand();
        let route = |host: &str, org: &str, brand: &Arc<Brand>, backend: Backend| Route {
            host: host.into(),
            kind: RouteKind::Production,
            org_id: org.into(),
            brand: Arc::clone(brand),
            backend,
        };
        RouteTable::new(
            [
                route(
                    "app.clinic.test",
                    "clinic",
                    &clinic,
                    Backend::Ready(vec![app_addr]),
                ),
                route("starting.clinic.test", "clinic", &clinic, Backend::Starting),
                route("stopped.clinic.test", "clinic", &clinic, Backend::Stopped),
                route(
                    "refused.clinic.test",
                    "clinic",
                    &clinic,
                    Backend::Ready(vec![self.refused]),
                ),
                route(
                    "ws.clinic.test",
                    "clinic",
                    &clinic,
                    Backend::Ready(vec![self.ws]),
                ),
                route(
                    "app.other.test",
                    "other",
                    &other,
                    Backend::Ready(vec![self.other.addr]),
                ),
            ],
            [
                OrgSite {
                    org_id: "clinic".into(),
                    base_domain: "clinic.test".into(),
                    brand: clinic,
                },
                OrgSite {
                    org_id: "other".into(),
                    base_domain: "other.test".into(),
                    brand: other,
                },
            ],
        )
        .expect("valid table")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.edge)
    }

    async fn stop(&mut self) -> Result<(), EdgeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.served
            .take()
            .expect("serving")
            .await
            .expect("serve task")
    }
}

fn test_config() -> EdgeConfig {
    EdgeConfig {
        max_request_body: 4 * 1024 * 1024,
        upstream_response_timeout: Duration::from_millis(700),
        header_read_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
        ..EdgeConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn get(f: &Fixture, host: &str, path: &str) -> reqwest::Response {
    client()
        .get(f.url(path))
        .header("host", host)
        .send()
        .await
        .expect("request through the edge")
}

/// Asserts nothing in the headers or body names the platform, and no identifying header exists.
fn assert_unbranded_platform(headers: &reqwest::header::HeaderMap, body: &str) {
    for (name, value) in headers {
        let line = format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes()));
        assert!(
            !line.to_ascii_lowercase().contains("kiln"),
            "header leaks: {line}"
        );
    }
    for name in ["server", "via", "x-powered-by"] {
        assert!(headers.get(name).is_none(), "edge-made answer has {name}");
    }
    assert!(
        !body.to_ascii_lowercase().contains("kiln"),
        "body leaks: {body}"
    );
}

/// Asserts an edge-made HTML page: status, brand name and colour, no platform name.
async fn assert_page(response: reqwest::Response, status: u16, brand: &str, color: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    let headers = response.headers().clone();
    assert_eq!(
        headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/html; charset=utf-8"[..])
    );
    let body = response.text().await.expect("page body");
    assert_unbranded_platform(&headers, &body);
    assert!(body.contains(brand), "page lacks brand {brand:?}: {body}");
    assert!(
        body.contains(&format!("--accent:{color}")),
        "page lacks colour {color}"
    );
    assert!(body.contains(&format!("Error {status}")));
    body
}

/// Sends raw bytes and reads until the edge closes the connection (or 5 s pass).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    // Written beside the read, so a large request cannot deadlock against an early answer.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut out)).await;
    assert!(
        !matches!(read, Ok(Err(_))),
        "connection reset: {read:?} after {:?}",
        String::from_utf8_lossy(&out)
    );
    drop(write.await);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(raw_response: &str) -> u16 {
    raw_response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw_response:?}"))
}

// ---------------------------------------------------------------------------------------------
// Routing and forwarding.

#[tokio::test]
async fn routes_by_host_ignoring_port_case_and_trailing_dot() {
    let f = Fixture::start().await;
    for host in [
        "app.clinic.test",
        "app.clinic.test:8443",
        "APP.Clinic.TEST",
        "app.clinic.test.",
        "App.Clinic.Test.:80",
    ] {
        let response = get(&f, host, "/hello").await;
        assert_eq!(response.status(), 200, "host {host}");
        assert_eq!(
            response.text().await.expect("body"),
            "hello from clinic-app"
        );
    }
    let response = get(&f, "app.other.test", "/hello").await;
    assert_eq!(response.text().await.expect("body"), "hello from other-app");
    // The app sees the Host it was routed by, as the client sent it.
    let response = get(&f, "App.Clinic.Test.:80", "/x?y=1").await;
    assert_eq!(response.text().await.expect("body"), "clinic-app /x?y=1");
    assert_eq!(f.app.last().headers["host"], vec!["App.Clinic.Test.:80"]);
}

/// The CPU list each thread of this process named `name` may run on, as `/proc` gives it.
fn cpus_of_threads_named(name: &str) -> Vec<String> {
    let mut lists = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let dir = task.expect("task").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            lists.push(list.trim().to_owned());
        }
    }
    lists
}

#[tokio::test]
async fn pinned_workers_each_keep_to_one_cpu_and_serve() {
    let mut f = Fixture::with_config(EdgeConfig {
        workers: 2,
        pin_workers: true,
        ..test_config()
    })
    .await;
    let response = get(&f, "app.clinic.test", "/hello").await;
    assert_eq!(
        response.text().await.expect("body"),
        "hello from clinic-app"
    );
    let allowed: Vec<String> = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| expand_cpu_list(list.trim()))
        .expect("the process's CPU list");
    // Other tests run edges of their own in this process; theirs are not pinned.
    for (index, cpu) in allowed.iter().take(2).enumerate() {
        let lists = cpus_of_threads_named(&format!("edge-worker-{index}"));
        assert!(
            lists.contains(cpu),
            "edge-worker-{index} should be pinned to CPU {cpu}; threads so named run on {lists:?}"
        );
    }
    f.stop().await.expect("clean shutdown");
}

/// "0-2,5" → ["0", "1", "2", "5"].
fn expand_cpu_list(list: &str) -> Vec<String> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (
                    first.parse().expect("cpu number"),
                    last.parse().expect("cpu number"),
                );
                cpus.extend((first..=last).map(|cpu| cpu.to_string()));
            }
            None => cpus.push(part.to_owned()),
        }
    }
    cpus
}

#[tokio::test]
async fn a_burst_of_connections_is_served_whichever_worker_takes_each() {
    // The burst lands unevenly on the workers, so some connections are handed between them.
    let f = Fixture::with_config(EdgeConfig {
        workers: 4,
        ..test_config()
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..24 {
        streams.push(TcpStream::connect(f.edge).await.expect("connect"));
    }
    let answers = futures::future::join_all(streams.into_iter().map(|mut stream| async move {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: app.clinic.test\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }))
    .await;
    for answer in answers {
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(answer.ends_with("hello from clinic-app"), "{answer}");
    }
}

#[tokio::test]
async fn forwards_x_forwarded_headers_and_strips_hop_by_hop_both_ways() {
    let f = Fixture::start().await;
    // A `Connection` header naming another header sends the request through hyper; without
    // one, it is relayed. Both paths must forward the same way.
    for connection in ["keep-alive, x-hop", "keep-alive"] {
        let response = client()
            .get(f.url("/hello"))
            .header("host", "app.clinic.test:9000")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("connection", connection)
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=9")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-end-to-end", "kept")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        // The app's own identifying headers pass through untouched; its hop-by-hop ones do
        // not.
        let h = response.headers();
        assert_eq!(h["server"], "upstream-app/1.0");
        assert_eq!(h["x-powered-by"], "upstream-framework");
        assert!(h.get("x-drop-me").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("via").is_none());

        let seen = f.app.last().headers;
        assert_eq!(seen["x-forwarded-for"], vec!["203.0.113.7, 127.0.0.1"]);
        assert_eq!(seen["x-forwarded-proto"], vec!["http"]);
        assert_eq!(seen["x-forwarded-host"], vec!["app.clinic.test:9000"]);
        assert_eq!(seen["host"], vec!["app.clinic.test:9000"]);
        assert_eq!(seen["x-end-to-end"], vec!["kept"]);
        assert_eq!(seen.contains_key("x-hop"), connection == "keep-alive");
        for hop in ["keep-alive", "proxy-authorization", "via"] {
            assert!(!seen.contains_key(hop), "{hop} reached the app");
        }
    }
}

/// An app server written on raw TCP, for answers hyper would never send: it answers one
/// request per connection, then reads the next and closes without answering, as a server
/// does when its keep-alive timeout fires just as a request arrives.
async fn start_raw_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let answer: &[u8] = match head.split(' ').take(2).collect::<Vec<_>>()[..] {
                    ["HEAD", _] => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                    [_, "/until-close"] => b"HTTP/1.1 200 OK\r\n\r\nall of this, until the close",
                    [_, "/early-hints"] => {
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                          HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                          3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
                    }
                    _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                };
                if stream.write_all(answer).await.is_err() || head.contains("/until-close") {
                    return;
                }
                // The next request arrives and is dropped with the connection.
                let _ = stream.read(&mut byte).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn plain_requests_get_every_kind_of_answer_framing_through() {
    let f = Fixture::start().await;
    f.routes.publish(f.table(start_raw_upstream().await));
    let host = "Host: app.clinic.test\r\n";

    // Answered until the close: the client's connection closes after it too.
    let out = raw(
        f.edge,
        format!("GET /until-close HTTP/1.1\r\n{host}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close\r\n"),
        "{out}"
    );
    assert!(
        out.ends_with("\r\n\r\nall of this, until the close"),
        "{out}"
    );

    // An interim answer is dropped; a chunked one passes byte for byte, trailer included.
    // Then a HEAD answer, whose length names a body that never comes, ends the connection.
    let out = raw(
        f.edge,
        format!(
            "GET /early-hints HTTP/1.1\r\n{host}\r\nHEAD / HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(!out.contains("103"), "{out}");
    let (first, second) = out.split_at(
        out.find("HTTP/1.1 200 OK\r\nContent-Length: 10")
            .expect("HEAD answer"),
    );
    assert!(
        first.starts_with("HTTP/1.1 200 OK\r\n")
            && first.contains("Transfer-Encoding: chunked\r\n")
            && first.ends_with("\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        "{first}"
    );
    assert!(second.ends_with("\r\n\r\n"), "{second}");

    // Each connection to the machine serves one request and then drops the next unanswered:
    // a GET is sent again on a new connection, a POST (not safe to repeat) is not.
    let http = client();
    for _ in 0..3 {
        let response = http
            .get(f.url("/again"))
            .header("host", "app.clinic.test")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "ok");
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = http
            .post(f.url("/form"))
            .header("host", "app.clinic.test")
            .body("a=1")
            .send()
            .await
            .expect("request");
        statuses.push(response.status().as_u16());
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&502),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_routes_by_authority() {
    let f = Fixture::start().await;
    let stream = TcpStream::connect(f.edge).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);

    let request = Request::get("http://APP.clinic.test:443/hello")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"hello from clinic-app");
    let seen = f.app.last().headers;
    assert_eq!(seen["host"], vec!["APP.clinic.test:443"]);
    assert_eq!(seen["cookie"], vec!["a=1; b=2"]);

    // A body over HTTP/2 reaches the HTTP/1.1 app intact.
    let payload = vec![7u8; 300_000];
    let request = Request::post("http://app.clinic.test/hash")
        .body(
            Full::new(Bytes::from(payload.clone()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} {}", payload.len(), hex(&Sha256::digest(&payload)))
    );

    // Edge-made pages work over HTTP/2 too.
    let request = Request::get("http://nowhere.clinic.test/")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.status(), 404);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Clinic Cloud"));
}

#[tokio::test]
async fn route_swap_applies_to_the_next_request_while_in_flight_stream_completes() {
    let f = Fixture::start().await;
    let mut in_flight = get(&f, "app.clinic.test", "/stream").await;
    let first = in_flight
        .chunk()
        .await
        .expect("chunk")
        .expect("first chunk");
    assert_eq!(&first[..], b"clinic-app:first;");

    // Point the host at the other upstream; the next request goes there at once.
    f.routes.publish(f.table(f.other.addr));
    let response = get(&f, "app.clinic.test", "/hello").await;
    assert_eq!(response.text().await.expect("body"), "hello from other-app");

    // The stream that started before the swap finishes from where it started.
    f.app.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = in_flight.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");
}

#[tokio::test]
async fn response_body_streams_incrementally() {
    let f = Fixture::start().await;
    let mut response = get(&f, "app.clinic.test", "/stream").await;
    // The first chunk arrives while the upstream is still holding back the second.
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("first chunk in time")
        .expect("chunk")
        .expect("some data");
    assert_eq!(&first[..], b"clinic-app:first;");
    let pending = tokio::time::timeout(Duration::from_millis(200), response.chunk()).await;
    assert!(
        pending.is_err(),
        "second chunk came before the upstream sent it"
    );
    f.app.gate.notify_one();
    let second = response
        .chunk()
        .await
        .expect("chunk")
        .expect("second chunk");
    assert_eq!(&second[..], b"second");
}

#[tokio::test]
async fn streamed_upload_of_20_mib_arrives_intact() {
    let f = Fixture::with_config(EdgeConfig {
        max_request_body: 64 * 1024 * 1024,
        upstream_response_timeout: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    let chunk_count = 320;
    let chunks: Vec<Bytes> = (0..chunk_count)
        .map(|i: u32| {
            Bytes::from(
                (0..64 * 1024u32)
                    .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let mut hasher = Sha256::new();
    for c in &chunks {
        hasher.update(c);
    }
    let want = format!("{} {}", 20 * 1024 * 1024, hex(&hasher.finalize()));
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let response = client()
        .post(f.url("/hash"))
        .header("host", "app.clinic.test")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), want);
}

#[tokio::test]
async fn websocket_echo_round_trip() {
    let f = Fixture::start().await;
    let request = "ws://ws.clinic.test/echo"
        .into_client_request()
        .expect("ws request");
    let stream = TcpStream::connect(f.edge).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket handshake through the edge");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello through the edge"))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("message").expect("ok");
    assert_eq!(echoed, Message::text("hello through the edge"));
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("message").expect("ok");
    assert_eq!(echoed, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// Pages the edge makes itself.

#[tokio::test]
async fn every_edge_made_page_is_branded_and_never_names_the_platform() {
    let f = Fixture::start().await;

    // Unknown host under an org's base domain: that org's 404.
    assert_page(
        get(&f, "nope.clinic.test", "/").await,
        404,
        "Clinic Cloud",
        CLINIC_COLOR,
    )
    .await;
    // Under another org's base domain: that org's 404, never the first org's anything.
    let body = assert_page(
        get(&f, "nope.other.test", "/").await,
        404,
        "Other Org",
        OTHER_COLOR,
    )
    .await;
    assert!(!body.contains("Clinic"));
    // No org at all: the neutral fallback.
    let response = get(&f, "unknown.example", "/").await;
    assert_eq!(response.status(), 404);
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    assert_unbranded_platform(&headers, &body);
    assert!(!body.contains("Clinic") && !body.contains("Other Org"));
    assert!(body.contains("--accent:#4b5563"));

    assert_page(
        get(&f, "stopped.clinic.test", "/").await,
        502,
        "Clinic Cloud",
        CLINIC_COLOR,
    )
    .await;
    assert_page(
        get(&f, "refused.clinic.test", "/").await,
        502,
        "Clinic Cloud",
        CLINIC_COLOR,
    )
    .await;

    let response = get(&f, "starting.clinic.test", "/").await;
    assert_eq!(response.headers()["retry-after"], "2");
    let body = assert_page(response, 503, "Clinic Cloud", CLINIC_COLOR).await;
    assert!(body.contains("http-equiv=\"refresh\" content=\"2\""));

    let started = Instant::now();
    assert_page(
        get(&f, "app.clinic.test", "/slow").await,
        504,
        "Clinic Cloud",
        CLINIC_COLOR,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "504 waited for the app"
    );

    // 413 streamed: no Content-Length, counted while streaming.
    let seen_before = f.app.paths().len();
    let big = futures::stream::iter(
        (0..80).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 * 1024]))),
    )
    .chain(futures::stream::pending());
    let response = client()
        .post(f.url("/hash"))
        .header("host", "app.clinic.test")
        .body(reqwest::Body::wrap_stream(big))
        .send()
        .await
        .expect("answer to an oversized stream");
    assert_page(response, 413, "Clinic Cloud", CLINIC_COLOR).await;
    assert!(f.app.paths().len() <= seen_before + 1);

    // 413 declared: refused before the upstream is contacted, whether the client waits for
    // `100 Continue` or sends its body regardless (which the edge reads and drops, so the
    // refusal is not lost to a connection reset).
    let seen_before = f.app.paths();
    let answer = raw(
        f.edge,
        b"POST /declared-too-big HTTP/1.1\r\nHost: app.clinic.test\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 413);
    assert!(answer.contains("Clinic Cloud"));
    assert!(!answer.to_ascii_lowercase().contains("kiln"));
    let body_len = 6 * 1024 * 1024;
    let mut request = format!(
        "POST /declared-too-big-2 HTTP/1.1\r\nHost: app.clinic.test\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + body_len, b'x');
    let started = Instant::now();
    let answer = raw(f.edge, &request).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.contains("Clinic Cloud"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "lingered after the body ended"
    );
    assert_eq!(f.app.paths(), seen_before);

    // 400: no Host at all is answered plainly (no org to brand it with).
    let answer = raw(f.edge, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&answer), 400);
    assert!(!answer.to_ascii_lowercase().contains("kiln"));
    assert!(!answer.to_ascii_lowercase().contains("\r\nserver:"));
    // Two Host headers, or an empty one: also 400.
    let answer = raw(
        f.edge,
        b"GET / HTTP/1.1\r\nHost: app.clinic.test\r\nHost: app.other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400);
    let answer = raw(
        f.edge,
        b"GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400);
}

#[tokio::test]
async fn json_clients_get_json_errors() {
    let f = Fixture::start().await;
    for (host, status, code, brand) in [
        ("nope.clinic.test", 404, "not_found", "Clinic Cloud"),
        ("unknown.example", 404, "not_found", ""),
        ("stopped.clinic.test", 502, "not_running", "Clinic Cloud"),
        ("refused.clinic.test", 502, "not_running", "Clinic Cloud"),
        ("starting.clinic.test", 503, "starting", "Clinic Cloud"),
        ("nope.other.test", 404, "not_found", "Other Org"),
    ] {
        let response = client()
            .get(f.url("/"))
            .header("host", host)
            .header("accept", "application/json")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{host}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        assert_unbranded_platform(&headers, &text);
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["error"]["status"], status);
        assert_eq!(json["error"]["code"], code);
        assert_eq!(json["error"]["brand"], brand);
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let response = client()
        .get(f.url("/slow"))
        .header("host", "app.clinic.test")
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 504);
    let json: serde_json::Value = response.json().await.expect("json");
    assert_eq!(json["error"]["code"], "timeout");
}

/// Pages for hosts with no machine keep the connection for the next request, as an app's
/// answers do, and a HEAD request gets a page's headers without its body.
#[tokio::test]
async fn pages_keep_the_connection_and_a_head_gets_no_body() {
    let f = Fixture::start().await;
    let answer = raw(
        f.edge,
        b"HEAD / HTTP/1.1\r\nHost: refused.clinic.test\r\n\r\n\
          HEAD / HTTP/1.1\r\nHost: stopped.clinic.test\r\n\r\n\
          GET / HTTP/1.1\r\nHost: starting.clinic.test\r\n\r\n\
          GET / HTTP/1.1\r\nHost: nope.clinic.test\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: app.clinic.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut rest = answer.as_str();
    let mut answers = Vec::new();
    for head_request in [true, true, false, false, false] {
        let (head, after) = rest
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("an answer's head in {rest:?}"));
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a content-length in {head:?}"));
        let body_len = if head_request { 0 } else { length };
        answers.push((status_of(head), after[..body_len].to_owned()));
        rest = &after[body_len..];
    }
    assert_eq!(rest, "", "nothing after the last answer");
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [502, 502, 503, 404, 200]);
    assert!(answers[2].1.contains("Clinic Cloud"), "{}", answers[2].1);
    assert_eq!(answers[4].1, "hello from clinic-app");
}

// ---------------------------------------------------------------------------------------------
// Bad and hostile input.

#[tokio::test]
async fn smuggling_attempts_are_refused_before_the_app() {
    let f = Fixture::start().await;
    let cases: &[(&str, &[u8])] = &[
        // Both framing headers, either order: refused by the edge's framing check.
        (
            "cl-then-te",
            b"POST /smuggle-1 HTTP/1.1\r\nHost: app.clinic.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled-1 HTTP/1.1\r\nHost: app.clinic.test\r\n\r\n",
        ),
        (
            "te-then-cl",
            b"POST /smuggle-2 HTTP/1.1\r\nHost: app.clinic.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled-2 HTTP/1.1\r\nHost: app.clinic.test\r\n\r\n",
        ),
        // Refused by hyper itself.
        (
            "differing-cl",
            b"POST /smuggle-3 HTTP/1.1\r\nHost: app.clinic.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /smuggled-3 HTTP/1.1\r\n\r\n",
        ),
        (
            "te-not-chunked",
            b"POST /smuggle-4 HTTP/1.1\r\nHost: app.clinic.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "te-on-http10",
            b"POST /smuggle-5 HTTP/1.0\r\nHost: app.clinic.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad-cl",
            b"POST /smuggle-6 HTTP/1.1\r\nHost: app.clinic.test\r\nContent-Length: +4\r\n\r\nabcd",
        ),
    ];
    for (name, request) in cases {
        let answer = raw(f.edge, request).await;
        assert_eq!(status_of(&answer), 400, "{name}: {answer}");
        assert!(!answer.to_ascii_lowercase().contains("kiln"), "{name}");
        // Exactly one answer: the connection closed rather than serving the smuggled request.
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{name}: {answer}");
    }
    // The edge's own refusal is a branded page.
    let answer = raw(f.edge, cases[0].1).await;
    assert!(answer.contains("Clinic Cloud"));
    let seen = f.app.paths();
    assert!(
        seen.iter().all(|p| !p.contains("smuggle")),
        "the app saw a smuggling attempt: {seen:?}"
    );
    // A normal chunked request on the same edge still works.
    let answer = raw(
        f.edge,
        b"POST /hash HTTP/1.1\r\nHost: app.clinic.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200);
    assert!(answer.ends_with(&format!("3 {}", hex(&Sha256::digest(b"abc")))));
}

#[tokio::test]
async fn absolute_form_targets_route_by_host_header_only() {
    let f = Fixture::start().await;
    let answer = raw(
        f.edge,
        b"GET http://app.other.test/hello HTTP/1.1\r\nHost: app.clinic.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200);
    assert!(answer.ends_with("hello from clinic-app"), "{answer}");
    let seen = f.app.last();
    assert_eq!(seen.path, "/hello");
    assert_eq!(seen.headers["host"], vec!["app.clinic.test"]);
    assert!(
        f.other.paths().is_empty(),
        "the URI's authority was dialled"
    );
    // An absolute-form target pointing at an arbitrary host is never dialled either.
    let answer = raw(
        f.edge,
        b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: nope.clinic.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 404);
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let f = Fixture::start().await;
    let mut request =
        b"GET /hello HTTP/1.1\r\nHost: app.clinic.test\r\nConnection: close\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 40 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let answer = raw(f.edge, &request).await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("kiln"));
    assert!(f.app.paths().is_empty());
}

#[tokio::test]
async fn slowloris_is_cut_off_and_does_not_block_others() {
    let f = Fixture::start().await;
    // One client trickles its head a byte at a time; another sends nothing at all.
    let mut slow = TcpStream::connect(f.edge).await.expect("connect");
    let silent = TcpStream::connect(f.edge).await.expect("connect");
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for byte in b"GET /hello HTTP/1.1\r\nHost: app.clinic.test\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        // Cut off: the edge closed the connection.
        let mut buf = [0u8; 64];
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(2), slow.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        );
        (started.elapsed(), closed)
    });

    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let response = get(&f, "app.clinic.test", "/hello").await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a slow client delayed others"
    );

    let (lasted, closed) = trickle.await.expect("trickle task");
    assert!(closed, "slow client was not disconnected");
    assert!(
        lasted < Duration::from_secs(4),
        "slow client lasted {lasted:?}"
    );

    let mut silent = silent;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "silent client was not disconnected"
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle and probing.

#[tokio::test]
async fn probe_fetches_through_the_edge() {
    let f = Fixture::start().await;
    assert_eq!(
        kiln_edge::probe(f.edge, "app.clinic.test", "/hello")
            .await
            .expect("probe"),
        200
    );
    assert_eq!(
        kiln_edge::probe(f.edge, "stopped.clinic.test", "/")
            .await
            .expect("probe"),
        502
    );
    assert_eq!(
        kiln_edge::probe(f.edge, "nope.example", "/")
            .await
            .expect("probe"),
        404
    );
    let closed = closed_port().await;
    assert!(matches!(
        kiln_edge::probe(closed, "app.clinic.test", "/").await,
        Err(EdgeError::ProbeConnect { .. })
    ));
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_in_flight_requests() {
    let mut f = Fixture::start().await;
    let mut in_flight = get(&f, "app.clinic.test", "/stream").await;
    let first = in_flight
        .chunk()
        .await
        .expect("chunk")
        .expect("first chunk");
    assert_eq!(&first[..], b"clinic-app:first;");

    let edge = f.edge;
    if let Some(tx) = f.shutdown.take() {
        let _ = tx.send(());
    }
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if TcpStream::connect(edge).await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge still accepts after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The request that was already running finishes.
    f.app.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = in_flight.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");
    tokio::time::timeout(Duration::from_secs(5), f.stop())
        .await
        .expect("serve returns after draining")
        .expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_closes_connections_still_busy_after_the_grace_period() {
    let mut f = Fixture::with_config(EdgeConfig {
        shutdown_grace: Duration::from_millis(300),
        ..test_config()
    })
    .await;
    // A stream the app never finishes, and an open WebSocket.
    let mut stuck = get(&f, "app.clinic.test", "/stream").await;
    let first = stuck.chunk().await.expect("chunk").expect("first chunk");
    assert_eq!(&first[..], b"clinic-app:first;");
    let request = "ws://ws.clinic.test/"
        .into_client_request()
        .expect("ws request");
    let stream = TcpStream::connect(f.edge).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket");

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), f.stop())
        .await
        .expect("serve returns once the grace period is over")
        .expect("shutdown");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Both were closed rather than left hanging.
    let rest = tokio::time::timeout(Duration::from_secs(2), stuck.chunk()).await;
    assert!(
        matches!(rest, Ok(Err(_) | Ok(None))),
        "stuck stream still open"
    );
    let next = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    assert!(
        matches!(next, Ok(None | Some(Err(_)))),
        "websocket still open: {next:?}"
    );
}
