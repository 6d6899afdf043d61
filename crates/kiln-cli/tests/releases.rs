//! Releases, deployments and rollback end to end through the real `kiln` binary and CLI:
//! sandbox → publish → deploy → edit → publish → deploy → delete the sandbox → rollback;
//! identical publishes share one artifact; a tampered artifact fails verification;
//! promotions and rollbacks under load drop nothing; an interrupted upload resumes.

use std::collections::BTreeMap;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_api::apps::AppConfig;
use kiln_api::releases::ReleaseConfig;
use kiln_api::sandboxes::{ProcessConfig, SandboxConfig};
use kiln_testkit::{Kiln, cli_json, edge_client, problem};

const APP: &str = include_str!("fixtures/app.py");

async fn body(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.expect("edge answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.text().await.expect("body")
}

fn artifact_objects(kiln: &Kiln) -> Vec<std::path::PathBuf> {
    let dir = kiln.data_dir().join("artifacts/objects/sha256");
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_deploy_rollback() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines need root (namespaces, bridges, cgroups)");
        return;
    }
    let config = "[limits]\nhealth_timeout_s = 20\n";
    let mut kiln = Kiln::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[],
        Some(config),
    )
    .await
    .expect("kiln up starts");
    let api = kiln.client();
    let http = edge_client(kiln.edge_addr());
    let app = api
        .create_app(&AppConfig {
            name: "Shop".into(),
            slug: None,
        })
        .await
        .expect("app");
    let production = app.urls.production.clone();
    let sandbox = api
        .create_sandbox("shop", &SandboxConfig::default(), 120)
        .await
        .expect("sandbox");
    let sbx = sandbox.id.clone();
    api.put_file(&sbx, "app.py", APP).await.expect("app.py");
    api.put_file(&sbx, "VERSION", "1").await.expect("VERSION");
    api.put_file(&sbx, ".kilnignore", "*.log\n")
        .await
        .expect(".kilnignore");
    api.put_file(&sbx, "debug.log", "not shipped")
        .await
        .expect("log");
    api.start_process(
        &sbx,
        &ProcessConfig {
            name: "dev".into(),
            cmd: vec!["python3".into(), "app.py".into()],
            cwd: None,
            env: BTreeMap::from([("PORT".to_owned(), "8000".to_owned())]),
            port: Some(8000),
        },
    )
    .await
    .expect("dev server");
    let preview = api.preview("shop", 8000, 30).await.expect("preview").url;

    // --- bad publishes ---------------------------------------------------------------------
    let p = problem(
        api.publish(
            "shop",
            &ReleaseConfig {
                sandbox: Some(sbx.clone()),
                port: Some(8000),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(
        (p.status, p.field.as_deref()),
        (422, Some("start_cmd")),
        "{p:?}"
    );
    let p = problem(
        api.publish(
            "shop",
            &ReleaseConfig {
                sandbox: Some(sbx.clone()),
                start_cmd: Some("python3 app.py".into()),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!((p.status, p.field.as_deref()), (422, Some("port")), "{p:?}");

    // --- app config: variables and secrets, named by releases, resolved at boot -----------------
    cli_json(&kiln.cli(&["--json", "env", "set", "shop", "GREETING=hello"]));
    cli_json(&kiln.cli(&[
        "--json",
        "env",
        "set",
        "shop",
        "API_KEY=sk-live-123",
        "--secret",
    ]));
    let listed = kiln.cli(&["env", "list", "shop"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("GREETING=hello") && listed.contains("API_KEY=<secret>"),
        "{listed}"
    );
    assert!(
        !listed.contains("sk-live-123"),
        "a secret is never printed back"
    );
    for file in ["kiln.db", "kiln.db-wal"] {
        let bytes = std::fs::read(kiln.data_dir().join(file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("sk-live-123"),
            "the secret is sealed at rest ({file})"
        );
    }

    // --- v1, and an identical publish that shares its artifact --------------------------------
    let publish = [
        "--json",
        "publish",
        "shop",
        "--sandbox",
        &sbx,
        "--start",
        "python3 app.py",
        "--port",
        "8000",
    ];
    let v1 = cli_json(&kiln.cli(&publish));
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["manifest"]["start_cmd"], "python3 app.py");
    assert_eq!(v1["provenance"]["source_sandbox"], sbx.as_str());
    let twin = cli_json(&kiln.cli(&publish));
    assert_eq!(twin["version"], "v2");
    assert_eq!(
        twin["digest"], v1["digest"],
        "the same workspace gives the same digest"
    );
    assert_eq!(
        artifact_objects(&kiln).len(),
        1,
        "identical publishes store the bytes once"
    );

    let deployed = cli_json(&kiln.cli(&["--json", "deploy", "shop", "--release", "v1"]));
    assert_eq!(
        (deployed["status"].as_str(), deployed["live"].as_bool()),
        (Some("live"), Some(true)),
        "{deployed}"
    );
    assert_eq!(body(&http, &production).await, "version 1\n");
    assert_eq!(
        deployed["env_diff"]["added"],
        serde_json::json!(["API_KEY", "GREETING"])
    );
    assert_eq!(
        body(&http, &format!("{production}/env/API_KEY")).await,
        "sk-live-123",
        "the machine gets the secret"
    );

    // --- edit the sandbox: the preview changes, production does not -------------------------
    api.put_file(&sbx, "VERSION", "2").await.expect("edit");
    assert_eq!(body(&http, &preview).await, "version 2\n");
    assert_eq!(body(&http, &production).await, "version 1\n");
    let v3 = cli_json(&kiln.cli(&publish));
    assert_eq!(v3["version"], "v3");
    assert_ne!(v3["digest"], v1["digest"]);
    cli_json(&kiln.cli(&["--json", "env", "set", "shop", "GREETING=welcome"]));
    let second = cli_json(&kiln.cli(&["--json", "deploy", "shop", "--release", "v3"]));
    assert_eq!(body(&http, &production).await, "version 2\n");
    assert_eq!(
        second["env_diff"]["changed"],
        serde_json::json!(["GREETING"]),
        "{second}"
    );
    assert_eq!(
        body(&http, &format!("{production}/env/GREETING")).await,
        "welcome"
    );

    // --- production never needs the sandbox -------------------------------------------------
    api.delete_sandbox(&sbx).await.expect("delete sandbox");
    let back = cli_json(&kiln.cli(&["--json", "rollback", "shop", "--to", "v1"]));
    assert_eq!(back["version"], "v1");
    assert_eq!(body(&http, &production).await, "version 1\n");
    let history = api.deployments("shop").await.expect("history");
    assert_eq!(
        history.items.iter().filter(|d| d.live).count(),
        1,
        "exactly one live deployment"
    );
    assert!(
        history.items.windows(2).all(|w| w[0].id > w[1].id) || history.items.len() < 2,
        "newest first"
    );

    // --- bad deploys and rollbacks ------------------------------------------------------------
    let p = problem(api.rollback("shop", Some("v99")).await);
    assert_eq!(p.status, 404, "{p:?}");
    let other = api
        .create_app(&AppConfig {
            name: "Other".into(),
            slug: None,
        })
        .await
        .expect("other app");
    let p = problem(
        api.deploy(&other.slug, v1["id"].as_str().expect("id"))
            .await,
    );
    assert_eq!(p.status, 422, "another app's release: {p:?}");
    let broken = api
        .publish(
            "shop",
            &ReleaseConfig {
                artifact_digest: Some(v1["digest"].as_str().expect("digest").to_owned()),
                // The app listens on 8000 whatever the manifest says, so port 9999 never answers.
                start_cmd: Some("PORT=8000 python3 app.py".into()),
                port: Some(9999),
                ..Default::default()
            },
        )
        .await
        .expect("publish a release whose port never answers");
    let p = problem(api.deploy("shop", &broken.id).await);
    assert_eq!(p.status, 422, "{p:?}");
    assert!(p.detail.contains("health check"), "{}", p.detail);
    assert_eq!(
        body(&http, &production).await,
        "version 1\n",
        "the old release stays live"
    );

    // --- promotions and rollbacks under load drop nothing ---------------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, stop, ok, failed) = (
                http.clone(),
                production.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(t) if t.starts_with("version ") => {
                                ok.fetch_add(1, Ordering::Relaxed)
                            }
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        },
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let mut switch_times = Vec::new();
    for round in 0..5 {
        let started = Instant::now();
        api.deploy("shop", if round % 2 == 0 { "v3" } else { "v1" })
            .await
            .expect("promotion under load");
        let promoted = started.elapsed();
        let started = Instant::now();
        api.rollback("shop", None)
            .await
            .expect("rollback under load");
        switch_times.push((promoted, started.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    eprintln!("promotion / rollback times under load: {switch_times:?}");
    let (served, refused) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(
        served > 100,
        "the load generator ran: {served} answered, {refused} failed"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during 5 promotions and 5 rollbacks"
    );

    // --- an interrupted chunked upload resumes after a crash -----------------------------------
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.py"), APP).expect("write");
    std::fs::write(dir.path().join("VERSION"), "from-dir").expect("write");
    std::fs::write(dir.path().join("padding.bin"), vec![42u8; 20 << 20]).expect("write");
    let mut packed = Vec::new();
    let (digest, size) =
        kiln_artifacts::pack_dir_to(dir.path(), &mut std::io::Cursor::new(&mut packed))
            .expect("pack");
    let upload = api
        .create_upload(size, &digest.to_string())
        .await
        .expect("upload");
    assert!(upload.parts >= 1);
    let part = |n: u32| {
        let start = (u64::from(n - 1) * upload.part_size) as usize;
        packed[start..(start + upload.part_size as usize).min(packed.len())].to_vec()
    };
    api.put_part(&upload.upload_id, 1, part(1))
        .await
        .expect("first part");
    kiln.kill9();
    kiln.restart().await.expect("restart mid-upload");
    let api = kiln.client();
    let status = api
        .upload_status(&upload.upload_id)
        .await
        .expect("the upload survives");
    assert_eq!(status.received, vec![1]);
    for n in 2..=upload.parts {
        api.put_part(&upload.upload_id, n, part(n))
            .await
            .expect("part");
    }
    let done = api
        .complete_upload(&upload.upload_id)
        .await
        .expect("complete");
    assert_eq!(done.digest, digest.to_string());

    // --- production comes back by itself after a crash ----------------------------------------
    assert!(
        body(&http, &production).await.starts_with("version "),
        "production serves after kill -9"
    );

    // --- kill -9 in the middle of a promotion: production serves, nothing is left half-done --
    let deploying = {
        let api = api.clone();
        tokio::spawn(async move { api.deploy("shop", "v3").await })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    kiln.kill9();
    let _ = deploying.await;
    kiln.restart().await.expect("restart mid-promotion");
    let api = kiln.client();
    assert!(
        body(&http, &production).await.starts_with("version "),
        "the live release serves after the crash"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = api.deployments("shop").await.expect("history");
        let unsettled = history
            .items
            .iter()
            .filter(|d| matches!(d.status.as_str(), "pending" | "healthy"))
            .count();
        if unsettled == 0 {
            assert_eq!(
                history.items.iter().filter(|d| d.live).count(),
                1,
                "exactly one live deployment"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an interrupted promotion was never settled: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for release in api.releases("shop").await.expect("releases").items {
        let check = api.verify_release(&release.id).await.expect("verify");
        assert!(
            check.signature_valid && check.artifact_valid,
            "{} points at intact bytes: {check:?}",
            release.version
        );
    }

    // --- a local directory through the CLI, and a tampered artifact ---------------------------
    let from_dir = cli_json(&kiln.cli(&[
        "--json",
        "publish",
        "shop",
        "--dir",
        dir.path().to_str().expect("utf8"),
        "--start",
        "python3 app.py",
        "--port",
        "8000",
    ]));
    assert_eq!(from_dir["digest"], digest.to_string().as_str());
    let rel = from_dir["id"].as_str().expect("id").to_owned();
    let verified = kiln.cli(&["releases", "verify", &rel]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let object = kiln
        .data_dir()
        .join("artifacts/objects/sha256")
        .join(digest.to_string().trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&object).expect("object");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&object, bytes).expect("tamper");
    let tampered = kiln.cli(&["releases", "verify", &rel]);
    assert!(
        !tampered.status.success(),
        "a tampered artifact fails verification"
    );
    assert!(String::from_utf8_lossy(&tampered.stdout).contains("NOT VALID"));
}
