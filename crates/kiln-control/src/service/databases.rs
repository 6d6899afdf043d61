//! Managed databases: create (stored intent; the reconciler provisions), read, delete (the
//! answer names the apps that lose it), rotate (new login verified, machines restarted with
//! it, old login revoked), and the variables machines get.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use kiln_api::List;
use kiln_api::databases::{
    Database, DatabaseConfig, DatabaseDeleted, DatabaseStatus, DetachedApp, Rotated,
};
use kiln_databases::{Engine, Instance, Login};
use kiln_store::{DatabaseRecord, Desired, NewDatabase};

use super::{Service, not_found_as};
use crate::error::{ApiError, ApiResult};

/// Ports handed to database instances, per org address; lowest free first.
const PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;
/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// How long a delete waits for the server and data to be gone before answering `deleting`.
const DELETE_WAIT: Duration = Duration::from_secs(30);
/// Names that the engines keep for themselves.
const RESERVED: [&str; 7] = [
    "postgres",
    "template0",
    "template1",
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
];

impl Service {
    /// `POST /v1/apps/{app}/databases`: validates, picks the org's address and a port, stores
    /// the intent with sealed passwords, and answers with the full URL (shown only here and on
    /// rotation). The reconciler provisions it.
    pub async fn create_database(
        &self,
        org_id: &str,
        app: &str,
        config: DatabaseConfig,
        wait: Option<u64>,
    ) -> ApiResult<Database> {
        let app = self.app_record(org_id, app).await?;
        let engine = Engine::parse(&config.engine).ok_or_else(|| {
            ApiError::invalid_field(
                "engine",
                format!(
                    "unknown engine `{}`: use `postgres`, `mysql` or `redis`",
                    config.engine
                ),
            )
        })?;
        validate_name(&config.name)?;
        if self
            .store()
            .list_databases(&app.id)
            .await?
            .iter()
            .any(|d| d.name == config.name)
        {
            return Err(ApiError::conflict(format!(
                "app `{}` already has a database named `{}`: pick another name or delete that one first",
                app.slug, config.name
            ))
            .with_field("name"));
        }
        let network = self.driver().org_network(org_id).await.map_err(|e| {
            ApiError::unavailable(format!("the org's network is not available: {e}"))
        })?;
        let host = network.gateway.to_string();
        let port = self.free_port(&host, network.gateway).await?;
        let admin_password = kiln_databases::new_password();
        let login = Login {
            user: kiln_databases::login_user(1),
            password: kiln_databases::new_password(),
        };
        let record = self
            .store()
            .create_database(&NewDatabase {
                org_id: org_id.to_owned(),
                app_id: app.id.clone(),
                name: config.name.clone(),
                engine: engine.as_str().to_owned(),
                host,
                port,
                login_user: login.user.clone(),
                login_password: self.sealer().seal(&login.password),
                admin_password: self.sealer().seal(&admin_password),
            })
            .await
            .map_err(|e| match e {
                kiln_store::StoreError::Conflict { .. } => ApiError::conflict(format!(
                    "app `{}` already has a database named `{}`, or its port was just taken: retry",
                    app.slug, config.name
                ))
                .with_field("name"),
                other => other.into(),
            })?;
        self.wake_reconciler();
        let mut view = self.wait_for_database(org_id, &record.id, wait).await?;
        if view.status == DatabaseStatus::Failed {
            // The pass left no process, data or door; the row goes too, so the name is free
            // and nothing half-made is left to clean up.
            self.store().delete_database(&record.id).await?;
            self.wake_reconciler();
            return Err(ApiError::unavailable(format!(
                "database `{}` could not be provisioned, and nothing of it was kept: {}",
                config.name,
                view.error.unwrap_or_default()
            )));
        }
        view.url = Some(instance(&record)?.url(&login));
        Ok(view)
    }

    /// `GET /v1/databases/{db}`, optionally waiting for a final status.
    pub async fn get_database(
        &self,
        org_id: &str,
        id: &str,
        wait: Option<u64>,
    ) -> ApiResult<Database> {
        self.wait_for_database(org_id, id, wait).await
    }

    /// `GET /v1/apps/{app}/databases`.
    pub async fn list_databases(&self, org_id: &str, app: &str) -> ApiResult<List<Database>> {
        let app = self.app_record(org_id, app).await?;
        let records = self.store().list_databases(&app.id).await?;
        let env = env_names(&records);
        let items = records
            .iter()
            .map(|r| database_view(r, env.get(&r.id).cloned().unwrap_or_default()))
            .collect::<ApiResult<_>>()?;
        Ok(List { items, next: None })
    }

    /// `DELETE /v1/databases/{db}`: allowed while in use; the answer names the apps whose
    /// machines had its URL and the variables they lose.
    pub async fn delete_database(&self, org_id: &str, id: &str) -> ApiResult<DatabaseDeleted> {
        let record = self.database_record(org_id, id).await?;
        let env = env_names(&self.store().list_databases(&record.app_id).await?)
            .remove(&record.id)
            .unwrap_or_default();
        let mut machines = Vec::new();
        let sandboxes = self
            .store()
            .list_sandboxes(org_id, Some(&record.app_id), None, kiln_store::MAX_PAGE)
            .await?;
        if sandboxes.iter().any(|s| s.desired == Desired::Running) {
            machines.push("sandbox".to_owned());
        }
        if self
            .store()
            .live_deployment(&record.app_id)
            .await?
            .is_some()
        {
            machines.push("deployment".to_owned());
        }
        let mut detached_apps = Vec::new();
        if !machines.is_empty() && is_provisioned(&record) {
            let app = self.store().get_app(org_id, &record.app_id).await?;
            detached_apps.push(DetachedApp {
                id: app.id,
                slug: app.slug,
                env,
                machines,
            });
        }
        self.store().delete_database(&record.id).await?;
        self.wake_reconciler();
        let mut changes = self.subscribe_changes();
        let deadline = tokio::time::Instant::now() + DELETE_WAIT;
        let status = loop {
            match self.store().get_database(Some(org_id), &record.id).await {
                Err(kiln_store::StoreError::NotFound) => break DatabaseStatus::Deleted,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                break DatabaseStatus::Deleting;
            }
        };
        Ok(DatabaseDeleted {
            id: record.id,
            status,
            detached_apps,
        })
    }

    /// `POST /v1/databases/{db}/credentials/rotate`: a new login is created and proven, the
    /// app's live deployment is restarted with it (a new machine, then an atomic route
    /// switch) and its running sandboxes are restarted, then the old login is revoked.
    pub async fn rotate_database(&self, org_id: &str, id: &str) -> ApiResult<Rotated> {
        let id = self.database_record(org_id, id).await?.id;
        // The reconciler must not check (or restart) the database while its login changes.
        let deadline = tokio::time::Instant::now() + ROTATE_CLAIM_WAIT;
        while !self.claim_database_task(&id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!(
                    "database `{id}` is busy with a health check or a restart; retry in a moment"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rotated = self.rotate_claimed(org_id, &id).await;
        self.release_database_task(&id);
        rotated
    }

    async fn rotate_claimed(&self, org_id: &str, id: &str) -> ApiResult<Rotated> {
        let record = self.database_record(org_id, id).await?;
        if record.status != "healthy" {
            return Err(ApiError::conflict(format!(
                "database `{}` is {}; credentials rotate only when it is healthy",
                record.id, record.status
            )));
        }
        if !self.engines().is_running(&record.id) {
            self.wake_reconciler();
            return Err(ApiError::unavailable(format!(
                "database `{}` is being started on this node; retry in a moment",
                record.id
            )));
        }
        let inst = instance(&record)?;
        let admin = self.open_secret(&record.admin_password)?;
        let generation = record.generation + 1;
        let login = Login {
            user: kiln_databases::login_user(generation),
            password: kiln_databases::new_password(),
        };
        if let Err(e) = self.engines().add_login(&inst, &admin, &login).await {
            // A login created but not proven would make the next rotation's create collide.
            let _ = self
                .engines()
                .remove_login(&inst, &admin, &login.user)
                .await;
            return Err(ApiError::unavailable(format!(
                "creating the new credential: {e}"
            )));
        }
        self.store()
            .rotate_database_login(
                &record.id,
                generation,
                &login.user,
                &self.sealer().seal(&login.password),
                &record.login_user,
            )
            .await
            .map_err(|e| match e {
                kiln_store::StoreError::Conflict { .. } => {
                    ApiError::conflict("another rotation of this database finished first; retry")
                }
                other => other.into(),
            })?;
        let restarted = match self.restart_live_deployment(&record).await {
            Ok(deployments) => self
                .restart_sandboxes(&record)
                .await
                .map(|sandboxes| (deployments, sandboxes)),
            Err(e) => Err(e),
        };
        let (restarted_deployments, restarted_sandboxes) = match restarted {
            Ok(restarted) => restarted,
            Err(e) => {
                // Machines may still hold the old login: it must not be revoked now. It stays
                // valid as a stale login, which the next rotation that restarts every machine
                // revokes.
                self.store().keep_retired_login(&record.id).await?;
                return Err(e);
            }
        };
        let revoke = |e: kiln_databases::DbError| {
            ApiError::unavailable(format!("revoking the old credential: {e}"))
        };
        self.engines()
            .remove_login(&inst, &admin, &record.login_user)
            .await
            .map_err(revoke)?;
        self.store().clear_retired_login(&record.id).await?;
        // Every machine now has the new login, so logins left by earlier rotations go too.
        for stale in &record.stale_users {
            self.engines()
                .remove_login(&inst, &admin, stale)
                .await
                .map_err(revoke)?;
        }
        self.store()
            .forget_stale_logins(&record.id, &record.stale_users)
            .await?;
        let mut database = self.get_database(org_id, &record.id, None).await?;
        database.url = Some(inst.url(&login));
        Ok(Rotated {
            database,
            revoked_user: record.login_user,
            restarted_deployments,
            restarted_sandboxes,
        })
    }

    /// The URLs of the app's healthy databases, for its machines at boot: `DATABASE_URL`,
    /// `MYSQL_URL`, `REDIS_URL` (the oldest database of each engine) and
    /// `{VAR}_{NAME}` for every database.
    pub(crate) async fn database_env(
        &self,
        app_id: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let records = self
            .store()
            .list_databases(app_id)
            .await
            .map_err(|e| format!("reading the app's databases: {e}"))?;
        let names = env_names(&records);
        let mut env = BTreeMap::new();
        for record in &records {
            let Some(vars) = names.get(&record.id) else {
                continue;
            };
            let password = self
                .sealer()
                .open(&record.login_password)
                .map_err(|e| format!("database {}: {e}", record.id))?;
            let url = instance(record)
                .map_err(|e| format!("database {}: {}", record.id, e.problem().detail))?
                .url(&Login {
                    user: record.login_user.clone(),
                    password,
                });
            for var in vars {
                env.insert(var.clone(), url.clone());
            }
        }
        Ok(env)
    }

    /// Boots a new machine for the app's live deployment (which reads the new URL at boot),
    /// switches the route to it, and stops the machine that had the old URL once in-flight
    /// requests had time to finish.
    async fn restart_live_deployment(&self, record: &DatabaseRecord) -> ApiResult<Vec<String>> {
        let Some(live) = self.store().live_deployment(&record.app_id).await? else {
            return Ok(Vec::new());
        };
        let release = self
            .store()
            .get_release(&record.org_id, None, &live.release_id)
            .await?;
        let next = self
            .store()
            .create_deployment(
                &record.org_id,
                &record.app_id,
                &release.id,
                "credential rotation",
            )
            .await?;
        self.promote(next.clone(), &release).await.map_err(|e| {
            let detail = e.problem().detail;
            ApiError::unprocessable(format!(
                "the new credential works, but the app's deployment could not be restarted with it ({detail}); \
                 the old credential stays valid until a rotation succeeds"
            ))
        })?;
        // The route already points at the new machine; give requests on the old one a moment.
        tokio::time::sleep(DRAIN).await;
        self.machines().remove(&live.id);
        if let Err(e) = self.driver().destroy(&live.id).await {
            tracing::warn!(deployment = %live.id, error = %e, "stopping the replaced machine failed; the reconciler retries");
        }
        self.store()
            .set_deployment_status(&live.id, "stopped", None, None, None)
            .await?;
        self.notify_change();
        Ok(vec![next.id])
    }

    /// Restarts the app's running sandboxes so they boot with the new URL (their workspaces
    /// and supervised processes come back).
    async fn restart_sandboxes(&self, record: &DatabaseRecord) -> ApiResult<Vec<String>> {
        let mut restarted = Vec::new();
        for sandbox in self
            .store()
            .list_sandboxes(
                &record.org_id,
                Some(&record.app_id),
                None,
                kiln_store::MAX_PAGE,
            )
            .await?
        {
            if sandbox.desired != Desired::Running || sandbox.status != "running" {
                continue;
            }
            self.machines().remove(&sandbox.id);
            if let Err(e) = self.driver().stop(&sandbox.id).await {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "stopping a sandbox for a rotation failed");
            }
            self.store()
                .set_sandbox_status(&sandbox.id, "starting", None, None)
                .await?;
            restarted.push(sandbox.id);
        }
        if !restarted.is_empty() {
            self.wake_reconciler();
            self.notify_change();
        }
        Ok(restarted)
    }

    async fn free_port(&self, host: &str, addr: Ipv4Addr) -> ApiResult<u16> {
        let used = self.store().database_ports(host).await?;
        PORTS
            .clone()
            .filter(|p| !used.contains(p))
            .find(|p| std::net::TcpListener::bind((addr, *p)).is_ok())
            .ok_or_else(|| {
                ApiError::unavailable(format!(
                    "no free database port left on {host} ({}–{}): delete unused databases",
                    PORTS.start(),
                    PORTS.end()
                ))
            })
    }

    pub(crate) async fn database_record(
        &self,
        org_id: &str,
        id: &str,
    ) -> ApiResult<DatabaseRecord> {
        self.store()
            .get_database(Some(org_id), id)
            .await
            .map_err(not_found_as("database", id))
    }

    pub(crate) fn open_secret(&self, sealed: &str) -> ApiResult<String> {
        self.sealer()
            .open(sealed)
            .map_err(|e| ApiError::internal("opening a database secret", &e))
    }

    async fn wait_for_database(
        &self,
        org_id: &str,
        id: &str,
        wait: Option<u64>,
    ) -> ApiResult<Database> {
        let mut changes = self.subscribe_changes();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0)).min(MAX_WAIT);
        loop {
            let record = self.database_record(org_id, id).await?;
            let settled = record.status != "provisioning" && record.status != "deleting";
            if settled
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                let env = env_names(&self.store().list_databases(&record.app_id).await?)
                    .remove(&record.id)
                    .unwrap_or_default();
                return database_view(&record, env);
            }
        }
    }
}

/// How long the machine a rotation replaced keeps serving requests already in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// How long a rotation waits for the reconciler to finish its work on the database (a login
/// check gives up after 5 s).
const ROTATE_CLAIM_WAIT: Duration = Duration::from_secs(10);

/// Checks a database name: a lowercase letter, then lowercase letters, digits or `_`, at most
/// 32 characters, not a name the engines keep.
fn validate_name(name: &str) -> ApiResult<()> {
    let ok = name.len() <= 32
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(ApiError::invalid_field(
            "name",
            format!(
                "`{name}` is not a valid database name: use a lowercase letter, then lowercase letters, digits or `_`, at most 32 in all"
            ),
        ));
    }
    if RESERVED.contains(&name) {
        return Err(ApiError::invalid_field(
            "name",
            format!("`{name}` is reserved by the database engines: pick another name"),
        ));
    }
    Ok(())
}

/// The engine instance a record describes.
pub(crate) fn instance(record: &DatabaseRecord) -> ApiResult<Instance> {
    let engine = Engine::parse(&record.engine)
        .ok_or_else(|| ApiError::internal("reading a database", &"unknown engine"))?;
    let host = record
        .host
        .parse()
        .map_err(|e| ApiError::internal("reading a database's address", &e))?;
    Ok(Instance {
        id: record.id.clone(),
        engine,
        database: record.name.clone(),
        host,
        port: record.port,
    })
}

/// Which variables each healthy, wanted database of one app fills: the engine's plain variable
/// for the oldest database of that engine, and a named one for every database.
fn env_names(records: &[DatabaseRecord]) -> BTreeMap<String, Vec<String>> {
    let mut names = BTreeMap::new();
    let mut primary_taken = std::collections::HashSet::new();
    // Records come oldest first (ids sort by creation time).
    for record in records {
        if record.desired != Desired::Running || !is_provisioned(record) {
            continue;
        }
        let Some(engine) = Engine::parse(&record.engine) else {
            continue;
        };
        let var = engine.env_var();
        let mut vars = Vec::new();
        if primary_taken.insert(var) {
            vars.push(var.to_owned());
        }
        vars.push(format!("{var}_{}", record.name.to_ascii_uppercase()));
        names.insert(record.id.clone(), vars);
    }
    names
}

/// Whether the database's URL is handed to machines: it was provisioned, and if the latest
/// login check failed it still keeps its variables (so that no other database takes them).
pub(crate) fn is_provisioned(record: &DatabaseRecord) -> bool {
    matches!(record.status.as_str(), "healthy" | "unhealthy")
}

fn database_view(record: &DatabaseRecord, env: Vec<String>) -> ApiResult<Database> {
    let status = match record.status.as_str() {
        "healthy" => DatabaseStatus::Healthy,
        "unhealthy" => DatabaseStatus::Unhealthy,
        "failed" => DatabaseStatus::Failed,
        "deleting" => DatabaseStatus::Deleting,
        _ => DatabaseStatus::Provisioning,
    };
    let url_masked = instance(record)?.url(&Login {
        user: record.login_user.clone(),
        password: "****".into(),
    });
    Ok(Database {
        id: record.id.clone(),
        app: record.app_id.clone(),
        name: record.name.clone(),
        engine: record.engine.clone(),
        status,
        host: record.host.clone(),
        port: record.port,
        user: record.login_user.clone(),
        url: None,
        url_masked,
        env,
        error: record.error.clone(),
        created_at: record.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, engine: &str, name: &str, status: &str) -> DatabaseRecord {
        DatabaseRecord {
            id: id.into(),
            org_id: "org_1".into(),
            app_id: "app_1".into(),
            name: name.into(),
            engine: engine.into(),
            host: "10.88.0.1".into(),
            port: 20000,
            desired: Desired::Running,
            status: status.into(),
            error: None,
            login_user: "app1".into(),
            login_password: String::new(),
            generation: 1,
            admin_password: String::new(),
            retired_user: None,
            stale_users: Vec::new(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn variables_per_database() {
        let records = [
            record("db_1", "postgres", "main", "healthy"),
            record("db_2", "postgres", "analytics", "healthy"),
            record("db_3", "redis", "cache", "provisioning"),
            record("db_4", "mysql", "legacy", "healthy"),
            record("db_5", "redis", "sessions", "unhealthy"),
            record("db_6", "redis", "queue", "failed"),
        ];
        let names = env_names(&records);
        assert_eq!(names["db_1"], vec!["DATABASE_URL", "DATABASE_URL_MAIN"]);
        assert_eq!(names["db_2"], vec!["DATABASE_URL_ANALYTICS"]);
        assert!(
            !names.contains_key("db_3"),
            "a URL that does not work yet is not handed out"
        );
        assert_eq!(names["db_4"], vec!["MYSQL_URL", "MYSQL_URL_LEGACY"]);
        assert_eq!(
            names["db_5"],
            vec!["REDIS_URL", "REDIS_URL_SESSIONS"],
            "a database failing a recheck keeps its variables"
        );
        assert!(
            !names.contains_key("db_6"),
            "one that never started does not"
        );
    }

    #[test]
    fn names() {
        for good in ["main", "a", "cache_2", "x123456789012345678901234567890y"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Main",
            "1db",
            "my-db",
            "a b",
            "postgres",
            "mysql",
            "x12345678901234567890123456789012",
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert_eq!(err.problem().field.as_deref(), Some("name"));
        }
    }
}
