//! Previews and the edge end to end through the real `kiln` binary: a preview URL only once
//! the port answers through the edge, stable across dev-server restarts, machine reboots and
//! sandbox re-creation; WebSocket and streamed bodies through it; every page the edge makes
//! carries the org's brand and never the platform's name; a stock Vite dev server with HMR.

// The Vite step packs node_modules with the host's `tar`, as a builder's tooling would.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kiln_api::Client;
use kiln_api::apps::AppConfig;
use kiln_api::orgs::{Brand, OrgConfig, OrgUpdate};
use kiln_api::sandboxes::{ExecConfig, ProcessConfig, SandboxConfig};
use kiln_testkit::{Kiln, edge_client, edge_tls_client, problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const DEV_SERVER: &str = include_str!("fixtures/devserver.py");
const MAX_BODY: u64 = 64 << 20;

fn dev_process(name: &str, port: u16, greeting: &str) -> ProcessConfig {
    ProcessConfig {
        name: name.into(),
        cmd: vec!["python3".into(), "devserver.py".into(), port.to_string()],
        cwd: None,
        env: BTreeMap::from([("GREETING".to_owned(), greeting.to_owned())]),
        port: Some(port),
    }
}

/// Asserts that nothing the edge made names the platform.
fn assert_unbranded(label: &str, response: &(u16, reqwest::header::HeaderMap, String)) {
    let (_, headers, body) = response;
    assert!(
        !body.to_lowercase().contains("kiln"),
        "{label}: body names the platform:\n{body}"
    );
    for (name, value) in headers {
        let text = format!("{name}: {}", value.to_str().unwrap_or("")).to_lowercase();
        assert!(
            !text.contains("kiln"),
            "{label}: header names the platform: {text}"
        );
    }
    for name in ["server", "via", "x-powered-by"] {
        assert!(
            headers.get(name).is_none(),
            "{label}: the edge sent `{name}`"
        );
    }
}

async fn fetch(
    http: &reqwest::Client,
    url: &str,
    accept: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let response = http
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .expect("edge answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

/// GETs `url` until it answers 200, returning the body.
async fn until_ok(http: &reqwest::Client, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = fetch(http, url, "text/html").await;
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered 200; last {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn write_dev_server(api: &Client, sbx: &str) {
    api.put_file(sbx, "devserver.py", DEV_SERVER)
        .await
        .expect("write dev server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn previews_and_the_edge() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: sandboxes need root (namespaces, bridges, cgroups)");
        return;
    }
    let config = format!("[limits]\nmax_file_bytes = {MAX_BODY}\n");
    let mut kiln = Kiln::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[],
        Some(&config),
    )
    .await
    .expect("kiln up starts");
    let api = kiln.client();
    let edge: SocketAddr = kiln.edge_addr();
    let http = edge_client(edge);

    // --- a preview is handed out only once the port answers through the edge -----------
    let app = api
        .create_app(&AppConfig {
            name: "Web".into(),
            slug: None,
        })
        .await
        .expect("app");
    assert_eq!(
        problem(api.preview("web", 8000, 1).await).status,
        409,
        "no sandbox yet"
    );
    let sandbox = api
        .create_sandbox("web", &SandboxConfig::default(), 120)
        .await
        .expect("sandbox");
    write_dev_server(&api, &sandbox.id).await;
    let crash = ProcessConfig {
        name: "dev".into(),
        cmd: vec![
            "python3".into(),
            "-c".into(),
            "print('compiling the app'); raise SystemExit(1)".into(),
        ],
        cwd: None,
        env: BTreeMap::new(),
        port: Some(8000),
    };
    api.start_process(&sandbox.id, &crash)
        .await
        .expect("start crashing dev server");
    let p = problem(api.preview("web", 8000, 2).await);
    assert_eq!(p.status, 503, "{p:?}");
    assert!(
        p.log_tail
            .as_deref()
            .unwrap_or("")
            .contains("compiling the app"),
        "{p:?}"
    );
    // Meanwhile the URL shows the org's loading page, which retries by itself.
    let starting = fetch(&http, &app.urls.preview, "text/html").await;
    assert_eq!(starting.0, 503);
    assert_eq!(
        starting
            .1
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("")),
        Some("2")
    );
    assert_unbranded("starting page", &starting);

    api.start_process(&sandbox.id, &dev_process("dev", 8000, "v1"))
        .await
        .expect("dev server");
    let cli = kiln.cli(&["preview", "web", "--port", "8000"]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let url = String::from_utf8_lossy(&cli.stdout).trim().to_owned();
    assert_eq!(
        url, app.urls.preview,
        "the CLI prints the URL the server reports"
    );
    let (status, headers, body) = fetch(&http, &format!("{url}/first"), "*/*").await;
    assert_eq!((status, body.as_str()), (200, "hello from v1 at /first\n"));
    let forwarded = headers
        .get("x-seen-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        forwarded.starts_with("web.sandbox.localhost"),
        "{forwarded}"
    );
    let shown = kiln.cli(&["apps", "show", "web"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&url));

    // --- the same preview over HTTPS: a certificate from the local authority, HTTP/2 by ALPN
    let root = std::fs::read(kiln.data_dir().join("edge-ca/ca.pem")).expect("the local root");
    let secure = edge_tls_client(kiln.edge_https_addr(), &root).expect("a TLS client");
    let https_url = format!(
        "https://web.sandbox.localhost:{}/secure",
        kiln.edge_https_addr().port()
    );
    let answer = secure
        .get(&https_url)
        .send()
        .await
        .expect("HTTPS through the edge");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    let proto = answer.headers().get("x-seen-forwarded-proto").cloned();
    assert_eq!(proto.as_ref().and_then(|v| v.to_str().ok()), Some("https"));
    assert_eq!(
        answer.text().await.expect("body"),
        "hello from v1 at /secure\n"
    );

    // --- WebSocket echo and a streamed body through the preview -------------------------
    let stream = tokio::net::TcpStream::connect(edge)
        .await
        .expect("connect edge");
    let request = format!("{}/ws", url.replace("http://", "ws://"))
        .into_client_request()
        .expect("ws request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket upgrade through the edge");
    ws.send(Message::text("ping through the preview"))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("echo").expect("frame");
    assert_eq!(
        echoed.into_text().expect("text").as_str(),
        "ping through the preview"
    );
    ws.close(None).await.ok();

    let started = Instant::now();
    let mut body = http
        .get(format!("{url}/stream"))
        .send()
        .await
        .expect("stream")
        .bytes_stream();
    let first = body.next().await.expect("first chunk").expect("bytes");
    let first_at = started.elapsed();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.expect("chunk"));
    }
    assert!(String::from_utf8_lossy(&first).starts_with("chunk 0"));
    assert!(String::from_utf8_lossy(&rest).contains("chunk 2"));
    assert!(
        started.elapsed() >= first_at + Duration::from_millis(800),
        "chunks arrive as the app writes them"
    );

    let upload = vec![7u8; 5 << 20];
    let digest = http
        .post(format!("{url}/upload"))
        .body(upload.clone())
        .send()
        .await
        .expect("upload")
        .text()
        .await
        .expect("digest");
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&upload))
    };
    assert_eq!(digest, expected, "request bodies stream through intact");

    // --- the URL is stable: dev-server restart, machine reboot, sandbox re-create --------
    api.start_process(&sandbox.id, &dev_process("dev", 8000, "v2"))
        .await
        .expect("restart dev server");
    assert_eq!(
        until_ok(&http, &format!("{url}/again")).await,
        "hello from v2 at /again\n"
    );

    kiln.stop().expect("graceful stop");
    kiln.restart().await.expect("start again");
    let api = kiln.client();
    assert_eq!(
        until_ok(&http, &format!("{url}/rebooted")).await,
        "hello from v2 at /rebooted\n"
    );

    api.delete_sandbox(&sandbox.id)
        .await
        .expect("delete sandbox");
    let gone = fetch(&http, &url, "text/html").await;
    assert_eq!(gone.0, 502, "no sandbox: the org's not-running page");
    assert_unbranded("not running page", &gone);
    let fresh = api
        .create_sandbox("web", &SandboxConfig::default(), 120)
        .await
        .expect("new sandbox");
    write_dev_server(&api, &fresh.id).await;
    api.start_process(&fresh.id, &dev_process("dev", 8000, "v3"))
        .await
        .expect("dev server");
    assert_eq!(
        until_ok(&http, &format!("{url}/recreated")).await,
        "hello from v3 at /recreated\n"
    );

    // A dev server bound to loopback only is named as such, with the fix.
    api.start_process(
        &fresh.id,
        &ProcessConfig {
            name: "local".into(),
            cmd: vec![
                "python3".into(),
                "devserver.py".into(),
                "9000".into(),
                "127.0.0.1".into(),
            ],
            cwd: None,
            env: BTreeMap::new(),
            port: Some(9000),
        },
    )
    .await
    .expect("loopback server");
    let p = problem(api.preview("web", 9000, 10).await);
    assert_eq!((p.status, p.field.as_deref()), (422, Some("port")), "{p:?}");
    assert!(p.detail.contains("0.0.0.0"), "{}", p.detail);
    api.preview("web", 8000, 30)
        .await
        .expect("back to port 8000");

    // --- white-label pages --------------------------------------------------------------
    let clinic = api
        .create_org(&OrgConfig {
            name: "Clinic".into(),
            slug: "clinic".into(),
            base_domain: "clinic.test".into(),
            brand: Brand {
                name: "Clinic Cloud".into(),
                primary_color: Some("#0a7cff".into()),
                logo_url: Some("https://cdn.clinic.test/logo.png".into()),
                support_url: Some("https://help.clinic.test/".into()),
            },
        })
        .await
        .expect("org");
    let p = problem(
        api.create_org(&OrgConfig {
            name: "Thief".into(),
            slug: "thief".into(),
            base_domain: "sandbox.clinic.test".into(),
            brand: Brand::default(),
        })
        .await,
    );
    assert_eq!(
        (p.status, p.field.as_deref()),
        (409, Some("base_domain")),
        "no taking another org's hosts"
    );
    let token = api
        .create_token(&clinic.id, "builder")
        .await
        .expect("token")
        .token;
    let clinic_api = kiln.client_with(&token);
    let portal = clinic_api
        .create_app(&AppConfig {
            name: "Portal".into(),
            slug: None,
        })
        .await
        .expect("app");
    let edge_port = edge.port();
    let pages = [
        (
            "unknown host",
            format!("http://nothing-here.clinic.test:{edge_port}/"),
            404,
        ),
        (
            "production not running",
            format!("http://portal.clinic.test:{edge_port}/"),
            502,
        ),
        ("preview not running", portal.urls.preview.clone(), 502),
    ];
    for (label, url, status) in &pages {
        let page = fetch(&http, url, "text/html").await;
        assert_eq!(page.0, *status, "{label}");
        assert!(
            page.2.contains("Clinic Cloud") && page.2.contains("#0a7cff"),
            "{label} is branded:\n{}",
            page.2
        );
        assert!(
            page.2.contains("https://help.clinic.test/")
                && page.2.contains("https://cdn.clinic.test/logo.png")
        );
        assert_unbranded(label, &page);
        let json = fetch(&http, url, "application/json").await;
        let value: serde_json::Value = serde_json::from_str(&json.2).expect("JSON page");
        assert_eq!(value["error"]["brand"], "Clinic Cloud", "{label}: {value}");
        assert_unbranded(label, &json);
    }
    let neutral = fetch(
        &http,
        &format!("http://nobody.example.test:{edge_port}/"),
        "text/html",
    )
    .await;
    assert_eq!(neutral.0, 404);
    assert!(
        !neutral.2.contains("Clinic"),
        "a host of no org shows no org's brand"
    );
    assert_unbranded("neutral 404", &neutral);
    let too_large = http
        .post(format!("{url}/upload"))
        .body(vec![0u8; (MAX_BODY + 1) as usize])
        .send()
        .await
        .expect("413 answer");
    assert_eq!(too_large.status().as_u16(), 413);
    let headers = too_large.headers().clone();
    let body = too_large.text().await.unwrap_or_default();
    assert_unbranded("too large", &(413, headers, body));

    // A brand change shows on the very next request.
    clinic_api
        .update_org(
            &clinic.id,
            &OrgUpdate {
                name: None,
                brand: Some(Brand {
                    name: "Clinic Two".into(),
                    primary_color: Some("#113355".into()),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("patch brand");
    let page = fetch(&http, &pages[0].1, "text/html").await;
    assert!(
        page.2.contains("Clinic Two") && page.2.contains("#113355"),
        "{}",
        page.2
    );

    // Requests without a host are refused plainly, never proxied.
    let mut raw = tokio::net::TcpStream::connect(edge).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut answer))
        .await
        .expect("answer")
        .expect("read");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 400"));

    // --- the edge as its own process follows the same routes ------------------------------
    let (own_port, own_tls_port) = (kiln_testkit::free_port(), kiln_testkit::free_port());
    // It shares the platform's local authority, so clients keep one root for both edges.
    let ca_dir = kiln.data_dir().join("edge-ca");
    let _edge = kiln
        .cli_process(&[
            "edge",
            "--listen",
            &format!("127.0.0.1:{own_port}"),
            "--https-listen",
            &format!("127.0.0.1:{own_tls_port}"),
            "--local-ca-dir",
            &ca_dir.display().to_string(),
        ])
        .expect("kiln edge starts");
    let own_addr = SocketAddr::from(([127, 0, 0, 1], own_port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(own_addr).await.is_err() {
        assert!(Instant::now() < deadline, "kiln edge never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let own = edge_client(own_addr);
    let own_url = url.replace(&format!(":{}", edge.port()), &format!(":{own_port}"));
    assert!(
        until_ok(&own, &format!("{own_url}/via-own-edge"))
            .await
            .starts_with("hello from v3")
    );
    let own_secure = edge_tls_client(SocketAddr::from(([127, 0, 0, 1], own_tls_port)), &root)
        .expect("a TLS client");
    let own_https = format!("https://web.sandbox.localhost:{own_tls_port}/via-own-edge");
    let answer = own_secure
        .get(&own_https)
        .send()
        .await
        .expect("HTTPS through kiln edge");
    assert!(
        answer
            .text()
            .await
            .expect("body")
            .starts_with("hello from v3")
    );
    clinic_api
        .update_org(
            &clinic.id,
            &OrgUpdate {
                name: None,
                brand: Some(Brand {
                    name: "Clinic Three".into(),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("patch brand");
    let unknown = format!("http://nothing-here.clinic.test:{own_port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = fetch(&own, &unknown, "text/html").await;
        if page.2.contains("Clinic Three") {
            assert_unbranded("separate edge 404", &page);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the separate edge never saw the brand change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    vite_through_the_preview(&api, &http, &fresh.id, &url).await;
}

/// A stock Vite dev server (from `KILN_TEST_VITE_DIR`, installed by `scripts/test.sh`)
/// answers through the preview, and its HMR WebSocket connects through the edge.
async fn vite_through_the_preview(api: &Client, http: &reqwest::Client, sbx: &str, url: &str) {
    let Some(dir) = std::env::var_os("KILN_TEST_VITE_DIR") else {
        eprintln!("SKIPPED the Vite step: KILN_TEST_VITE_DIR is not set (scripts/test.sh sets it)");
        return;
    };
    let tarball = std::process::Command::new("tar")
        .args(["czf", "-", "-C"])
        .arg(&dir)
        .arg("node_modules")
        .output()
        .expect("tar runs");
    assert!(tarball.status.success(), "pack node_modules");
    api.put_file(sbx, "site/modules.tgz", tarball.stdout)
        .await
        .expect("upload node_modules");
    api.put_file(
        sbx,
        "site/index.html",
        "<!doctype html><title>shop</title><script type=\"module\" src=\"/main.js\"></script>",
    )
    .await
    .expect("index");
    api.put_file(
        sbx,
        "site/main.js",
        "document.title = 'vite through the preview';\n",
    )
    .await
    .expect("main");
    let unpack = api
        .exec(
            sbx,
            &ExecConfig {
                cmd: vec!["tar".into(), "xzf".into(), "modules.tgz".into()],
                cwd: Some("site".into()),
                ..Default::default()
            },
        )
        .await
        .expect("unpack");
    assert_eq!(unpack.exit_code, 0, "{unpack:?}");
    api.start_process(
        sbx,
        &ProcessConfig {
            name: "dev".into(),
            cmd: [
                "node",
                "node_modules/vite/bin/vite.js",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
                "--strictPort",
            ]
            .map(String::from)
            .to_vec(),
            cwd: Some("site".into()),
            env: BTreeMap::new(),
            port: Some(8000),
        },
    )
    .await
    .expect("vite");
    api.preview("web", 8000, 60)
        .await
        .expect("vite answers through the edge");
    let index = until_ok(http, &format!("{url}/")).await;
    assert!(
        index.contains("/@vite/client"),
        "Vite serves the page:\n{index}"
    );
    // Accepting HTML would get the SPA fallback page; a script loader accepts anything.
    let (status, _, client) = fetch(http, &format!("{url}/@vite/client"), "*/*").await;
    assert_eq!(status, 200);
    let token = client
        .split("const wsToken = ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(|quoted| quoted.trim_matches(|c| c == '"' || c == '\''))
        .unwrap_or_else(|| {
            panic!(
                "the Vite client carries its HMR token:\n{}",
                &client[..client.len().min(2000)]
            )
        });
    let edge = http_edge_addr(url);
    let stream = tokio::net::TcpStream::connect(edge)
        .await
        .expect("connect edge");
    let mut request = format!("{}/?token={token}", url.replace("http://", "ws://"))
        .into_client_request()
        .expect("ws");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "vite-hmr".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("HMR socket upgrades through the edge");
    let hello = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("HMR speaks")
        .expect("frame")
        .expect("ok");
    assert!(
        hello
            .into_text()
            .expect("text")
            .as_str()
            .contains("connected"),
        "Vite's HMR greets the client"
    );
}

/// The edge's address from a preview URL (`http://host:port`), on loopback.
fn http_edge_addr(url: &str) -> SocketAddr {
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("port in URL");
    SocketAddr::from(([127, 0, 0, 1], port))
}
