//! End to end through the real `kiln` binary: buckets over the API and CLI, presigned URLs,
//! boto3 against the S3 endpoint, kill -9 during a large PUT, and a sandbox using the
//! variables it was given (needs root: `kiln up` builds machine networks).
// boto3 runs as a child process exactly as an operator would run it, environment included.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use kiln_api::apps::AppConfig;
use kiln_api::buckets::{BucketConfig, PresignConfig};
use kiln_api::orgs::{Brand, OrgConfig};
use kiln_api::sandboxes::{ExecConfig, SandboxConfig};
use kiln_testkit::{Kiln, cli_json, problem};

fn presign_config(method: &str, key: &str, expires_s: u64) -> PresignConfig {
    PresignConfig {
        method: method.into(),
        key: key.into(),
        expires_s,
    }
}

/// Temporary files of a bucket's objects directory (what a crash mid-write leaves).
fn temp_files(data_dir: &Path, bucket: &str) -> Vec<PathBuf> {
    let dir = data_dir
        .join("objects/buckets")
        .join(bucket)
        .join("objects");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(".tmp-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn boto3_python() -> Option<PathBuf> {
    let venv = std::env::var_os("KILN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-test/venv"));
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buckets_end_to_end() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: kiln up needs root (machine networks)");
        return;
    }
    let mut kiln = Kiln::start(Path::new(env!("CARGO_BIN_EXE_kiln")), &[], None)
        .await
        .expect("kiln up starts");
    let api = kiln.client();
    let http = reqwest::Client::new();

    // --- create through the CLI; names are checked and global -------------------------
    cli_json(&kiln.cli(&["--json", "apps", "create", "Shop"]));
    let created = cli_json(&kiln.cli(&["--json", "bucket", "create", "shop", "photos"]));
    assert_eq!(created["name"], "photos");
    assert_eq!(created["region"], "us-east-1");
    let secret = created["secret_access_key"]
        .as_str()
        .expect("secret shown on create");
    assert_eq!(secret.len(), 40);
    let endpoint = created["endpoint"].as_str().expect("endpoint").to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let shown = api.bucket("photos").await.expect("get bucket");
    assert!(
        shown.secret_access_key.is_none(),
        "the secret is shown once"
    );
    assert!(
        !kiln.log_tail().contains(secret),
        "secrets stay out of the log"
    );

    let dup = problem(
        api.create_bucket(
            "shop",
            &BucketConfig {
                name: "photos".into(),
            },
        )
        .await,
    );
    assert_eq!(dup.status, 409);
    assert_eq!(dup.field.as_deref(), Some("name"));
    let bad = problem(
        api.create_bucket(
            "shop",
            &BucketConfig {
                name: "Bad_Name".into(),
            },
        )
        .await,
    );
    assert_eq!(bad.status, 422);
    assert_eq!(bad.field.as_deref(), Some("name"));
    assert!(bad.detail.contains("lowercase"), "{}", bad.detail);
    api.create_bucket(
        "shop",
        &BucketConfig {
            name: "shop-backups".into(),
        },
    )
    .await
    .expect("second bucket");
    let listed = cli_json(&kiln.cli(&["--json", "bucket", "list", "shop"]));
    let names: Vec<_> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|b| b["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["photos", "shop-backups"]);

    // Another org neither sees nor takes the name.
    let clinic = api
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
        .create_token(&clinic.id, "builder")
        .await
        .expect("token");
    let clinic_api = kiln.client_with(&token.token);
    clinic_api
        .create_app(&AppConfig {
            name: "Portal".into(),
            slug: None,
        })
        .await
        .expect("clinic app");
    assert_eq!(problem(clinic_api.bucket("photos").await).status, 404);
    assert_eq!(
        problem(
            clinic_api
                .presign("photos", &presign_config("GET", "k", 60))
                .await
        )
        .status,
        404
    );
    assert_eq!(
        problem(
            clinic_api
                .create_bucket(
                    "portal",
                    &BucketConfig {
                        name: "photos".into()
                    }
                )
                .await
        )
        .status,
        409
    );

    // --- presigned URLs through the CLI and API ------------------------------------------
    let put = kiln.cli(&[
        "bucket",
        "presign",
        "photos",
        "docs/a.txt",
        "--method",
        "PUT",
        "--expires",
        "300",
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let put_url = String::from_utf8_lossy(&put.stdout).trim().to_owned();
    let answer = http
        .put(&put_url)
        .body("from a presigned PUT")
        .send()
        .await
        .expect("put");
    assert_eq!(answer.status(), 200);
    let get = api
        .presign("photos", &presign_config("GET", "docs/a.txt", 300))
        .await
        .expect("presign");
    assert_eq!(get.method, "GET");
    let answer = http.get(&get.url).send().await.expect("get");
    assert_eq!(answer.text().await.expect("body"), "from a presigned PUT");
    let tampered = http
        .get(get.url.replace("docs/a.txt", "docs/b.txt"))
        .send()
        .await
        .expect("tampered");
    assert_eq!(tampered.status(), 403);
    assert!(
        tampered
            .text()
            .await
            .expect("xml")
            .contains("<Code>SignatureDoesNotMatch</Code>")
    );
    for (method, expires_s, field) in [
        ("GET", 0, "expires_s"),
        ("GET", 604_801, "expires_s"),
        ("DELETE", 60, "method"),
    ] {
        let p = problem(
            api.presign("photos", &presign_config(method, "k", expires_s))
                .await,
        );
        assert_eq!(p.status, 422, "{method} {expires_s}");
        assert_eq!(p.field.as_deref(), Some(field), "{method} {expires_s}");
    }
    let p = problem(api.presign("photos", &presign_config("GET", "k", 0)).await);
    assert!(p.detail.contains("604800"), "{}", p.detail);

    // --- boto3 against the endpoint, with the bucket's own keys --------------------------
    match boto3_python() {
        None => eprintln!("SKIPPED boto3 part: no venv with boto3 (scripts/test.sh makes one)"),
        Some(python) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/s3_boto3.py");
            let out = tokio::process::Command::new(python)
                .arg(script)
                .env_clear()
                .env("S3_ENDPOINT", &endpoint)
                .env("S3_BUCKET", "photos")
                .env("OTHER_BUCKET", "shop-backups")
                .env(
                    "AWS_ACCESS_KEY_ID",
                    created["access_key_id"].as_str().unwrap_or_default(),
                )
                .env("AWS_SECRET_ACCESS_KEY", secret)
                .output()
                .await
                .expect("python runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "boto3 checks failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in [
                "put/get ok",
                "list ok",
                "multipart and ranged ok",
                "presigned ok",
                "cross-bucket refused ok",
                "virtual host ok",
            ] {
                assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
            }
        }
    }

    // --- kill -9 during a large PUT: the old object stays, nothing partial appears -------
    let key = "crash/big.bin";
    let url = |method: &'static str| {
        let api = api.clone();
        async move {
            api.presign("photos", &presign_config(method, key, 3600))
                .await
                .expect("presign")
                .url
        }
    };
    let answer = http
        .put(url("PUT").await)
        .body("version one")
        .send()
        .await
        .expect("v1");
    assert_eq!(answer.status(), 200);
    let put_url = url("PUT").await;
    let get_url = url("GET").await;
    const CHUNK: usize = 1 << 20;
    const TOTAL: usize = 256 * CHUNK;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let body = futures::stream::iter(0..TOTAL / CHUNK).then(move |i| {
        if i == 32
            && let Some(tx) = started_tx.take()
        {
            let _ = tx.send(());
        }
        async move {
            if i >= 32 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, std::io::Error>(vec![0xA5u8; CHUNK])
        }
    });
    let upload = tokio::spawn({
        let http = http.clone();
        async move {
            http.put(put_url)
                .header(reqwest::header::CONTENT_LENGTH, TOTAL)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        }
    });
    started_rx.await.expect("the upload got going");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let partial = temp_files(kiln.data_dir(), "photos");
    assert_eq!(
        partial.len(),
        1,
        "the PUT is being written to one temporary file"
    );
    kiln.kill9();
    assert!(
        upload.await.expect("upload task").is_err(),
        "the PUT never completed"
    );
    let written = std::fs::metadata(&partial[0]).map(|m| m.len()).unwrap_or(0);
    assert!(
        written > 0 && written < TOTAL as u64,
        "killed mid-write ({written} bytes)"
    );
    kiln.restart().await.expect("kiln up restarts");
    assert!(
        temp_files(kiln.data_dir(), "photos").is_empty(),
        "the partial write was swept"
    );
    let answer = http.get(&get_url).send().await.expect("get after restart");
    assert_eq!(
        answer.status(),
        200,
        "URLs signed before the crash still work"
    );
    assert_eq!(answer.text().await.expect("body"), "version one");
    let answer = http
        .put(url("PUT").await)
        .body("version two")
        .send()
        .await
        .expect("v2");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        http.get(&get_url)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body"),
        "version two"
    );

    // --- a sandbox sees its bucket and reaches the endpoint on its gateway ---------------
    let sandbox = api
        .create_sandbox("shop", &SandboxConfig::default(), 120)
        .await
        .expect("sandbox");
    let script = r#"
        set -e
        echo "endpoint=$S3_ENDPOINT bucket=$S3_BUCKET region=$AWS_REGION key=$AWS_ACCESS_KEY_ID other=$S3_BUCKET_SHOP_BACKUPS"
        echo "hello from the sandbox" > /tmp/note.txt
        curl -sS -o /dev/null -w "put=%{http_code}\n" --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
            --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
            -T /tmp/note.txt "$S3_ENDPOINT/$S3_BUCKET/from-sandbox.txt"
        curl -sS "$S3_ENDPOINT/$S3_BUCKET/from-sandbox.txt"
    "#;
    let ran = api
        .exec(
            &sandbox.id,
            &ExecConfig {
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let access_key_id = created["access_key_id"].as_str().unwrap_or_default();
    assert_eq!(ran.exit_code, 0, "{} {}", ran.stdout, ran.stderr);
    // The endpoint is the host's address on the machine's own bridge: its /24's `.1`.
    let address = sandbox
        .address
        .as_deref()
        .expect("a running sandbox has an address");
    let gateway = format!("{}.1", &address[..address.rfind('.').expect("IPv4")]);
    assert!(
        ran.stdout.contains(&format!("endpoint=http://{gateway}:")),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(&format!(
            "bucket=photos region=us-east-1 key={access_key_id} other=shop-backups"
        )),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("put=200"), "{}", ran.stdout);
    // The unsigned GET is answered by S3 itself, with the error XML a client expects.
    assert!(
        ran.stdout.contains("<Code>AccessDenied</Code>"),
        "{}",
        ran.stdout
    );
    let fetched = http
        .get(url_for(&api, "from-sandbox.txt").await)
        .send()
        .await
        .expect("get");
    assert_eq!(
        fetched.text().await.expect("body"),
        "hello from the sandbox\n"
    );

    // --- deleting an app deletes its buckets -------------------------------------------
    api.create_app(&AppConfig {
        name: "Scratch".into(),
        slug: None,
    })
    .await
    .expect("scratch app");
    api.create_bucket(
        "scratch",
        &BucketConfig {
            name: "scratch-files".into(),
        },
    )
    .await
    .expect("scratch bucket");
    assert!(
        kiln.data_dir()
            .join("objects/buckets/scratch-files")
            .exists()
    );
    api.delete_app("scratch").await.expect("delete app");
    assert_eq!(problem(api.bucket("scratch-files").await).status, 404);
    assert!(
        !kiln
            .data_dir()
            .join("objects/buckets/scratch-files")
            .exists()
    );

    // --- delete: objects and keys go --------------------------------------------------
    let deleted = kiln.cli(&["bucket", "delete", "photos"]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(problem(api.bucket("photos").await).status, 404);
    assert!(!kiln.data_dir().join("objects/buckets/photos").exists());
    let answer = http.get(&get_url).send().await.expect("get after delete");
    assert_eq!(answer.status(), 403, "the bucket's keys no longer work");
    api.delete_sandbox(&sandbox.id)
        .await
        .expect("delete sandbox");
    kiln.stop().expect("kiln stops");
}

async fn url_for(api: &kiln_api::Client, key: &str) -> String {
    api.presign("photos", &presign_config("GET", key, 60))
        .await
        .expect("presign")
        .url
}
