//! [`Databases`]: the node's database instances — provision, start, check, rotate, destroy.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::layout::{self, EngineUser};
use crate::supervise::{self, Supervisor};
use crate::{DbError, Engine, Instance, Login, mysql, postgres, redis};

/// How long a starting server may take to accept the administrator's login.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is probed while a server starts.
const READY_POLL: Duration = Duration::from_millis(15);
/// Bytes of server log quoted in errors.
pub const LOG_TAIL_BYTES: usize = 4096;

/// The database instances of this node, under one root directory.
pub struct Databases {
    root: PathBuf,
    running: std::sync::Mutex<HashMap<String, Supervisor>>,
    /// Serialises template builds, so concurrent first provisions build one template.
    templates: tokio::sync::Mutex<()>,
}

impl Databases {
    /// Opens (creating) the root directory, e.g. `$KILN_DATA_DIR/databases`. Makes it and its
    /// parent traversable, so the engines' users can reach their data directories below it.
    pub fn open(root: PathBuf) -> Result<Databases, DbError> {
        layout::ensure_dir(&root, 0o711)?;
        if let Some(parent) = root.parent() {
            layout::allow_traverse(parent)?;
        }
        layout::ensure_dir(&root.join("templates"), 0o711)?;
        Ok(Databases {
            root,
            running: std::sync::Mutex::default(),
            templates: tokio::sync::Mutex::new(()),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The data directory of instance `id`.
    pub fn data_dir(&self, id: &str) -> PathBuf {
        layout::data_dir(&self.root, id)
    }

    /// The tail of instance `id`'s server log.
    pub fn log_tail(&self, id: &str) -> String {
        layout::file_tail(&layout::log_file(&self.root, id), LOG_TAIL_BYTES)
    }

    /// Whether this node supervises a server for instance `id`.
    pub fn is_running(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Supervisor>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates instance `inst` from scratch, starts it, sets its administrator password and
    /// first login, and proves the login works. Anything left by an interrupted earlier
    /// attempt is removed first; on failure nothing is left behind (no process, no data).
    pub async fn provision(
        &self,
        inst: &Instance,
        admin_password: &str,
        login: &Login,
    ) -> Result<(), DbError> {
        self.destroy(inst).await?;
        let result = self.provision_fresh(inst, admin_password, login).await;
        if result.is_err()
            && let Err(e) = self.destroy(inst).await
        {
            tracing::warn!(database = %inst.id, error = %e, "cleaning up a failed provision failed");
        }
        result
    }

    async fn provision_fresh(
        &self,
        inst: &Instance,
        admin_password: &str,
        login: &Login,
    ) -> Result<(), DbError> {
        let user = EngineUser::of(inst.engine)?;
        check_port_free(inst)?;
        let dir = layout::instance_dir(&self.root, &inst.id);
        layout::ensure_dir(&dir, 0o711)?;
        layout::check_reachable(&dir, user.name)?;
        let data = self.data_dir(&inst.id);
        match inst.engine {
            Engine::Postgres => {
                let template = self.template(Engine::Postgres, user).await?;
                layout::copy_tree(&template.join("data"), &data).await?;
                let template_password = postgres::template_password(&template)?;
                self.launch(inst, user)?;
                self.wait_ready(inst, &template_password).await?;
                postgres::bootstrap(inst, &template_password, admin_password, login).await?;
            }
            Engine::Mysql => {
                let template = self.template(Engine::Mysql, user).await?;
                layout::copy_tree(&template.join("data"), &data).await?;
                self.launch(inst, user)?;
                self.wait_ready(inst, admin_password).await?;
                mysql::bootstrap(inst, &data, login).await?;
            }
            Engine::Redis => {
                redis::check_installed()?;
                layout::ensure_dir(&data, 0o700)?;
                layout::chown_tree(&data, user)?;
                redis::write_config(inst, &data, user, admin_password, login)?;
                self.launch(inst, user)?;
                self.wait_ready(inst, admin_password).await?;
            }
        }
        self.check(inst, login).await
    }

    /// Starts the server of an already provisioned instance unless this node supervises it
    /// already, and waits until it accepts the administrator. After a restart of the node a
    /// server left running by the previous life is adopted when it still answers (so apps keep
    /// their database), else stopped and started afresh.
    pub async fn start(&self, inst: &Instance, admin_password: &str) -> Result<(), DbError> {
        if self.is_running(&inst.id) {
            return Ok(());
        }
        let user = EngineUser::of(inst.engine)?;
        let pid_file = layout::pid_file(&self.root, &inst.id);
        let data = self.data_dir(&inst.id);
        if let Some(pid) = supervise::find_running(&pid_file, inst.engine.process_name(), &data)
            && self.adopt(inst, user, pid, admin_password).await
        {
            return Ok(());
        }
        supervise::stop_stale(
            &pid_file,
            inst.engine.process_name(),
            &data,
            stop_signal(inst.engine),
        )
        .await;
        if !self.data_dir(&inst.id).exists() {
            return Err(DbError::NotReady {
                engine: inst.engine,
                reason: format!(
                    "its data directory {} is gone",
                    self.data_dir(&inst.id).display()
                ),
                log_tail: self.log_tail(&inst.id),
            });
        }
        check_port_free(inst)?;
        self.launch(inst, user)?;
        let ready = self.wait_ready(inst, admin_password).await;
        if ready.is_err() {
            self.stop(&inst.id).await;
        }
        ready
    }

    /// Takes over a server left running by an earlier life of the node if it still answers
    /// the administrator; false (nothing registered) when it does not.
    async fn adopt(
        &self,
        inst: &Instance,
        user: EngineUser,
        pid: i32,
        admin_password: &str,
    ) -> bool {
        let alive = match inst.engine {
            Engine::Postgres => postgres::ping_admin(inst, admin_password).await,
            Engine::Mysql => mysql::ping_admin(&self.data_dir(&inst.id)).await,
            Engine::Redis => redis::ping_admin(inst, admin_password).await,
        };
        if alive.is_err() {
            return false;
        }
        let Ok(cmd) = self.server_command(inst, user) else {
            return false;
        };
        tracing::info!(database = %inst.id, pid, "adopted a running database server");
        self.lock()
            .entry(inst.id.clone())
            .or_insert_with(|| Supervisor::adopt(cmd, pid));
        true
    }

    /// A real login with `login` over the network and a query.
    pub async fn check(&self, inst: &Instance, login: &Login) -> Result<(), DbError> {
        match inst.engine {
            Engine::Postgres => postgres::check_login(inst, login).await,
            Engine::Mysql => mysql::check_login(inst, login).await,
            Engine::Redis => redis::check_login(inst, login).await,
        }
    }

    /// Adds credential `login` and proves it logs in.
    pub async fn add_login(
        &self,
        inst: &Instance,
        admin_password: &str,
        login: &Login,
    ) -> Result<(), DbError> {
        match inst.engine {
            Engine::Postgres => postgres::add_login(inst, admin_password, login).await?,
            Engine::Mysql => mysql::add_login(inst, &self.data_dir(&inst.id), login).await?,
            Engine::Redis => redis::add_login(inst, admin_password, login).await?,
        }
        self.check(inst, login).await
    }

    /// Revokes the credential of `user` and ends its sessions. Idempotent.
    pub async fn remove_login(
        &self,
        inst: &Instance,
        admin_password: &str,
        user: &str,
    ) -> Result<(), DbError> {
        match inst.engine {
            Engine::Postgres => postgres::remove_login(inst, admin_password, user).await,
            Engine::Mysql => mysql::remove_login(&self.data_dir(&inst.id), user).await,
            Engine::Redis => redis::remove_login(inst, admin_password, user).await,
        }
    }

    /// Stops the server of instance `id` cleanly (its data stays).
    pub async fn stop(&self, id: &str) {
        let supervisor = self.lock().remove(id);
        if let Some(supervisor) = supervisor {
            supervisor.stop().await;
        }
    }

    /// Stops every server (node shutdown); data stays, the next start brings them back.
    pub async fn stop_all(&self) {
        let all: Vec<Supervisor> = self.lock().drain().map(|(_, s)| s).collect();
        let mut stops = tokio::task::JoinSet::new();
        for supervisor in all {
            stops.spawn(supervisor.stop());
        }
        while stops.join_next().await.is_some() {}
    }

    /// Stops the server and removes the instance's directory: data, logs, credentials.
    /// Idempotent.
    pub async fn destroy(&self, inst: &Instance) -> Result<(), DbError> {
        self.stop(&inst.id).await;
        supervise::stop_stale(
            &layout::pid_file(&self.root, &inst.id),
            inst.engine.process_name(),
            &self.data_dir(&inst.id),
            stop_signal(inst.engine),
        )
        .await;
        let dir = layout::instance_dir(&self.root, &inst.id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DbError::io(format!("remove {}", dir.display()), e)),
        }
    }

    /// The engine's template directory, built on first use.
    async fn template(&self, engine: Engine, user: EngineUser) -> Result<PathBuf, DbError> {
        let name = match engine {
            Engine::Postgres => postgres::template_name()?,
            Engine::Mysql => mysql::template_name()?,
            Engine::Redis => {
                return Err(DbError::Invalid {
                    what: "engine",
                    detail: "redis has no template".into(),
                });
            }
        };
        let _one_build = self.templates.lock().await;
        let dir = self.root.join("templates").join(&name);
        if dir.exists() {
            return Ok(dir);
        }
        let started = std::time::Instant::now();
        let building = self
            .root
            .join("templates")
            .join(format!(".{name}.building"));
        if building.exists() {
            tokio::fs::remove_dir_all(&building)
                .await
                .map_err(|e| DbError::io("remove an unfinished template", e))?;
        }
        layout::ensure_dir(&building, 0o711)?;
        let data = building.join("data");
        layout::ensure_dir(&data, 0o700)?;
        layout::chown_tree(&data, user)?;
        match engine {
            Engine::Postgres => postgres::build_template(&building, user).await?,
            _ => mysql::build_template(&building, user).await?,
        }
        // Built without per-file fsync; one filesystem sync makes the template durable before
        // it is published by the rename.
        let path = building.display().to_string();
        layout::run(Path::new("sync"), &["-f", &path], None, None).await?;
        std::fs::rename(&building, &dir)
            .map_err(|e| DbError::io(format!("publish template {}", dir.display()), e))?;
        tracing::info!(template = %name, ms = started.elapsed().as_millis() as u64, "database template built");
        Ok(dir)
    }

    fn launch(&self, inst: &Instance, user: EngineUser) -> Result<(), DbError> {
        let cmd = self.server_command(inst, user)?;
        let mut running = self.lock();
        running
            .entry(inst.id.clone())
            .or_insert_with(|| Supervisor::start(cmd));
        Ok(())
    }

    fn server_command(
        &self,
        inst: &Instance,
        user: EngineUser,
    ) -> Result<supervise::ServerCommand, DbError> {
        let data = self.data_dir(&inst.id);
        let mut cmd = match inst.engine {
            Engine::Postgres => postgres::server_command(inst, &data)?,
            Engine::Mysql => mysql::server_command(inst, &data)?,
            Engine::Redis => redis::server_command(inst, &data)?,
        };
        cmd.uid = user.uid;
        cmd.gid = user.gid;
        cmd.log = layout::log_file(&self.root, &inst.id);
        cmd.pid_file = layout::pid_file(&self.root, &inst.id);
        Ok(cmd)
    }

    /// Waits until the administrator gets in; fails at once, with the log tail, when the
    /// server exits instead.
    async fn wait_ready(&self, inst: &Instance, admin_password: &str) -> Result<(), DbError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let data = self.data_dir(&inst.id);
        loop {
            let exits = self.lock().get(&inst.id).map(Supervisor::exits);
            match exits {
                None => {
                    return Err(self.not_ready(inst, "the server was stopped while starting"));
                }
                Some(n) if n > 0 => {
                    // Give the log a moment to receive the server's last words.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let err = self.not_ready(inst, "the server exited while starting");
                    self.stop(&inst.id).await;
                    return Err(err);
                }
                Some(_) => {}
            }
            let probe = match inst.engine {
                Engine::Postgres => postgres::ping_admin(inst, admin_password).await,
                Engine::Mysql => mysql::ping_admin(&data).await,
                Engine::Redis => redis::ping_admin(inst, admin_password).await,
            };
            let last = match probe {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() > deadline {
                let err = self.not_ready(
                    inst,
                    &format!(
                        "no login within {} s (last answer: {last})",
                        READY_TIMEOUT.as_secs()
                    ),
                );
                self.stop(&inst.id).await;
                return Err(err);
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn not_ready(&self, inst: &Instance, reason: &str) -> DbError {
        DbError::NotReady {
            engine: inst.engine,
            reason: reason.to_owned(),
            log_tail: self.log_tail(&inst.id),
        }
    }
}

/// The signal that shuts an engine's server down cleanly and quickly.
fn stop_signal(engine: Engine) -> Signal {
    match engine {
        Engine::Postgres => Signal::SIGINT,
        Engine::Mysql | Engine::Redis => Signal::SIGTERM,
    }
}

/// Refuses a port another program holds, with an error that names it, before a server is
/// started only to die on it.
fn check_port_free(inst: &Instance) -> Result<(), DbError> {
    match TcpListener::bind((inst.host, inst.port)) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DbError::PortTaken {
            host: inst.host,
            port: inst.port,
        }),
        Err(e) => Err(DbError::io(
            format!("check that {}:{} is free", inst.host, inst.port),
            e,
        )),
    }
}
