//! Deployments: start a machine from a release's artifact, wait for its health check, switch
//! the production route atomically, keep the previous machine warm for fast rollbacks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use kiln_api::releases::{Deployment, Manifest};
use kiln_guest::protocol::{ExecRequest, ProcessSpec};
use kiln_runtime::{MachineInfo, MachineSpec};
use kiln_store::{DeploymentRecord, ReleaseRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Service, not_found_as};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// The file in a deployment machine's workspace naming the artifact unpacked there.
const RELEASE_MARKER: &str = ".release-digest";
/// Name of the supervised process that serves a release.
const APP_PROCESS: &str = "app";

impl Service {
    /// `POST /v1/apps/{app}/deployments`.
    pub async fn deploy(
        &self,
        caller: &Caller,
        org_id: &str,
        app: &str,
        release: &str,
    ) -> ApiResult<Deployment> {
        let app = self.app_record(org_id, app).await?;
        let release = self.release_of_app(org_id, &app.id, release).await?;
        let record = self
            .store()
            .create_deployment(org_id, &app.id, &release.id, caller.name())
            .await?;
        self.promote(record, &release).await
    }

    /// `POST /v1/apps/{app}/rollback`: back to `release`, or to the previously live one. A
    /// machine still warm from that release takes over at once; otherwise one boots from the
    /// stored artifact. Nothing is rebuilt.
    pub async fn rollback(
        &self,
        caller: &Caller,
        org_id: &str,
        app: &str,
        release: Option<&str>,
    ) -> ApiResult<Deployment> {
        let app = self.app_record(org_id, app).await?;
        let history = self.store().list_deployments(org_id, &app.id).await?;
        let live = history.iter().find(|d| d.live);
        let target = match release {
            Some(release) => self.release_of_app(org_id, &app.id, release).await?,
            None => {
                let previous = history
                    .iter()
                    .find(|d| {
                        !d.live
                            && matches!(d.status.as_str(), "superseded" | "stopped")
                            && Some(&d.release_id) != live.map(|l| &l.release_id)
                    })
                    .ok_or_else(|| {
                        ApiError::unprocessable(
                            "there is no earlier release to roll back to: name one with `release`",
                        )
                    })?;
                self.release_of_app(org_id, &app.id, &previous.release_id)
                    .await?
            }
        };
        if live.is_some_and(|l| l.release_id == target.id) {
            return Err(ApiError::conflict(format!(
                "v{} is already live",
                target.version
            )));
        }
        // A warm machine of the target release: switch to it.
        if let Some(warm) = history
            .iter()
            .find(|d| d.release_id == target.id && d.status == "superseded" && d.address.is_some())
            && self.machines().get(&warm.id).is_some()
        {
            self.store().make_live(&app.id, &warm.id).await?;
            self.refresh_routes()
                .await
                .map_err(|e| ApiError::internal("switching the production route", &e))?;
            self.notify_change();
            let record = self.store().get_deployment(Some(org_id), &warm.id).await?;
            return self.switched_view(record, live.cloned()).await;
        }
        let record = self
            .store()
            .create_deployment(org_id, &app.id, &target.id, caller.name())
            .await?;
        self.promote(record, &target).await
    }

    /// `GET /v1/apps/{app}/deployments`: newest first.
    pub async fn list_deployments(
        &self,
        org_id: &str,
        app: &str,
    ) -> ApiResult<kiln_api::List<Deployment>> {
        let app = self.app_record(org_id, app).await?;
        let mut items = Vec::new();
        for record in self.store().list_deployments(org_id, &app.id).await? {
            items.push(self.deployment_view(record).await?);
        }
        Ok(kiln_api::List { items, next: None })
    }

    /// Boots, checks and switches to a deployment. On a failed health check the old release
    /// stays live and the answer is a 422 with the reason and the new machine's log tail.
    pub(crate) async fn promote(
        &self,
        record: DeploymentRecord,
        release: &ReleaseRecord,
    ) -> ApiResult<Deployment> {
        self.promoting()
            .lock()
            .expect("promoting lock is never poisoned")
            .insert(record.id.clone());
        let result = self.promote_inner(&record, release).await;
        self.promoting()
            .lock()
            .expect("promoting lock is never poisoned")
            .remove(&record.id);
        result
    }

    async fn promote_inner(
        &self,
        record: &DeploymentRecord,
        release: &ReleaseRecord,
    ) -> ApiResult<Deployment> {
        let record = record.clone();
        let manifest: Manifest = serde_json::from_str(&release.manifest)
            .map_err(|e| ApiError::internal("reading a manifest", &e))?;
        match self
            .start_release_machine(&record, release, &manifest)
            .await
        {
            Ok(address) => {
                self.store()
                    .set_deployment_status(
                        &record.id,
                        "healthy",
                        None,
                        None,
                        Some(&address.to_string()),
                    )
                    .await?;
                let previous = self.store().live_deployment(&record.app_id).await?;
                self.store().make_live(&record.app_id, &record.id).await?;
                self.refresh_routes()
                    .await
                    .map_err(|e| ApiError::internal("switching the production route", &e))?;
                self.notify_change();
                let record = self.store().get_deployment(None, &record.id).await?;
                self.switched_view(record, previous).await
            }
            Err(failure) => {
                let log_tail = self.machine_log_tail(&record.id).await;
                let _ = self.driver().destroy(&record.id).await;
                self.machines().remove(&record.id);
                self.store()
                    .set_deployment_status(
                        &record.id,
                        "failed",
                        Some(&failure),
                        log_tail.as_deref(),
                        None,
                    )
                    .await?;
                let mut err = ApiError::unprocessable(format!(
                    "deployment {} of v{} failed: {failure}; the previous release stays live",
                    record.id, release.version
                ));
                if let Some(tail) = log_tail {
                    err = err.with_log_tail(tail);
                }
                Err(err)
            }
        }
    }

    /// Starts (or adopts) the deployment's machine, installs the artifact if it is not there
    /// yet, starts the app and waits for its health check. Idempotent; the reconciler uses it
    /// to bring production back after a restart.
    pub(crate) async fn start_release_machine(
        &self,
        record: &DeploymentRecord,
        release: &ReleaseRecord,
        manifest: &Manifest,
    ) -> Result<SocketAddr, String> {
        let mut env = self
            .release_env(&record.org_id, &record.app_id, manifest)
            .await?;
        let _ = self
            .store()
            .set_deployment_env(
                &record.id,
                &serde_json::to_string(&super::env::fingerprint(&env)).unwrap_or_default(),
            )
            .await;
        env.insert("PORT".to_owned(), manifest.port.to_string());
        let machine = self
            .boot_release_machine(&record.id, &record.org_id, "app", release, manifest, env)
            .await?;
        let running = machine
            .agent
            .process_list()
            .await
            .map_err(|e| format!("guest agent: {e}"))?
            .iter()
            .any(|p| p.name == APP_PROCESS);
        if !running {
            machine
                .agent
                .process_start(ProcessSpec {
                    name: APP_PROCESS.into(),
                    cmd: vec!["sh".into(), "-c".into(), manifest.start_cmd.clone()],
                    cwd: None,
                    env: BTreeMap::new(),
                    port: Some(manifest.port),
                })
                .await
                .map_err(|e| format!("starting `{}`: {e}", manifest.start_cmd))?;
        }
        let address = SocketAddr::new(machine.address.into(), manifest.port);
        self.machines().insert(machine);
        wait_healthy(address, &manifest.health_path, self.config().health_timeout).await?;
        Ok(address)
    }

    /// The variables a machine of the release gets: the release's own, resolved from the app's
    /// config, and those of the app's managed resources.
    pub(crate) async fn release_env(
        &self,
        org_id: &str,
        app_id: &str,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = self.resolve_env(app_id, &manifest.env).await?;
        env.extend(self.managed_env(org_id, app_id).await?);
        Ok(env)
    }

    /// Starts (or adopts) machine `id` on the release's image with `env`, and unpacks the
    /// release's artifact into its workspace.
    pub(crate) async fn boot_release_machine(
        &self,
        id: &str,
        org_id: &str,
        hostname: &str,
        release: &ReleaseRecord,
        manifest: &Manifest,
        env: BTreeMap<String, String>,
    ) -> Result<MachineInfo, String> {
        let image = manifest.runtime_image.parse().map_err(|e| format!("{e}"))?;
        let spec = MachineSpec {
            id: id.to_owned(),
            org_id: org_id.to_owned(),
            image,
            vcpus: self.config().sandbox_vcpus,
            memory_mib: self.config().sandbox_memory_mib,
            pids_max: self.config().machine_pids_max,
            hostname: hostname.to_owned(),
            env,
        };
        let machine = self
            .driver()
            .start(&spec)
            .await
            .map_err(|e| format!("the machine did not start: {e}"))?;
        self.install(&machine, release).await?;
        Ok(machine)
    }

    /// Unpacks the release's artifact into the machine's workspace, once.
    async fn install(&self, machine: &MachineInfo, release: &ReleaseRecord) -> Result<(), String> {
        if let Ok(mut marker) = machine.agent.get_file(RELEASE_MARKER).await {
            let mut text = Vec::new();
            while let Some(Ok(chunk)) = marker.next().await {
                text.extend_from_slice(&chunk);
            }
            if text == release.digest.as_bytes() {
                return Ok(());
            }
        }
        let digest = release.digest.parse().map_err(|e| format!("{e}"))?;
        let tar = self
            .artifacts()
            .tar_stream(&digest)
            .await
            .map_err(|e| format!("reading artifact {}: {e}", release.digest))?;
        machine
            .agent
            .put_file(".release.tar", None, tar)
            .await
            .map_err(|e| format!("copying the artifact into the machine: {e}"))?;
        let unpack = machine
            .agent
            .exec_collect(ExecRequest::new([
                "sh",
                "-c",
                "tar -xf .release.tar && rm .release.tar",
            ]))
            .await
            .map_err(|e| format!("unpacking the artifact: {e}"))?;
        if !unpack.exit.success() {
            return Err(format!(
                "unpacking the artifact failed: {}",
                String::from_utf8_lossy(&unpack.stderr)
            ));
        }
        let marker = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
            release.digest.clone(),
        ))]);
        machine
            .agent
            .put_file(RELEASE_MARKER, None, marker)
            .await
            .map_err(|e| format!("marking the release: {e}"))?;
        Ok(())
    }

    async fn machine_log_tail(&self, id: &str) -> Option<String> {
        let machine = self.machines().get(id)?;
        super::log_tail(&machine.agent, APP_PROCESS).await
    }

    /// A release of this app, by id or `vN`; another app's release is a 422, not a 404.
    async fn release_of_app(
        &self,
        org_id: &str,
        app_id: &str,
        release: &str,
    ) -> ApiResult<ReleaseRecord> {
        let record = self
            .store()
            .get_release(org_id, Some(app_id), release)
            .await
            .map_err(not_found_as("release", release))
            .map_err(|e| e.with_field("release"))?;
        if record.app_id != app_id {
            return Err(ApiError::unprocessable(format!(
                "release `{release}` belongs to another app"
            ))
            .with_field("release"));
        }
        Ok(record)
    }

    /// The view of a deployment that just became live, with its env change against `previous`.
    async fn switched_view(
        &self,
        record: DeploymentRecord,
        previous: Option<DeploymentRecord>,
    ) -> ApiResult<Deployment> {
        let fingerprint = |id: &str| {
            let store = self.store().clone();
            let id = id.to_owned();
            async move {
                store
                    .deployment_env(&id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|json| serde_json::from_str::<BTreeMap<String, String>>(&json).ok())
                    .unwrap_or_default()
            }
        };
        let new = fingerprint(&record.id).await;
        let old = match &previous {
            Some(previous) => fingerprint(&previous.id).await,
            None => BTreeMap::new(),
        };
        let mut view = self.deployment_view(record).await?;
        view.env_diff = Some(super::env::diff(&old, &new));
        Ok(view)
    }

    pub(crate) async fn deployment_view(&self, record: DeploymentRecord) -> ApiResult<Deployment> {
        let app = self.store().get_app(&record.org_id, &record.app_id).await?;
        let org = self.store().get_org(&record.org_id).await?;
        let version = self
            .store()
            .get_release(&record.org_id, None, &record.release_id)
            .await
            .map_or_else(|_| "?".to_owned(), |r| format!("v{}", r.version));
        Ok(Deployment {
            url: self
                .config()
                .app_url(&format!("{}.{}", app.slug, org.base_domain)),
            id: record.id,
            app: record.app_id,
            release: record.release_id,
            version,
            status: record.status,
            live: record.live,
            reason: record.reason,
            log_tail: record.log_tail,
            created_by: record.created_by,
            created_at: record.created_at,
            updated_at: record.updated_at,
            env_diff: None,
        })
    }
}

/// Waits until `GET path` on the machine answers below 500.
async fn wait_healthy(address: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match http_status(address, path).await {
            Ok(status) if status < 500 => return Ok(()),
            Ok(status) => format!("it answered {status}"),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the health check GET {path} on port {} did not pass within {} s ({last})",
                address.port(),
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.0 request; the status code of the answer.
async fn http_status(address: SocketAddr, path: &str) -> std::io::Result<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: health-check\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}
