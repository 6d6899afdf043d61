//! HTTPS at the edge: real TLS handshakes from reqwest and tokio-tungstenite (rustls) against
//! the edge on loopback, with certificates from the local issuer or provided ones, HTTP/2
//! chosen by ALPN, WebSocket upgrades inside TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use kiln_edge::{
    Backend, Brand, Certificate, Edge, EdgeConfig, LocalIssuer, OrgSite, Route, RouteKind,
    RouteTable, Routes, TlsConfig, TlsError,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BRAND_COLOR: &str = "#0a7cff";

/// An app that answers with the scheme the edge forwarded and the protocol it was reached by.
async fn start_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "proto={proto}"
                    )))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A WebSocket server that echoes every text or binary message.
async fn start_ws_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// The edge with a plain and a TLS listener; `app.clinic.test` and `www.shop.test` lead to
/// the app, `ws.clinic.test` to a WebSocket echo, and `clinic.test` is the org's base domain.
struct Fixture {
    http: SocketAddr,
    https: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

async fn start_edge(
    tls: TlsConfig,
    config: EdgeConfig,
) -> Result<Fixture, Box<dyn std::error::Error>> {
    let upstream = start_upstream().await?;
    let ws_upstream = start_ws_upstream().await?;
    let brand = Arc::new(Brand {
        name: "Clinic Cloud".into(),
        primary_color: Some(BRAND_COLOR.into()),
        logo_url: None,
        support_url: None,
    });
    let route = |host: &str, to: SocketAddr| Route {
        host: host.into(),
        kind: RouteKind::Production,
        org_id: "org_clinic".into(),
        brand: Arc::clone(&brand),
        backend: Backend::Ready(vec![to]),
    };
    let routes = Routes::new(RouteTable::new(
        [
            route("app.clinic.test", upstream),
            route("www.shop.test", upstream),
            route("ws.clinic.test", ws_upstream),
        ],
        [OrgSite {
            org_id: "org_clinic".into(),
            base_domain: "clinic.test".into(),
            brand: Arc::clone(&brand),
        }],
    )?);
    let plain = TcpListener::bind("127.0.0.1:0").await?;
    let secure = TcpListener::bind("127.0.0.1:0").await?;
    let (http, https) = (plain.local_addr()?, secure.local_addr()?);
    let (shutdown, stopped) = oneshot::channel::<()>();
    let edge = Edge::new(config, routes).with_tls(secure, tls)?;
    tokio::spawn(edge.serve(plain, async move {
        let _ = stopped.await;
    }));
    Ok(Fixture {
        http,
        https,
        _shutdown: shutdown,
    })
}

/// The edge with only a local issuer (in a temporary directory, returned to keep it), and
/// the issuer's root in PEM.
async fn start_with_local_issuer()
-> Result<(Fixture, String, tempfile::TempDir), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let issuer = LocalIssuer::load_or_create(dir.path())?;
    let root = issuer.ca_pem().to_owned();
    let tls = TlsConfig {
        local_issuer: Some(issuer),
        ..TlsConfig::default()
    };
    Ok((start_edge(tls, test_config()).await?, root, dir))
}

fn test_config() -> EdgeConfig {
    EdgeConfig {
        workers: 2,
        header_read_timeout: Duration::from_millis(500),
        ..EdgeConfig::default()
    }
}

/// A client that trusts only `root` and reaches every named host at `addr`.
fn client(root: &str, addr: SocketAddr, hosts: &[&str]) -> reqwest::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes())?)
        .timeout(Duration::from_secs(10));
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    Ok(builder)
}

#[tokio::test]
async fn routed_hosts_answer_over_https_with_http1_and_http2_by_alpn() -> TestResult {
    let (edge, root, _dir) = start_with_local_issuer().await?;
    let url = format!("https://app.clinic.test:{}/", edge.https.port());

    // ALPN offers h2 first, and the edge takes it.
    let h2 = client(&root, edge.https, &["app.clinic.test"])?.build()?;
    let answer = h2.get(&url).send().await?;
    assert_eq!(answer.version(), Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await?, "proto=https");

    // HTTP/1.1 over TLS takes the relay; several requests share the connection.
    let h1 = client(&root, edge.https, &["app.clinic.test"])?
        .http1_only()
        .build()?;
    for _ in 0..3 {
        let answer = h1.get(&url).send().await?;
        assert_eq!(answer.version(), Version::HTTP_11);
        assert_eq!(answer.text().await?, "proto=https");
    }

    // The plain listener still says http.
    let plain = reqwest::Client::builder()
        .resolve("app.clinic.test", edge.http)
        .build()?;
    let answer = plain
        .get(format!("http://app.clinic.test:{}/", edge.http.port()))
        .send()
        .await?;
    assert_eq!(answer.text().await?, "proto=http");
    Ok(())
}

#[tokio::test]
async fn a_websocket_upgrades_over_tls() -> TestResult {
    let (edge, root, _dir) = start_with_local_issuer().await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(root.as_bytes())?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Browsers open WebSockets over HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(edge.https).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("ws.clinic.test")?, tcp)
        .await?;
    let url = format!("wss://ws.clinic.test:{}/socket", edge.https.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, tls).await?;
    assert_eq!(response.status(), 101);
    for text in ["over tls", "and again"] {
        ws.send(Message::text(text)).await?;
        let echoed = ws.next().await.ok_or("the socket closed")??;
        assert_eq!(echoed.into_text()?.as_str(), text);
    }
    Ok(())
}

#[tokio::test]
async fn an_org_host_without_a_route_gets_its_branded_page_and_a_stranger_no_certificate()
-> TestResult {
    let (edge, root, _dir) = start_with_local_issuer().await?;
    let client = client(&root, edge.https, &["gone.clinic.test", "stranger.test"])?.build()?;

    let page = client
        .get(format!("https://gone.clinic.test:{}/", edge.https.port()))
        .send()
        .await?;
    assert_eq!(page.status(), 404);
    let text = page.text().await?;
    assert!(text.contains(BRAND_COLOR), "{text}");
    assert!(!text.to_ascii_lowercase().contains("kiln"), "{text}");

    // The edge serves no name outside its routes and org domains, so it signs none.
    let refused = client
        .get(format!("https://stranger.test:{}/", edge.https.port()))
        .send()
        .await;
    let error = refused.expect_err("a name the edge does not serve must fail the handshake");
    assert!(error.is_connect(), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn a_provided_certificate_is_served_for_the_names_it_covers() -> TestResult {
    // An operator's wildcard for *.shop.test, from a root of their own.
    let root_key = rcgen::KeyPair::generate()?;
    let mut root_params = rcgen::CertificateParams::default();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Shop test root");
    let operator_root = root_params.self_signed(&root_key)?;
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["*.shop.test".to_owned()])?
        .signed_by(&leaf_key, &root_issuer)?;
    let provided = Certificate::from_pem(
        format!("{}{}", leaf.pem(), operator_root.pem()).as_bytes(),
        leaf_key.serialize_pem().as_bytes(),
    )?;

    let dir = tempfile::tempdir()?;
    let issuer = LocalIssuer::load_or_create(dir.path())?;
    let local_root = issuer.ca_pem().to_owned();
    let edge = start_edge(
        TlsConfig {
            certificates: vec![provided],
            local_issuer: Some(issuer),
        },
        test_config(),
    )
    .await?;
    let hosts = ["www.shop.test", "app.clinic.test"];
    let trusts_operator = client(&operator_root.pem(), edge.https, &hosts)?.build()?;
    let trusts_local = client(&local_root, edge.https, &hosts)?.build()?;
    let port = edge.https.port();

    let answer = trusts_operator
        .get(format!("https://www.shop.test:{port}/"))
        .send()
        .await?;
    assert_eq!(answer.text().await?, "proto=https");
    // A name the wildcard does not cover falls back to the local issuer.
    let answer = trusts_local
        .get(format!("https://app.clinic.test:{port}/"))
        .send()
        .await?;
    assert_eq!(answer.text().await?, "proto=https");
    let wrong_root = trusts_operator
        .get(format!("https://app.clinic.test:{port}/"))
        .send()
        .await;
    assert!(
        wrong_root.is_err(),
        "app.clinic.test must not get the shop certificate"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_cut_off() -> TestResult {
    let (edge, root, _dir) = start_with_local_issuer().await?;

    let mut silent = TcpStream::connect(edge.https).await?;
    let started = Instant::now();
    // Meanwhile others are served.
    let answer = client(&root, edge.https, &["app.clinic.test"])?
        .build()?
        .get(format!("https://app.clinic.test:{}/", edge.https.port()))
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    Ok(())
}

#[tokio::test]
async fn plain_http_on_the_https_port_is_told_to_use_https() -> TestResult {
    let (edge, _root, _dir) = start_with_local_issuer().await?;
    let mut plain = TcpStream::connect(edge.https).await?;
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app.clinic.test\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_string(&mut answer)).await??;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.ends_with("use an https:// address for it.\n"),
        "{answer}"
    );
    assert!(!answer.to_ascii_lowercase().contains("kiln"), "{answer}");
    Ok(())
}

#[test]
fn unusable_certificate_files_are_refused_with_the_reason() -> TestResult {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])?.self_signed(&key)?;
    let other_key = rcgen::KeyPair::generate()?;

    let no_cert = Certificate::from_pem(b"not pem at all", key.serialize_pem().as_bytes());
    assert!(
        matches!(no_cert, Err(TlsError::NoCertificate)),
        "{no_cert:?}"
    );
    let no_key = Certificate::from_pem(cert.pem().as_bytes(), b"");
    assert!(matches!(no_key, Err(TlsError::Pem { .. })), "{no_key:?}");
    let mismatched =
        Certificate::from_pem(cert.pem().as_bytes(), other_key.serialize_pem().as_bytes());
    let error = mismatched.expect_err("a key of another certificate");
    assert!(error.to_string().contains("private key"), "{error}");
    Ok(())
}
