//! Managed databases end to end through the real `kiln` binary and CLI: a PostgreSQL database
//! reaches the sandbox at boot, takes a migration and queries from it, serves the preview and
//! then the deployed app; it survives a `kill -9` of the platform, rotation keeps production
//! answering, another org's machines cannot connect, and delete leaves nothing behind. MySQL
//! and Redis reach the sandbox the same way; every server refuses a wrong password.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_api::Client;
use kiln_api::apps::AppConfig;
use kiln_api::databases::{DatabaseConfig, DatabaseStatus};
use kiln_api::orgs::OrgConfig;
use kiln_api::sandboxes::{ExecConfig, ExecResult, ProcessConfig, SandboxConfig};
use kiln_testkit::{Kiln, cli_json, edge_client, problem};

const NOTES: &str = include_str!("fixtures/notes.py");

fn subnet(half: u8) -> String {
    // Two platforms may run side by side: each takes one half of the configured subnet.
    let base = std::env::var("KILN_NETWORK_SUBNET").unwrap_or_else(|_| "10.88.0.0/16".into());
    let prefix = base.split('.').take(2).collect::<Vec<_>>().join(".");
    format!("{prefix}.{}.0/17", u16::from(half) * 128)
}

async fn start(half: u8) -> Kiln {
    let config = "[limits]\nhealth_timeout_s = 30\n";
    Kiln::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln")),
        &[("KILN_NETWORK_SUBNET", &subnet(half))],
        Some(config),
    )
    .await
    .expect("kiln up starts")
}

async fn sh(api: &Client, sbx: &str, script: &str) -> ExecResult {
    api.exec(
        sbx,
        &ExecConfig {
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout_s: Some(60),
            ..Default::default()
        },
    )
    .await
    .expect("exec answers")
}

async fn sh_ok(api: &Client, sbx: &str, script: &str) -> String {
    let out = sh(api, sbx, script).await;
    assert_eq!(out.exit_code, 0, "{script}: {} {}", out.stdout, out.stderr);
    out.stdout
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> u16 {
    http.post(url)
        .body(body.to_owned())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls a database until it reports `want` (the platform rechecks logins every 15 s).
async fn wait_status(
    api: &Client,
    id: &str,
    want: DatabaseStatus,
) -> kiln_api::databases::Database {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let db = api.database(id, 0).await.expect("database");
        if db.status == want {
            return db;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stayed {:?} ({:?}), expected {want:?}",
            db.status,
            db.error
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether `pid` is a live process (a zombie waiting for the host's init to reap it is not).
fn pid_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Whether the firewall's `org_doors` set holds the door of the org bridge whose gateway is
/// `host` to `port` (the set is the host's, shared by every platform running on it).
fn door_open(host: &str, port: u16) -> bool {
    let octets: Vec<&str> = host.split('.').take(3).collect();
    let element = format!("\"kb-{}\" . {host} . tcp . {port}", octets.join("-"));
    org_doors().contains(&element)
}

/// The `org_doors` set of the firewall: the (bridge, gateway, port) doors open to one org.
#[allow(clippy::disallowed_methods)] // The test reads the host's firewall as an operator would.
fn org_doors() -> String {
    std::process::Command::new("nft")
        .args(["list", "set", "inet", "kiln", "org_doors"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_from_sandbox_to_production() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines and database servers need root");
        return;
    }
    let mut kiln = start(0).await;
    let api = kiln.client();
    let http = edge_client(kiln.edge_addr());
    let app = api
        .create_app(&AppConfig {
            name: "Notes".into(),
            slug: None,
        })
        .await
        .expect("app");

    // --- bad input ------------------------------------------------------------------------
    let p = problem(
        api.create_database(
            "notes",
            &DatabaseConfig {
                engine: "mongodb".into(),
                name: "main".into(),
            },
            0,
        )
        .await,
    );
    assert_eq!(
        (p.status, p.field.as_deref()),
        (400, Some("engine")),
        "{p:?}"
    );
    for bad in ["Main", "my-db", "postgres", ""] {
        let p = problem(
            api.create_database(
                "notes",
                &DatabaseConfig {
                    engine: "postgres".into(),
                    name: bad.into(),
                },
                0,
            )
            .await,
        );
        assert_eq!(
            (p.status, p.field.as_deref()),
            (400, Some("name")),
            "{bad}: {p:?}"
        );
    }

    // --- 1. create managed Postgres (CLI) ----------------------------------------------------
    let created = cli_json(&kiln.cli(&[
        "--json", "db", "create", "notes", "--engine", "postgres", "--name", "main",
    ]));
    assert_eq!(created["status"], "healthy", "{created}");
    let db_id = created["id"].as_str().expect("id").to_owned();
    let url = created["url"]
        .as_str()
        .expect("the URL is shown on create")
        .to_owned();
    assert!(url.starts_with("postgres://app1:"), "{url}");
    let p = problem(
        api.create_database(
            "notes",
            &DatabaseConfig {
                engine: "redis".into(),
                name: "main".into(),
            },
            0,
        )
        .await,
    );
    assert_eq!((p.status, p.field.as_deref()), (409, Some("name")), "{p:?}");
    let shown = api.database(&db_id, 0).await.expect("read");
    assert!(
        shown.url.is_none() && !shown.url_masked.contains(&url[20..30]),
        "reads never show the password"
    );
    assert_eq!(shown.env, vec!["DATABASE_URL", "DATABASE_URL_MAIN"]);
    for file in ["kiln.db", "kiln.db-wal"] {
        let bytes = std::fs::read(kiln.data_dir().join(file)).unwrap_or_default();
        let password = url
            .split(':')
            .nth(2)
            .and_then(|s| s.split('@').next())
            .expect("password");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(password),
            "sealed at rest ({file})"
        );
    }

    // --- 2. linked into the sandbox at boot; DATABASE_URL authenticates ------------------------
    let sbx = api
        .create_sandbox("notes", &SandboxConfig::default(), 120)
        .await
        .expect("sandbox")
        .id;
    assert_eq!(sh_ok(&api, &sbx, "printenv DATABASE_URL").await.trim(), url);
    assert_eq!(
        sh_ok(&api, &sbx, "printenv DATABASE_URL_MAIN").await.trim(),
        url
    );
    assert_eq!(
        sh_ok(&api, &sbx, r#"psql "$DATABASE_URL" -XAtc 'SELECT 1'"#)
            .await
            .trim(),
        "1"
    );
    let wrong = sh(&api, &sbx, r#"psql "$(echo "$DATABASE_URL" | sed 's/:[A-Za-z0-9]*@/:wrongpassword@/')" -XAtc 'SELECT 1'"#).await;
    assert_ne!(wrong.exit_code, 0, "a wrong password is refused");
    assert!(
        wrong.stderr.contains("password authentication failed"),
        "{}",
        wrong.stderr
    );

    // --- 3. a migration and a query from the sandbox ------------------------------------------
    sh_ok(&api, &sbx, r#"psql "$DATABASE_URL" -Xq -v ON_ERROR_STOP=1 -c 'CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)' -c "INSERT INTO notes (body) VALUES ('from the sandbox')""#).await;
    assert_eq!(
        sh_ok(
            &api,
            &sbx,
            r#"psql "$DATABASE_URL" -XAtc 'SELECT body FROM notes'"#
        )
        .await
        .trim(),
        "from the sandbox"
    );

    // --- 4. the preview reads and writes through a small web app -------------------------------
    api.put_file(&sbx, "app.py", NOTES).await.expect("app.py");
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
    let preview = api.preview("notes", 8000, 30).await.expect("preview").url;
    assert_eq!(
        post(&http, &format!("{preview}/notes"), "from the preview").await,
        201
    );
    assert_eq!(
        get(&http, &format!("{preview}/notes")).await,
        (200, "from the sandbox\nfrom the preview\n".into())
    );

    // --- 5. publish, 6. the deployed app reads and writes the same database --------------------
    let release = cli_json(&kiln.cli(&[
        "--json",
        "publish",
        "notes",
        "--start",
        "python3 app.py",
        "--port",
        "8000",
    ]));
    let version = release["version"].as_str().expect("version").to_owned();
    let deployed = cli_json(&kiln.cli(&["--json", "deploy", "notes", "--release", &version]));
    assert_eq!(deployed["live"], true, "{deployed}");
    let production = app.urls.production.clone();
    assert_eq!(
        post(&http, &format!("{production}/notes"), "from production").await,
        201
    );
    assert_eq!(
        get(&http, &format!("{production}/notes")).await,
        (
            200,
            "from the sandbox\nfrom the preview\nfrom production\n".into()
        )
    );

    // --- another org's machine cannot connect ----------------------------------------------------
    let (host, port) = (shown.host.clone(), shown.port);
    let other = api
        .create_org(&OrgConfig {
            name: "Other".into(),
            slug: "other".into(),
            base_domain: "other.test".into(),
            brand: Default::default(),
        })
        .await
        .expect("org");
    let token = api.create_token(&other.id, "t").await.expect("token").token;
    let foreign = kiln.client_with(&token);
    foreign
        .create_app(&AppConfig {
            name: "Intruder".into(),
            slug: None,
        })
        .await
        .expect("other app");
    // The other org's own database takes the same port number on its own gateway, so its
    // door must not open this one.
    let foreign_db = foreign
        .create_database(
            "intruder",
            &DatabaseConfig {
                engine: "redis".into(),
                name: "cache".into(),
            },
            60,
        )
        .await
        .expect("other org's database");
    assert_eq!(
        foreign_db.status,
        DatabaseStatus::Healthy,
        "{:?}",
        foreign_db.error
    );
    assert_eq!(
        foreign_db.port, port,
        "the same port number on another gateway"
    );
    let foreign_sbx = foreign
        .create_sandbox("intruder", &SandboxConfig::default(), 120)
        .await
        .expect("other sandbox")
        .id;
    let probe = format!(
        "python3 -c \"import socket; socket.create_connection(('{host}', {port}), timeout=3); print('connected')\""
    );
    let out = sh(&foreign, &foreign_sbx, &probe).await;
    assert_ne!(
        out.exit_code, 0,
        "another org's machine reached the database: {}",
        out.stdout
    );
    assert_eq!(
        sh(&api, &sbx, &probe).await.stdout.trim(),
        "connected",
        "the org's own machine connects"
    );
    // The server's administrator cannot log in from a machine, whatever the password.
    let admin = sh(
        &api,
        &sbx,
        &format!("psql 'postgres://kiln_admin:guess@{host}:{port}/postgres' -XAtc 'SELECT 1'"),
    )
    .await;
    assert!(
        admin.exit_code != 0 && admin.stderr.contains("rejects connection"),
        "{} {}",
        admin.stdout,
        admin.stderr
    );
    assert!(
        sh(&foreign, &foreign_sbx, "printenv DATABASE_URL")
            .await
            .stdout
            .is_empty()
    );

    // --- after kill -9 of the platform the database comes back with its data ---------------------
    let data_dir = kiln.data_dir().join("databases").join(&db_id).join("data");
    kiln.kill9();
    kiln.restart().await.expect("restart");
    let api = kiln.client();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, text) = get(&http, &format!("{production}/notes")).await;
        if status == 200 && text.contains("from production") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "production did not come back: {status} {text}\n{}",
            kiln.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // --- rotation keeps the deployed app answering throughout ------------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let hammer = {
        let (http, url, stop, ok, failed) = (
            http.clone(),
            format!("{production}/notes"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (status, text) = get(&http, &url).await;
                if status == 200 && text.contains("from production") {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    failures.push(format!("{status} {text}"));
                }
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotate = ["--json", "db", "rotate", db_id.as_str()];
    let mut out = kiln.cli(&rotate);
    for _ in 0..20 {
        // Right after the restart the node may still be taking its servers back (a 503).
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("retry") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        out = kiln.cli(&rotate);
    }
    let rotated = cli_json(&out);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let failures = hammer.await.expect("client loop");
    assert!(
        failures.is_empty(),
        "requests failed during rotation: {failures:?}"
    );
    assert!(ok.load(Ordering::SeqCst) > 5, "the loop made requests");
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    let new_url = rotated["database"]["url"]
        .as_str()
        .expect("new URL")
        .to_owned();
    assert!(new_url.starts_with("postgres://app2:"), "{rotated}");
    assert_eq!(rotated["revoked_user"], "app1");
    assert_eq!(
        post(&http, &format!("{production}/notes"), "after rotation").await,
        201
    );
    // The sandbox was restarted with the new URL; the old one no longer logs in.
    let sandbox = api.sandbox(&sbx, 120).await.expect("sandbox back");
    assert_eq!(sandbox.status, kiln_api::sandboxes::SandboxStatus::Running);
    assert_eq!(
        sh_ok(&api, &sbx, "printenv DATABASE_URL").await.trim(),
        new_url
    );
    let old = sh(&api, &sbx, &format!("psql '{url}' -XAtc 'SELECT 1'")).await;
    assert_ne!(old.exit_code, 0, "the old credential is revoked");
    assert!(
        sh_ok(
            &api,
            &sbx,
            r#"psql "$DATABASE_URL" -XAtc 'SELECT count(*) FROM notes'"#
        )
        .await
        .trim()
            == "4"
    );

    // --- 7. cleanup: no process, data dir, credential or firewall door left ----------------------
    let pid = std::fs::read_to_string(
        kiln.data_dir()
            .join("databases")
            .join(&db_id)
            .join("server.pid"),
    )
    .expect("pid file");
    assert!(pid_alive(&pid));
    assert!(door_open(&host, port), "{}", org_doors());
    let deleted = cli_json(&kiln.cli(&["--json", "db", "delete", &db_id]));
    assert_eq!(deleted["status"], "deleted", "{deleted}");
    assert_eq!(deleted["detached_apps"][0]["slug"], "notes", "{deleted}");
    let machines = deleted["detached_apps"][0]["machines"].to_string();
    assert!(
        machines.contains("sandbox") && machines.contains("deployment"),
        "{deleted}"
    );
    assert!(!pid_alive(&pid), "the server process is gone");
    assert!(!data_dir.exists(), "the data dir is gone");
    assert!(!door_open(&host, port), "the firewall door is closed");
    assert_eq!(problem(api.database(&db_id, 0).await).status, 404);
    let gone = sh(&api, &sbx, &format!("psql '{new_url}' -XAtc 'SELECT 1'")).await;
    assert_ne!(gone.exit_code, 0, "no credential works any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_and_redis_reach_the_sandbox() {
    if !kiln_testkit::is_root() {
        eprintln!("SKIPPED: machines and database servers need root");
        return;
    }
    let mut kiln = start(1).await;
    let api = kiln.client();
    api.create_app(&AppConfig {
        name: "Shop".into(),
        slug: None,
    })
    .await
    .expect("app");
    let mut ids = Vec::new();
    for (engine, name) in [("mysql", "main"), ("redis", "sessions")] {
        let db = api
            .create_database(
                "shop",
                &DatabaseConfig {
                    engine: engine.into(),
                    name: name.into(),
                },
                60,
            )
            .await
            .expect("create");
        assert_eq!(
            db.status,
            DatabaseStatus::Healthy,
            "{engine}: {:?}",
            db.error
        );
        ids.push((engine, db.id.clone(), db.url.clone().expect("url")));
    }
    // A second Redis gets its own variable; the first keeps REDIS_URL.
    let cache = api
        .create_database(
            "shop",
            &DatabaseConfig {
                engine: "redis".into(),
                name: "cache".into(),
            },
            60,
        )
        .await
        .expect("second redis");
    assert_eq!(cache.env, vec!["REDIS_URL_CACHE"]);
    let sbx = api
        .create_sandbox("shop", &SandboxConfig::default(), 120)
        .await
        .expect("sandbox")
        .id;
    let mysql_url = &ids[0].2;
    let redis_url = &ids[1].2;
    assert_eq!(
        sh_ok(&api, &sbx, "printenv MYSQL_URL").await.trim(),
        mysql_url
    );
    assert_eq!(
        sh_ok(&api, &sbx, "printenv REDIS_URL").await.trim(),
        redis_url
    );
    assert_eq!(
        sh_ok(&api, &sbx, "printenv REDIS_URL_CACHE").await.trim(),
        cache.url.clone().expect("url")
    );
    let mysql = |url: &str, sql: &str| {
        format!(
            "python3 -c \"import os,urllib.parse as u; p=u.urlparse('{url}'); \
             os.execvp('mariadb',['mariadb','-h',p.hostname,'-P',str(p.port),'-u',p.username,'-p'+p.password,p.path[1:],'-N','-e','{sql}'])\""
        )
    };
    sh_ok(
        &api,
        &sbx,
        &mysql(
            mysql_url,
            "CREATE TABLE t (v INT); INSERT INTO t VALUES (42)",
        ),
    )
    .await;
    assert_eq!(
        sh_ok(&api, &sbx, &mysql(mysql_url, "SELECT v FROM t"))
            .await
            .trim(),
        "42"
    );
    let wrong_mysql = {
        let (head, tail) = mysql_url.split_at(mysql_url.find('@').expect("@"));
        let user_end = head.rfind(':').expect(":");
        format!("{}:wrongpassword{tail}", &head[..user_end])
    };
    let refused = sh(&api, &sbx, &mysql(&wrong_mysql, "SELECT 1")).await;
    assert_ne!(refused.exit_code, 0);
    assert!(
        refused.stderr.contains("Access denied"),
        "{}",
        refused.stderr
    );
    assert_eq!(sh_ok(&api, &sbx, r#"redis-cli --no-auth-warning -u "$REDIS_URL" SET k v >/dev/null && redis-cli --no-auth-warning -u "$REDIS_URL" GET k"#).await.trim(), "v");
    let refused = sh(&api, &sbx, r#"redis-cli --no-auth-warning -u "$(echo "$REDIS_URL" | sed 's/:[A-Za-z0-9]*@/:wrongpassword@/')" PING"#).await;
    assert!(
        !refused.stdout.contains("PONG"),
        "{} {}",
        refused.stdout,
        refused.stderr
    );
    assert!(
        format!("{}{}", refused.stdout, refused.stderr).contains("WRONGPASS"),
        "{} {}",
        refused.stdout,
        refused.stderr
    );
    // Redis app users may not administer the server.
    let admin = sh(
        &api,
        &sbx,
        r#"redis-cli --no-auth-warning -u "$REDIS_URL" CONFIG GET dir"#,
    )
    .await;
    assert!(
        format!("{}{}", admin.stdout, admin.stderr).contains("NOPERM"),
        "{}",
        admin.stdout
    );

    // --- a server that stops answering is reported unhealthy, and healthy once it answers ---
    let cache_pid = std::fs::read_to_string(
        kiln.data_dir()
            .join("databases")
            .join(&cache.id)
            .join("server.pid"),
    )
    .expect("pid file");
    let cache_pid = nix::unistd::Pid::from_raw(cache_pid.trim().parse().expect("pid"));
    nix::sys::signal::kill(cache_pid, nix::sys::signal::Signal::SIGSTOP).expect("freeze redis");
    let frozen = wait_status(&api, &cache.id, DatabaseStatus::Unhealthy).await;
    nix::sys::signal::kill(cache_pid, nix::sys::signal::Signal::SIGCONT).expect("thaw redis");
    assert!(frozen.error.is_some_and(|e| !e.is_empty()), "says why");
    assert!(
        sh_ok(&api, &sbx, "printenv REDIS_URL_CACHE").await.trim()
            == cache.url.clone().expect("url"),
        "machines keep the URL"
    );
    let thawed = wait_status(&api, &cache.id, DatabaseStatus::Healthy).await;
    assert!(thawed.error.is_none(), "{:?}", thawed.error);

    // --- a server that cannot start after a platform restart is unhealthy, not failed: it
    // keeps its variable (no other Redis takes it) and comes back once it can start ----------
    kiln.kill9();
    nix::sys::signal::kill(cache_pid, nix::sys::signal::Signal::SIGKILL).expect("kill redis");
    let (pid, deadline) = (
        cache_pid.to_string(),
        Instant::now() + Duration::from_secs(10),
    );
    while pid_alive(&pid) {
        assert!(Instant::now() < deadline, "redis {pid} outlived SIGKILL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = cache.url.clone().expect("url");
    let address = url
        .rsplit_once('@')
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .expect("host and port in the URL");
    // A background save forked by the server may hold its listener a moment longer.
    let squatter = loop {
        match std::net::TcpListener::bind(address) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("take the server's port {address}: {e}"),
        }
    };
    kiln.restart().await.expect("restart");
    let api = kiln.client();
    let down = wait_status(&api, &cache.id, DatabaseStatus::Unhealthy).await;
    assert!(down.error.is_some_and(|e| !e.is_empty()), "says why");
    assert_eq!(down.env, vec!["REDIS_URL_CACHE"], "keeps its variable");
    drop(squatter);
    let back = wait_status(&api, &cache.id, DatabaseStatus::Healthy).await;
    assert!(back.error.is_none(), "{:?}", back.error);

    for (engine, id, _) in &ids {
        let deleted = api.delete_database(id).await.expect("delete");
        assert_eq!(deleted.status, DatabaseStatus::Deleted, "{engine}");
        assert_eq!(
            deleted.detached_apps.len(),
            1,
            "{engine}: the sandbox used it"
        );
        assert!(
            !kiln.data_dir().join("databases").join(id).exists(),
            "{engine} data gone"
        );
    }
    api.delete_database(&cache.id).await.expect("delete cache");
}
