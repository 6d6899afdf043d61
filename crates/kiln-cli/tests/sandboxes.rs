//! End to end through the real `kiln` binary: apps, sandboxes, exec, files, processes,
//! isolation, bad input and a kill -9 restart. One platform instance serves every step
//! (machines take real namespaces, bridges and cgroups, so this needs root).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kiln_api::Problem;
use kiln_api::apps::AppConfig;
use kiln_api::orgs::{Brand, OrgConfig};
use kiln_api::sandboxes::{ExecConfig, ExecEvent, SandboxConfig, SandboxStatus};
use kiln_testkit::{Kiln, cli_json, problem};
use rand::RngCore;
use reqwest::Method;

const MAX_FILE: u64 = 8 << 20;

fn exec(cmd: &[&str]) -> ExecConfig {
    ExecConfig {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(script: &str) -> ExecConfig {
    exec(&["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandboxes_end_to_end() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: sandboxes need root (namespaces, bridges, cgroups)");
        return;
    }
    // The API listens on every interface, so the firewall (not the bind address) is what
    // keeps machines away from it.
    let api_port = kiln_testkit::free_port();
    let api_addr = format!("0.0.0.0:{api_port}");
    let config = format!("[limits]\nmax_file_bytes = {MAX_FILE}\n");
    let mut kiln = Kiln::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[("KILN_API_ADDR", &api_addr)],
        Some(&config),
    )
    .await
    .expect("kiln up starts");
    let api = kiln.client();

    // --- the API's own surface ---------------------------------------------------------
    let anonymous = kiln_api::Client::new(&kiln.api_url, None);
    assert_eq!(
        anonymous
            .health()
            .await
            .expect("health needs no token")
            .status,
        "ok"
    );
    assert_eq!(problem(anonymous.apps().await).status, 401);
    assert_eq!(
        problem(kiln.client_with("kt_forged").apps().await).status,
        401
    );
    let (status, doc) = api
        .raw(Method::GET, "/v1/openapi.json", &BTreeMap::new(), None)
        .await
        .expect("openapi");
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("openapi is JSON");
    assert_eq!(status.as_u16(), 200);
    assert!(
        doc["paths"]["/v1/sandboxes/{sbx}/exec"]["post"].is_object(),
        "exec is documented"
    );

    // --- CLI: app and sandbox -------------------------------------------------------
    let app = cli_json(&kiln.cli(&["--json", "apps", "create", "Shop Front"]));
    assert_eq!(app["slug"], "shop-front");
    let shown = kiln.cli(&["apps", "show", "shop-front"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("http://shop-front.sandbox.localhost:"),
        "{shown}"
    );

    let sandbox = cli_json(&kiln.cli(&["--json", "sandbox", "create", "shop-front"]));
    assert_eq!(sandbox["status"], "running", "{sandbox}");
    let sbx = sandbox["id"].as_str().expect("id").to_owned();
    let address = sandbox["address"].as_str().expect("address").to_owned();

    // --- files -----------------------------------------------------------------------
    let written = api
        .put_file(&sbx, "src/hello.txt", "hello from the workspace\n")
        .await
        .expect("put");
    assert_eq!((written.path.as_str(), written.size), ("src/hello.txt", 25));
    let mut blob = vec![0u8; 3 << 20];
    rand::rng().fill_bytes(&mut blob);
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("blob.bin");
    std::fs::write(&local, &blob).expect("write local");
    let remote = format!("{sbx}:data/blob.bin");
    cli_json(&kiln.cli(&[
        "--json",
        "sandbox",
        "cp",
        local.to_str().expect("utf8"),
        &remote,
    ]));
    let back = tmp.path().join("back.bin");
    cli_json(&kiln.cli(&[
        "--json",
        "sandbox",
        "cp",
        &remote,
        back.to_str().expect("utf8"),
    ]));
    assert!(
        std::fs::read(&back).expect("read back") == blob,
        "bytes round-trip through the sandbox"
    );
    let listing = api.list_files(&sbx, "data").await.expect("list");
    assert_eq!(listing.items.len(), 1);
    assert_eq!(
        (listing.items[0].name.as_str(), listing.items[0].size),
        ("blob.bin", 3 << 20)
    );

    // --- exec: JSON and stream ---------------------------------------------------------
    let result = api
        .exec(&sbx, &exec(&["cat", "src/hello.txt"]))
        .await
        .expect("exec");
    assert_eq!(
        (result.exit_code, result.stdout.as_str()),
        (0, "hello from the workspace\n")
    );
    let out = kiln.cli(&[
        "sandbox",
        "exec",
        &sbx,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let mut events = Box::pin(
        api.exec_stream(&sbx, &sh("for i in 1 2 3; do echo line$i; sleep 0.1; done"))
            .await
            .expect("stream"),
    );
    let mut lines = String::new();
    let mut exit = None;
    while let Some(event) = events.next().await {
        match event.expect("event") {
            ExecEvent::Stdout { stdout } => lines.push_str(&stdout),
            ExecEvent::Stderr { .. } => {}
            ExecEvent::Exit { exit_code, .. } => exit = Some(exit_code),
        }
    }
    assert_eq!((lines.as_str(), exit), ("line1\nline2\nline3\n", Some(0)));
    let missing = api
        .exec(&sbx, &exec(&["no-such-program"]))
        .await
        .expect("exec answers");
    assert_eq!(missing.exit_code, 127);
    assert!(
        missing
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("not_found"),
        "{missing:?}"
    );

    // --- a supervised server process and its logs ------------------------------------
    let run = kiln.cli(&[
        "sandbox",
        "run",
        &sbx,
        "--name",
        "web",
        "--port",
        "8000",
        "--",
        "python3",
        "-u",
        "-m",
        "http.server",
        "8000",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://{address}:8000/src/hello.txt");
    let body = get_text(&http, &url).await;
    assert_eq!(
        body, "hello from the workspace\n",
        "the machine's address serves its process"
    );
    let logs = kiln.cli(&["sandbox", "logs", &sbx, "web"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("Serving HTTP") && logs.contains("GET /src/hello.txt"),
        "{logs}"
    );
    let mut follow = Box::pin(api.follow_process_logs(&sbx, "web").await.expect("follow"));
    http.get(format!("http://{address}:8000/followed-request"))
        .send()
        .await
        .expect("request");
    let mut followed = String::new();
    while !followed.contains("followed-request") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("new log output arrives while following")
            .expect("stream open")
            .expect("chunk");
        followed.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(follow);

    // --- isolation ---------------------------------------------------------------------
    let ps = api
        .exec(&sbx, &exec(&["ps", "-e", "-o", "pid=,comm="]))
        .await
        .expect("ps");
    let procs: Vec<&str> = ps.stdout.lines().map(str::trim).collect();
    assert!(
        procs.len() <= 6,
        "only the machine's own processes: {procs:?}"
    );
    assert!(
        procs.iter().any(|p| p.starts_with("1 ")),
        "the machine has its own PID 1: {procs:?}"
    );
    assert!(
        !ps.stdout.contains("kiln up")
            && !procs
                .iter()
                .any(|p| p.ends_with("systemd") || p.ends_with("cargo"))
    );
    let sentinel = format!("/root/kiln-host-secret-{}", std::process::id());
    std::fs::write(&sentinel, "host secret").expect("write host sentinel");
    let data_dir = kiln.data_dir().display().to_string();
    let probe = api
        .exec(&sbx, &sh(&format!("test -e {sentinel} && echo host-root; test -e {data_dir} && echo data-dir; touch /usr/x 2>/dev/null && echo rw-root; echo done")))
        .await
        .expect("probe");
    std::fs::remove_file(&sentinel).ok();
    assert_eq!(
        probe.stdout, "done\n",
        "host files, data dir invisible; root read-only"
    );
    let gateway = gateway_of(&address);
    let reach = |host: String, port: u16| {
        format!(
            "import socket,sys\ns=socket.socket();s.settimeout(2)\ntry:\n s.connect(('{host}',{port}));print('open')\nexcept Exception as e:\n print('closed')\n"
        )
    };
    let api_probe = api
        .exec(
            &sbx,
            &exec(&["python3", "-c", &reach(gateway.clone(), api_port)]),
        )
        .await
        .expect("probe api");
    assert_eq!(
        api_probe.stdout.trim(),
        "closed",
        "the host's API port is unreachable from a machine"
    );

    // A second sandbox of the same org reaches the first; one of another org does not.
    let same_org = api
        .create_sandbox("shop-front", &SandboxConfig::default(), 120)
        .await
        .expect("second sandbox");
    let seen = api
        .exec(
            &same_org.id,
            &exec(&["python3", "-c", &reach(address.clone(), 8000)]),
        )
        .await
        .expect("probe");
    assert_eq!(
        seen.stdout.trim(),
        "open",
        "machines of one org reach each other"
    );
    let other = api
        .create_org(&OrgConfig {
            name: "Clinic".into(),
            slug: "clinic".into(),
            base_domain: "clinic.test".into(),
            brand: Brand {
                name: "Clinic".into(),
                ..Default::default()
            },
        })
        .await
        .expect("org");
    let token = api
        .create_token(&other.id, "builder")
        .await
        .expect("token")
        .token;
    let clinic = kiln.client_with(&token);
    clinic
        .create_app(&AppConfig {
            name: "Portal".into(),
            slug: None,
        })
        .await
        .expect("clinic app");
    let foreign = clinic
        .create_sandbox("portal", &SandboxConfig::default(), 120)
        .await
        .expect("clinic sandbox");
    assert_eq!(foreign.status, SandboxStatus::Running);
    let foreign_addr = foreign.address.clone().expect("address");
    let crossed = clinic
        .exec(
            &foreign.id,
            &exec(&["python3", "-c", &reach(address.clone(), 8000)]),
        )
        .await
        .expect("probe");
    assert_eq!(
        crossed.stdout.trim(),
        "closed",
        "another org's machine is unreachable"
    );
    assert_ne!(
        gateway_of(&foreign_addr),
        gateway,
        "orgs live on separate networks"
    );

    // The other org's token sees none of the first org's resources, as if they did not exist.
    assert_eq!(problem(clinic.sandbox(&sbx, 0).await).status, 404);
    assert_eq!(problem(clinic.app("shop-front").await).status, 404);
    assert_eq!(
        problem(clinic.exec(&sbx, &exec(&["true"])).await).status,
        404
    );

    // The memory limit holds, and the exec result says why the command died.
    let small = api
        .create_sandbox(
            "shop-front",
            &SandboxConfig {
                memory_mib: Some(64),
                ..Default::default()
            },
            120,
        )
        .await
        .expect("small sandbox");
    let hog = api
        .exec(
            &small.id,
            &exec(&[
                "python3",
                "-c",
                "b = bytearray(300 * 1024 * 1024); print('survived')",
            ]),
        )
        .await
        .expect("exec answers");
    assert_eq!(hog.exit_code, 137, "{hog:?}");
    assert!(
        hog.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("out_of_memory"),
        "{hog:?}"
    );
    for id in [&small.id, &same_org.id] {
        api.delete_sandbox(id).await.expect("delete");
    }
    clinic
        .delete_sandbox(&foreign.id)
        .await
        .expect("delete clinic sandbox");

    // --- bad input ---------------------------------------------------------------------
    let headers = BTreeMap::from([("content-type".to_owned(), "application/json".to_owned())]);
    let (status, body) = api
        .raw(
            Method::POST,
            "/v1/apps",
            &headers,
            Some(br#"{"name":"x","slgu":"x"}"#.to_vec()),
        )
        .await
        .expect("raw");
    let p: Problem = serde_json::from_slice(&body).expect("problem json");
    assert_eq!(
        (status.as_u16(), p.field.as_deref()),
        (400, Some("slgu")),
        "{p:?}"
    );
    let p = problem(
        api.create_app(&AppConfig {
            name: "Bad".into(),
            slug: Some("Not_A_Label".into()),
        })
        .await,
    );
    assert_eq!((p.status, p.field.as_deref()), (400, Some("slug")));
    assert!(p.detail.contains("DNS label"), "{}", p.detail);
    let p = problem(
        api.create_app(&AppConfig {
            name: "Again".into(),
            slug: Some("shop-front".into()),
        })
        .await,
    );
    assert_eq!(p.status, 409);
    // URL parsers fold literal `..` segments away, so the attacks arrive with encoded slashes.
    for path in [
        "..%2Fescape.txt",
        "a%2F..%2F..%2Fescape.txt",
        "%2Fetc%2Fpasswd",
    ] {
        let p = problem(api.put_file(&sbx, path, "x").await);
        assert_eq!(p.status, 400, "{path}: {p:?}");
    }
    api.exec(&sbx, &exec(&["ln", "-s", "/etc", "etc-link"]))
        .await
        .expect("symlink");
    let p = problem(api.get_file(&sbx, "etc-link/passwd").await);
    assert_eq!((p.status, p.field.as_deref()), (400, Some("path")), "{p:?}");
    let p = problem(api.put_file(&sbx, "etc-link/evil", "x").await);
    assert_eq!(p.status, 400, "{p:?}");
    let big = vec![b'x'; (MAX_FILE + 1) as usize];
    let p = problem(api.put_file(&sbx, "big.bin", big).await);
    assert_eq!(p.status, 413, "{p:?}");
    assert!(p.detail.contains("max_file_bytes"), "{}", p.detail);
    assert_eq!(
        problem(api.get_file(&sbx, "big.bin").await).status,
        404,
        "nothing half-written"
    );
    assert_eq!(
        problem(api.sandbox("sbx_doesnotexist", 0).await).status,
        404
    );
    assert_eq!(
        problem(api.get_file(&sbx, "no/such/file").await).status,
        404
    );
    let failed = kiln.cli(&["sandbox", "exec", "sbx_doesnotexist", "--", "true"]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no sandbox `sbx_doesnotexist`"));

    // Idempotent create: a repeat answers the original; another body with the key is a 409.
    let key = BTreeMap::from([
        ("content-type".to_owned(), "application/json".to_owned()),
        ("idempotency-key".to_owned(), "create-blog".to_owned()),
    ]);
    let first = api
        .raw(
            Method::POST,
            "/v1/apps",
            &key,
            Some(br#"{"name":"Blog"}"#.to_vec()),
        )
        .await
        .expect("raw");
    let again = api
        .raw(
            Method::POST,
            "/v1/apps",
            &key,
            Some(br#"{"name":"Blog"}"#.to_vec()),
        )
        .await
        .expect("raw");
    assert_eq!((first.0.as_u16(), &first.1), (201, &again.1));
    let clash = api
        .raw(
            Method::POST,
            "/v1/apps",
            &key,
            Some(br#"{"name":"Other"}"#.to_vec()),
        )
        .await
        .expect("raw");
    assert_eq!(clash.0.as_u16(), 409);

    // --- kill -9 and restart: same sandbox, same files, its server back -----------------
    kiln.restart().await.expect("restart after kill -9");
    let api = kiln.client();
    let back = api.sandbox(&sbx, 120).await.expect("sandbox survives");
    assert_eq!(
        (back.id.as_str(), back.status),
        (sbx.as_str(), SandboxStatus::Running)
    );
    let bytes = api
        .get_file(&sbx, "data/blob.bin")
        .await
        .expect("file survives");
    assert!(bytes == blob, "workspace bytes survive the restart");
    let body = get_text(&http, &url).await;
    assert_eq!(body, "hello from the workspace\n");

    // A graceful stop and start: machines are stopped, then booted again from stored intent,
    // with the workspace and the supervised process.
    kiln.stop().expect("graceful stop");
    kiln.restart().await.expect("start again");
    let api = kiln.client();
    let back = api.sandbox(&sbx, 120).await.expect("sandbox comes back");
    assert_eq!(back.status, SandboxStatus::Running);
    let address = back.address.expect("address");
    let url = format!("http://{address}:8000/src/hello.txt");
    let body = get_text(&http, &url).await;
    assert_eq!(
        body, "hello from the workspace\n",
        "the dev server is supervised again after a reboot"
    );
    let procs = api.processes(&sbx).await.expect("ps");
    assert_eq!(procs.items.len(), 1);

    // --- delete ------------------------------------------------------------------------
    let deleted = kiln.cli(&["sandbox", "delete", &sbx]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(problem(api.sandbox(&sbx, 0).await).status, 404);
    let nodes = api.nodes().await.expect("nodes");
    assert_eq!(nodes.items[0].machines_running, 0, "no machine left behind");
    assert!(
        !kiln.data_dir().join("machines").join(&sbx).exists(),
        "no workspace left behind"
    );
}

/// GETs `url` until it answers 2xx (a server may still be starting), returning the body.
async fn get_text(http: &reqwest::Client, url: &str) -> String {
    retry(|| async { http.get(url).send().await?.error_for_status()?.text().await }).await
}

/// The node-side gateway of a machine's /24.
fn gateway_of(address: &str) -> String {
    let mut octets: Vec<&str> = address.split('.').collect();
    octets[3] = "1";
    octets.join(".")
}

async fn retry<T, E, F, Fut>(mut f: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last = None;
    for _ in 0..100 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never succeeded: {last:?}");
}
