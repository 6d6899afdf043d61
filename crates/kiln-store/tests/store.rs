//! Behaviour tests of the metadata store, written once and run against SQLite (always) and
//! PostgreSQL (when `KILN_TEST_POSTGRES_URL` points at a server; see scripts/test-postgres.sh).

use std::error::Error;
use std::io::Write;
use std::str::FromStr;
use std::sync::Once;

use kiln_store::{
    Backend, Desired, IdempotencyRecord, NewCronJob, NewDatabase, NewOrg, NewSandbox, OrgRecord,
    Store, StoreError,
};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

type TestResult = Result<(), Box<dyn Error>>;

const POSTGRES_ENV: &str = "KILN_TEST_POSTGRES_URL";

/// A database a test owns: a temporary SQLite file, or a fresh PostgreSQL database that is
/// dropped when the test passes.
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres_admin: Option<(String, String)>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            postgres_admin: None,
        }
    }

    /// Creates a uniquely named database through the server at `KILN_TEST_POSTGRES_URL`;
    /// `None` (after saying so once, past the test harness's capture) when it is not set.
    async fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                // Written to the real stderr, not through `eprintln!`, which the harness hides.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** kiln-store: {POSTGRES_ENV} is not set: the PostgreSQL half of the store \
                     tests was SKIPPED (start one with scripts/test-postgres.sh) ***\n"
                );
            });
            return None;
        };
        let name = kiln_store::new_id("kiln_test");
        let admin = PgConnectOptions::from_str(&admin_url).expect("parse KILN_TEST_POSTGRES_URL");
        let mut conn = admin
            .connect()
            .await
            .expect("connect to KILN_TEST_POSTGRES_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let url = admin.database(&name).to_url_lossy().to_string();
        Some(TestDb {
            url,
            _dir: None,
            postgres_admin: Some((admin_url, name)),
        })
    }

    async fn open(&self) -> Store {
        Store::connect(&self.url).await.expect("open the store")
    }

    /// Drops the PostgreSQL database (a failed test leaves it behind for inspection).
    async fn finish(self) {
        if let Some((admin_url, name)) = &self.postgres_admin {
            let admin =
                PgConnectOptions::from_str(admin_url).expect("parse KILN_TEST_POSTGRES_URL");
            let mut conn = admin
                .connect()
                .await
                .expect("connect to KILN_TEST_POSTGRES_URL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
        }
    }
}

/// Runs each named case of [`cases`] against both backends: `sqlite::<case>` and
/// `postgres::<case>`.
macro_rules! store_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() -> super::TestResult {
                    let db = super::TestDb::sqlite();
                    super::cases::$case(&db).await?;
                    db.finish().await;
                    Ok(())
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() -> super::TestResult {
                    let Some(db) = super::TestDb::postgres().await else { return Ok(()) };
                    super::cases::$case(&db).await?;
                    db.finish().await;
                    Ok(())
                }
            )*
        }
    };
}

store_tests!(
    connects_to_the_right_backend,
    orgs,
    tokens,
    apps_and_pagination,
    cross_org_isolation,
    sandboxes,
    purge_removes_processes,
    processes,
    idempotency,
    settings,
    reopen_keeps_data,
    concurrent_writes,
    buckets,
    databases,
    cron_runs_are_pruned,
);

fn new_org(slug: &str) -> NewOrg {
    NewOrg {
        name: format!("Org {slug}"),
        slug: slug.to_owned(),
        base_domain: format!("{slug}.example"),
        brand: r##"{"colour":"#123456"}"##.to_owned(),
    }
}

fn new_sandbox(org_id: &str, app_id: &str) -> NewSandbox {
    NewSandbox {
        org_id: org_id.to_owned(),
        app_id: app_id.to_owned(),
        image: "node:22".to_owned(),
        vcpus: 2,
        memory_mib: 2048,
        env: r#"{"A":"1"}"#.to_owned(),
    }
}

async fn org(store: &Store, slug: &str) -> Result<OrgRecord, StoreError> {
    store.create_org(&new_org(slug)).await
}

mod cases {
    use super::*;

    pub async fn databases(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let other = org(&store, "other").await?;
        let app = store.create_app(&acme.id, "Shop", "shop").await?;
        let new = |name: &str, port: u16| NewDatabase {
            org_id: acme.id.clone(),
            app_id: app.id.clone(),
            name: name.to_owned(),
            engine: "postgres".to_owned(),
            host: "10.88.0.1".to_owned(),
            port,
            login_user: "app1".to_owned(),
            login_password: "sealed-1".to_owned(),
            admin_password: "sealed-admin".to_owned(),
        };
        let main = store.create_database(&new("main", 20000)).await?;
        assert!(main.id.starts_with("db_"));
        assert_eq!(
            (main.status.as_str(), main.generation, main.desired),
            ("provisioning", 1, Desired::Running)
        );
        assert!(
            matches!(
                store.create_database(&new("main", 20001)).await,
                Err(StoreError::Conflict { .. })
            ),
            "name taken"
        );
        assert!(
            matches!(
                store.create_database(&new("other", 20000)).await,
                Err(StoreError::Conflict { .. })
            ),
            "port taken"
        );
        let mut foreign = new("x", 20002);
        foreign.org_id = other.id.clone();
        assert!(
            matches!(
                store.create_database(&foreign).await,
                Err(StoreError::NotFound)
            ),
            "app of another org"
        );
        assert!(matches!(
            store.get_database(Some(&other.id), &main.id).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.database_ports("10.88.0.1").await?, vec![20000]);

        store.set_database_status(&main.id, "healthy", None).await?;
        store
            .rotate_database_login(&main.id, 2, "app2", "sealed-2", "app1")
            .await?;
        assert!(
            matches!(
                store
                    .rotate_database_login(&main.id, 2, "app2b", "sealed-x", "app1")
                    .await,
                Err(StoreError::Conflict { .. })
            ),
            "a stale rotation loses"
        );
        let rotated = store.get_database(Some(&acme.id), &main.id).await?;
        assert_eq!(
            (
                rotated.login_user.as_str(),
                rotated.generation,
                rotated.retired_user.as_deref()
            ),
            ("app2", 2, Some("app1"))
        );
        store.clear_retired_login(&main.id).await?;
        assert_eq!(store.get_database(None, &main.id).await?.retired_user, None);

        // Rotations whose restarts failed keep their replaced logins as stale ones, until a
        // later rotation revokes them.
        store
            .rotate_database_login(&main.id, 3, "app3", "sealed-3", "app2")
            .await?;
        store.keep_retired_login(&main.id).await?;
        store
            .rotate_database_login(&main.id, 4, "app4", "sealed-4", "app3")
            .await?;
        store.keep_retired_login(&main.id).await?;
        let kept = store.get_database(None, &main.id).await?;
        assert_eq!(
            (kept.retired_user, kept.stale_users.clone()),
            (None, vec!["app2".to_owned(), "app3".to_owned()])
        );
        store
            .forget_stale_logins(&main.id, &kept.stale_users)
            .await?;
        assert!(
            store
                .get_database(None, &main.id)
                .await?
                .stale_users
                .is_empty()
        );

        store.delete_database(&main.id).await?;
        let deleting = store.get_database(None, &main.id).await?;
        assert_eq!(
            (deleting.desired, deleting.status.as_str()),
            (Desired::Deleted, "deleting")
        );
        store.set_database_status(&main.id, "healthy", None).await?;
        assert_eq!(
            store.get_database(None, &main.id).await?.status,
            "deleting",
            "a late status does not revive it"
        );
        store.purge_database(&main.id).await?;
        assert!(store.list_databases(&app.id).await?.is_empty());
        Ok(())
    }

    pub async fn connects_to_the_right_backend(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let expected = if db.postgres_admin.is_some() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        assert_eq!(store.backend(), expected);
        store.ping().await?;
        // Migrations are idempotent: a second store on the same database opens cleanly.
        let again = db.open().await;
        again.ping().await?;
        Ok(())
    }

    pub async fn orgs(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        assert!(acme.id.starts_with("org_"), "{}", acme.id);
        assert_eq!(acme.slug, "acme");
        assert_eq!(acme.brand, r##"{"colour":"#123456"}"##);

        assert_eq!(store.get_org(&acme.id).await?, acme);
        assert_eq!(store.get_org("acme").await?, acme);
        assert!(matches!(
            store.get_org("nope").await,
            Err(StoreError::NotFound)
        ));

        match org(&store, "acme").await {
            Err(StoreError::Conflict { what }) => assert!(what.contains("acme"), "{what}"),
            other => panic!("expected a conflict, got {other:?}"),
        }

        let zeta = org(&store, "zeta").await?;
        assert_eq!(store.list_orgs().await?, vec![acme.clone(), zeta.clone()]);

        let renamed = store.update_org(&acme.id, Some("Acme Ltd"), None).await?;
        assert_eq!(renamed.name, "Acme Ltd");
        assert_eq!(renamed.brand, acme.brand);
        let rebranded = store.update_org(&acme.id, None, Some("{}")).await?;
        assert_eq!(rebranded.name, "Acme Ltd");
        assert_eq!(rebranded.brand, "{}");
        assert_eq!(rebranded.created_at, acme.created_at);
        assert_eq!(store.update_org(&acme.id, None, None).await?, rebranded);
        assert_eq!(store.get_org("acme").await?, rebranded);
        assert!(matches!(
            store.update_org("org_missing", Some("x"), None).await,
            Err(StoreError::NotFound)
        ));
        // An update by slug is not an update by id.
        assert!(matches!(
            store.update_org("acme", Some("x"), None).await,
            Err(StoreError::NotFound)
        ));
        Ok(())
    }

    pub async fn tokens(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let token = store.create_token(&acme.id, "ci", "hash-1").await?;
        assert!(token.id.starts_with("tok_"));
        assert_eq!(token.org_id, acme.id);
        assert_eq!(store.find_token("hash-1").await?, Some(token.clone()));
        assert_eq!(store.find_token("hash-2").await?, None);
        assert!(matches!(
            store.create_token(&acme.id, "again", "hash-1").await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.create_token("org_missing", "x", "hash-3").await,
            Err(StoreError::NotFound)
        ));
        let second = store.create_token(&acme.id, "laptop", "hash-4").await?;
        assert_eq!(
            store.list_tokens(&acme.id).await?,
            vec![token.clone(), second.clone()]
        );

        let other = org(&store, "other").await?;
        assert!(matches!(
            store.delete_token(&other.id, &token.id).await,
            Err(StoreError::NotFound)
        ));
        store.delete_token(&acme.id, &token.id).await?;
        assert_eq!(store.find_token("hash-1").await?, None);
        assert_eq!(store.list_tokens(&acme.id).await?, vec![second]);
        Ok(())
    }

    pub async fn apps_and_pagination(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let mut created = Vec::new();
        for i in 0..7 {
            created.push(
                store
                    .create_app(&acme.id, &format!("App {i}"), &format!("app-{i}"))
                    .await?,
            );
        }
        let web = &created[0];
        assert!(web.id.starts_with("app_"));
        assert_eq!(store.get_app(&acme.id, &web.id).await?, *web);
        assert_eq!(store.get_app(&acme.id, "app-0").await?, *web);
        assert!(matches!(
            store.get_app(&acme.id, "missing").await,
            Err(StoreError::NotFound)
        ));
        match store.create_app(&acme.id, "Again", "app-0").await {
            Err(StoreError::Conflict { what }) => assert!(what.contains("app-0"), "{what}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(matches!(
            store.create_app("org_missing", "x", "x").await,
            Err(StoreError::NotFound)
        ));

        // Pages of 3 walk every app exactly once, in creation order.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_apps(&acme.id, after.as_deref(), 3).await?;
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            seen.extend(page);
        }
        assert_eq!(seen, created);
        assert_eq!(store.list_apps(&acme.id, None, 100).await?, created);
        assert!(store.list_apps(&acme.id, None, 0).await?.is_empty());

        store.delete_app(&acme.id, &web.id).await?;
        assert!(matches!(
            store.get_app(&acme.id, &web.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete_app(&acme.id, &web.id).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.list_apps(&acme.id, None, 100).await?,
            created[1..].to_vec()
        );
        // The slug is free again.
        store.create_app(&acme.id, "Web again", "app-0").await?;
        Ok(())
    }

    pub async fn cross_org_isolation(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let other = org(&store, "other").await?;
        let acme_web = store.create_app(&acme.id, "Web", "web").await?;
        // The same slug is fine in another org.
        let other_web = store.create_app(&other.id, "Web", "web").await?;

        assert_eq!(store.get_app(&other.id, "web").await?, other_web);
        assert!(matches!(
            store.get_app(&other.id, &acme_web.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.delete_app(&other.id, &acme_web.id).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.list_apps(&other.id, None, 100).await?,
            vec![other_web.clone()]
        );

        // A sandbox cannot be put in another org's app.
        assert!(matches!(
            store
                .create_sandbox(&new_sandbox(&other.id, &acme_web.id))
                .await,
            Err(StoreError::NotFound)
        ));
        let sandbox = store
            .create_sandbox(&new_sandbox(&acme.id, &acme_web.id))
            .await?;
        assert!(matches!(
            store.get_sandbox(Some(&other.id), &sandbox.id).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.get_sandbox(Some(&acme.id), &sandbox.id).await?,
            sandbox
        );
        assert_eq!(store.get_sandbox(None, &sandbox.id).await?, sandbox);
        assert!(
            store
                .list_sandboxes(&other.id, None, None, 100)
                .await?
                .is_empty()
        );
        assert!(
            store
                .list_sandboxes(&other.id, Some(&acme_web.id), None, 100)
                .await?
                .is_empty()
        );

        store.put_idempotency(&idem(&acme.id, "k1", 201)).await?;
        assert_eq!(store.get_idempotency(&other.id, "k1").await?, None);
        // The same key is independent per org.
        store.put_idempotency(&idem(&other.id, "k1", 202)).await?;
        assert_eq!(
            store
                .get_idempotency(&acme.id, "k1")
                .await?
                .map(|r| r.status),
            Some(201)
        );
        Ok(())
    }

    pub async fn sandboxes(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let web = store.create_app(&acme.id, "Web", "web").await?;
        let api = store.create_app(&acme.id, "Api", "api").await?;

        let first = store
            .create_sandbox(&new_sandbox(&acme.id, &web.id))
            .await?;
        assert!(first.id.starts_with("sbx_"));
        assert_eq!(first.desired, Desired::Running);
        assert_eq!(first.status, "starting");
        assert_eq!((first.vcpus, first.memory_mib), (2, 2048));
        assert_eq!(first.env, r#"{"A":"1"}"#);
        assert_eq!(first.address, None);
        assert_eq!(first.error, None);
        assert_eq!(first.created_at, first.updated_at);
        assert_eq!(store.get_sandbox(None, &first.id).await?, first);
        assert!(matches!(
            store.get_sandbox(None, "sbx_missing").await,
            Err(StoreError::NotFound)
        ));

        let second = store
            .create_sandbox(&new_sandbox(&acme.id, &api.id))
            .await?;
        let third = store
            .create_sandbox(&new_sandbox(&acme.id, &web.id))
            .await?;
        assert!(matches!(
            store
                .create_sandbox(&new_sandbox(&acme.id, "app_missing"))
                .await,
            Err(StoreError::NotFound)
        ));

        let all = store.list_sandboxes(&acme.id, None, None, 100).await?;
        assert_eq!(all, vec![first.clone(), second.clone(), third.clone()]);
        let of_web = store
            .list_sandboxes(&acme.id, Some(&web.id), None, 100)
            .await?;
        assert_eq!(of_web, vec![first.clone(), third.clone()]);
        let page = store
            .list_sandboxes(&acme.id, Some(&web.id), Some(&first.id), 100)
            .await?;
        assert_eq!(page, vec![third.clone()]);
        let page = store
            .list_sandboxes(&acme.id, None, Some(&first.id), 1)
            .await?;
        assert_eq!(page, vec![second.clone()]);

        store
            .set_sandbox_status(&first.id, "running", Some("10.0.0.2:8080"), None)
            .await?;
        let running = store.get_sandbox(None, &first.id).await?;
        assert_eq!(running.status, "running");
        assert_eq!(running.address.as_deref(), Some("10.0.0.2:8080"));
        assert!(running.updated_at >= first.updated_at);
        store
            .set_sandbox_status(&first.id, "failed", None, Some("exited 1"))
            .await?;
        let failed = store.get_sandbox(None, &first.id).await?;
        assert_eq!(
            (failed.address, failed.error.as_deref()),
            (None, Some("exited 1"))
        );

        store
            .set_sandbox_desired(&first.id, Desired::Deleted)
            .await?;
        assert_eq!(
            store.get_sandbox(None, &first.id).await?.desired,
            Desired::Deleted
        );
        // Rows marked deleted are still listed until purged (the reconciler needs them).
        assert_eq!(
            store.list_sandboxes(&acme.id, None, None, 100).await?.len(),
            3
        );
        assert_eq!(store.list_all_sandboxes().await?.len(), 3);

        assert!(matches!(
            store
                .set_sandbox_desired("sbx_missing", Desired::Deleted)
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .set_sandbox_status("sbx_missing", "running", None, None)
                .await,
            Err(StoreError::NotFound)
        ));

        // An app can be deleted while its sandboxes are still being torn down.
        store.delete_app(&acme.id, &web.id).await?;
        assert_eq!(store.get_sandbox(None, &third.id).await?.app_id, web.id);

        let other = org(&store, "other").await?;
        let other_app = store.create_app(&other.id, "Web", "web").await?;
        let foreign = store
            .create_sandbox(&new_sandbox(&other.id, &other_app.id))
            .await?;
        let everything: Vec<String> = store
            .list_all_sandboxes()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            everything,
            vec![
                first.id.clone(),
                second.id.clone(),
                third.id.clone(),
                foreign.id
            ]
        );
        Ok(())
    }

    pub async fn purge_removes_processes(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let web = store.create_app(&acme.id, "Web", "web").await?;
        let doomed = store
            .create_sandbox(&new_sandbox(&acme.id, &web.id))
            .await?;
        let kept = store
            .create_sandbox(&new_sandbox(&acme.id, &web.id))
            .await?;
        store
            .upsert_process(&doomed.id, "dev", r#"{"cmd":"npm run dev"}"#)
            .await?;
        store.upsert_process(&doomed.id, "worker", "{}").await?;
        store.upsert_process(&kept.id, "dev", "{}").await?;

        store.purge_sandbox(&doomed.id).await?;
        assert!(matches!(
            store.get_sandbox(None, &doomed.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(store.list_processes(&doomed.id).await?.is_empty());
        assert_eq!(store.list_processes(&kept.id).await?.len(), 1);
        assert_eq!(store.list_all_sandboxes().await?, vec![kept]);
        // Purging again is harmless.
        store.purge_sandbox(&doomed.id).await?;
        Ok(())
    }

    pub async fn processes(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let web = store.create_app(&acme.id, "Web", "web").await?;
        let sandbox = store
            .create_sandbox(&new_sandbox(&acme.id, &web.id))
            .await?;

        let worker = store
            .upsert_process(&sandbox.id, "worker", r#"{"v":1}"#)
            .await?;
        let dev = store
            .upsert_process(&sandbox.id, "dev", r#"{"v":1}"#)
            .await?;
        assert_eq!(dev.sandbox_id, sandbox.id);
        assert_eq!(dev.spec, r#"{"v":1}"#);
        assert_eq!(
            store.list_processes(&sandbox.id).await?,
            vec![dev.clone(), worker.clone()]
        );

        let updated = store
            .upsert_process(&sandbox.id, "dev", r#"{"v":2}"#)
            .await?;
        assert_eq!(updated.spec, r#"{"v":2}"#);
        assert_eq!(updated.created_at, dev.created_at);
        assert_eq!(
            store.list_processes(&sandbox.id).await?,
            vec![updated, worker.clone()]
        );

        store.delete_process(&sandbox.id, "dev").await?;
        assert_eq!(store.list_processes(&sandbox.id).await?, vec![worker]);
        assert!(matches!(
            store.delete_process(&sandbox.id, "dev").await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.upsert_process("sbx_missing", "dev", "{}").await,
            Err(StoreError::NotFound)
        ));
        Ok(())
    }

    fn idem(org_id: &str, key: &str, status: u16) -> IdempotencyRecord {
        IdempotencyRecord {
            org_id: org_id.to_owned(),
            key: key.to_owned(),
            request_hash: "sha256:abc".to_owned(),
            status,
            body: r#"{"id":"app_1"}"#.to_owned(),
            created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_123)
                .expect("valid time"),
        }
    }

    pub async fn idempotency(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        assert_eq!(store.get_idempotency(&acme.id, "k1").await?, None);
        let record = idem(&acme.id, "k1", 201);
        store.put_idempotency(&record).await?;
        assert_eq!(
            store.get_idempotency(&acme.id, "k1").await?,
            Some(record.clone())
        );

        let mut second = idem(&acme.id, "k1", 500);
        second.body = "other".to_owned();
        assert!(matches!(
            store.put_idempotency(&second).await,
            Err(StoreError::Conflict { .. })
        ));
        // The first answer wins.
        assert_eq!(
            store.get_idempotency(&acme.id, "k1").await?,
            Some(record.clone())
        );
        assert!(matches!(
            store.put_idempotency(&idem("org_missing", "k1", 200)).await,
            Err(StoreError::NotFound)
        ));

        let mut fresh = idem(&acme.id, "k2", 200);
        fresh.created_at = chrono::Utc::now();
        store.put_idempotency(&fresh).await?;
        let cutoff = fresh.created_at - chrono::Duration::hours(1);
        assert_eq!(store.purge_idempotency(cutoff).await?, 1);
        assert_eq!(store.get_idempotency(&acme.id, "k1").await?, None);
        assert!(store.get_idempotency(&acme.id, "k2").await?.is_some());
        Ok(())
    }

    pub async fn settings(db: &TestDb) -> TestResult {
        let store = db.open().await;
        assert_eq!(store.get_setting("base_domain").await?, None);
        store.put_setting("base_domain", "kiln.example").await?;
        assert_eq!(
            store.get_setting("base_domain").await?.as_deref(),
            Some("kiln.example")
        );
        store.put_setting("base_domain", "other.example").await?;
        assert_eq!(
            store.get_setting("base_domain").await?.as_deref(),
            Some("other.example")
        );
        store.put_setting("empty", "").await?;
        assert_eq!(store.get_setting("empty").await?.as_deref(), Some(""));
        Ok(())
    }

    pub async fn reopen_keeps_data(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let web = store.create_app(&acme.id, "Web", "web").await?;
        let sandbox = store
            .create_sandbox(&new_sandbox(&acme.id, &web.id))
            .await?;
        let process = store.upsert_process(&sandbox.id, "dev", "{}").await?;
        store.put_setting("k", "v").await?;
        store.close().await;
        assert!(store.ping().await.is_err(), "a closed store refuses work");

        let reopened = db.open().await;
        assert_eq!(reopened.get_org("acme").await?, acme);
        assert_eq!(reopened.get_app(&acme.id, "web").await?, web);
        assert_eq!(reopened.get_sandbox(None, &sandbox.id).await?, sandbox);
        assert_eq!(reopened.list_processes(&sandbox.id).await?, vec![process]);
        assert_eq!(reopened.get_setting("k").await?.as_deref(), Some("v"));
        // Ids made after the reopen still sort after the old ones.
        let later = reopened.create_app(&acme.id, "Later", "later").await?;
        assert_eq!(
            reopened.list_apps(&acme.id, None, 10).await?,
            vec![web, later]
        );
        Ok(())
    }

    pub async fn concurrent_writes(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let mut tasks = Vec::new();
        for i in 0..32 {
            let store = store.clone();
            let org_id = acme.id.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .create_app(&org_id, "App", &format!("app-{i}"))
                    .await?;
                store.put_setting(&format!("k{}", i % 4), "v").await
            }));
        }
        for task in tasks {
            task.await??;
        }
        assert_eq!(store.list_apps(&acme.id, None, 100).await?.len(), 32);
        // Racing for one slug: exactly one wins, the rest see a conflict.
        let mut racers = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            let org_id = acme.id.clone();
            racers.push(tokio::spawn(async move {
                store.create_app(&org_id, "Same", "same").await
            }));
        }
        let mut won = 0;
        for racer in racers {
            match racer.await? {
                Ok(_) => won += 1,
                Err(StoreError::Conflict { .. }) => {}
                Err(other) => return Err(other.into()),
            }
        }
        assert_eq!(won, 1);
        Ok(())
    }
    pub async fn buckets(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let other = org(&store, "other").await?;
        let web = store.create_app(&acme.id, "Web", "web").await?;
        let theirs = store.create_app(&other.id, "Web", "web").await?;
        let photos = store
            .create_bucket("photos", &acme.id, &web.id, "KILNAAAA", "sealed-1")
            .await?;
        // Listed oldest first: keep the two creations in different milliseconds.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let logs = store
            .create_bucket("logs", &acme.id, &web.id, "KILNBBBB", "sealed-2")
            .await?;
        assert_eq!(store.get_bucket(&acme.id, "photos").await?, photos);
        assert!(
            !format!("{photos:?}").contains("sealed-1"),
            "secrets stay out of logs"
        );
        // Names are global on the node: another org cannot take one, nor see it.
        match store
            .create_bucket("photos", &other.id, &theirs.id, "KILNCCCC", "s")
            .await
        {
            Err(StoreError::Conflict { what }) => assert!(what.contains("photos"), "{what}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(matches!(
            store.get_bucket(&other.id, "photos").await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.list_buckets(&web.id).await?,
            vec![photos.clone(), logs.clone()]
        );
        assert_eq!(
            store.list_all_buckets().await?,
            vec![logs.clone(), photos.clone()]
        );
        store.delete_bucket("photos").await?;
        assert!(matches!(
            store.delete_bucket("photos").await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.list_buckets(&web.id).await?, vec![logs]);
        // Deleting the app takes its bucket records with it.
        store.delete_app(&acme.id, &web.id).await?;
        assert!(store.list_all_buckets().await?.is_empty());
        Ok(())
    }
    /// A job's ended runs beyond the newest ones kept go; a run still going always stays.
    pub async fn cron_runs_are_pruned(db: &TestDb) -> TestResult {
        let store = db.open().await;
        let acme = org(&store, "acme").await?;
        let web = store.create_app(&acme.id, "Web", "web").await?;
        let cmd = vec!["true".to_owned()];
        let job = store
            .create_cron_job(NewCronJob {
                org_id: &acme.id,
                app_id: &web.id,
                name: "often",
                schedule: "* * * * *",
                timezone: "UTC",
                cmd: &cmd,
                allow_overlap: true,
                timeout_s: 60,
            })
            .await?;
        let mut seen = job.last_slot;
        let mut claimed = Vec::new();
        for minutes in 1..=5 {
            let slot = job.last_slot + chrono::Duration::minutes(minutes);
            let run = store.claim_cron_slot(&job.id, seen, slot, None).await?;
            claimed.push(run.ok_or("the slot was claimed")?.id);
            seen = slot;
        }
        // The oldest run is still going; the others ended.
        for run in &claimed[1..] {
            store
                .finish_cron_run(run, "succeeded", Some(0), None, None)
                .await?;
        }
        assert_eq!(store.prune_cron_runs(&job.id, 2).await?, 2);
        let kept: Vec<_> = store
            .list_cron_runs(&job.id, 10)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            kept,
            [claimed[4].clone(), claimed[3].clone(), claimed[0].clone()]
        );
        Ok(())
    }
}
