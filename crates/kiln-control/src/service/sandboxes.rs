//! Sandboxes: stored intent, and the calls that reach a running sandbox's guest agent.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kiln_api::List;
use kiln_api::sandboxes::{
    DirEntry, ExecConfig, ExecEvent, ExecResult, FileWritten, Process, ProcessConfig, Sandbox,
    SandboxConfig, SandboxStatus,
};
use kiln_guest::client::{AgentError, ExecEvent as AgentEvent};
use kiln_guest::protocol as agent;
use kiln_runtime::{ImageRef, MachineInfo};
use kiln_store::{Desired, NewSandbox, SandboxRecord};

use super::apps::PAGE;
use super::{Service, not_found_as};
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

impl Service {
    /// `POST /v1/apps/{app}/sandboxes`: stores the intent; the reconciler boots the machine.
    pub async fn create_sandbox(
        &self,
        org_id: &str,
        app: &str,
        config: SandboxConfig,
        wait: Option<u64>,
    ) -> ApiResult<Sandbox> {
        let app = self.app_record(org_id, app).await?;
        let image = match &config.image {
            Some(text) => text.parse::<ImageRef>().map_err(|e| {
                ApiError::unprocessable(format!("{e}; leave `image` out for the default image"))
                    .with_field("image")
            })?,
            None => kiln_runtime::default_image(),
        };
        let vcpus = config.vcpus.unwrap_or(self.config().sandbox_vcpus);
        if !(1..=32).contains(&vcpus) {
            return Err(ApiError::invalid_field(
                "vcpus",
                "give between 1 and 32 vCPUs",
            ));
        }
        let memory_mib = config
            .memory_mib
            .unwrap_or(self.config().sandbox_memory_mib);
        if !(64..=262_144).contains(&memory_mib) {
            return Err(ApiError::invalid_field(
                "memory_mib",
                "give between 64 and 262144 MiB of memory",
            ));
        }
        validate::env("env", &config.env)?;
        let record = self
            .store()
            .create_sandbox(&NewSandbox {
                org_id: org_id.to_owned(),
                app_id: app.id,
                image: image.to_string(),
                vcpus,
                memory_mib,
                env: serde_json::to_string(&config.env).expect("a string map always serializes"),
            })
            .await?;
        self.wake_reconciler();
        self.wait_for_sandbox(org_id, &record.id, wait).await
    }

    /// `GET /v1/sandboxes/{sbx}`, optionally waiting for a final status.
    pub async fn get_sandbox(
        &self,
        org_id: &str,
        id: &str,
        wait: Option<u64>,
    ) -> ApiResult<Sandbox> {
        self.wait_for_sandbox(org_id, id, wait).await
    }

    /// `GET /v1/apps/{app}/sandboxes`.
    pub async fn list_sandboxes(
        &self,
        org_id: &str,
        app: &str,
        after: Option<&str>,
    ) -> ApiResult<List<Sandbox>> {
        let app = self.app_record(org_id, app).await?;
        let records = self
            .store()
            .list_sandboxes(org_id, Some(&app.id), after, PAGE)
            .await?;
        let next = (records.len() == PAGE as usize)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        Ok(List {
            items: records.into_iter().map(sandbox_view).collect(),
            next,
        })
    }

    /// `DELETE /v1/sandboxes/{sbx}`: records the intent and waits briefly for the machine and
    /// its workspace to be gone.
    pub async fn delete_sandbox(&self, org_id: &str, id: &str) -> ApiResult<()> {
        let record = self.sandbox_record(org_id, id).await?;
        self.store()
            .set_sandbox_desired(&record.id, Desired::Deleted)
            .await?;
        self.store()
            .set_sandbox_status(&record.id, "deleting", None, None)
            .await?;
        // The edge stops sending traffic to the machine before it goes away.
        self.refresh_routes()
            .await
            .map_err(|e| ApiError::internal("unpublishing the sandbox's routes", &e))?;
        self.wake_reconciler();
        let mut changes = self.subscribe_changes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.store().get_sandbox(Some(org_id), &record.id).await {
                Err(kiln_store::StoreError::NotFound) => return Ok(()),
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                // Still going: the reconciler finishes it; the caller sees `deleting` meanwhile.
                return Ok(());
            }
        }
    }

    /// `POST /v1/sandboxes/{sbx}/exec`, collected into one result.
    pub async fn exec(&self, org_id: &str, id: &str, config: ExecConfig) -> ApiResult<ExecResult> {
        let mut events = Box::pin(self.exec_stream(org_id, id, config).await?);
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(event) = events.next().await {
            match event {
                ExecEvent::Stdout { stdout: s } => stdout.push_str(&s),
                ExecEvent::Stderr { stderr: s } => stderr.push_str(&s),
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    reason,
                } => {
                    return Ok(ExecResult {
                        exit_code,
                        stdout,
                        stderr,
                        signal,
                        reason,
                    });
                }
            }
        }
        Err(ApiError::unavailable(
            "the sandbox's machine stopped answering during the command; retry once it runs again",
        ))
    }

    /// `POST /v1/sandboxes/{sbx}/exec` as a stream of events; the last one is `Exit`
    /// unless the machine went away.
    pub async fn exec_stream(
        &self,
        org_id: &str,
        id: &str,
        config: ExecConfig,
    ) -> ApiResult<impl Stream<Item = ExecEvent> + Send + 'static> {
        validate::command("cmd", &config.cmd)?;
        validate::env("env", &config.env)?;
        let cwd = config
            .cwd
            .as_deref()
            .map(validate::workspace_path)
            .transpose()?;
        let machine = self.running_machine(org_id, id).await?;
        let driver = self.driver().clone();
        let oom_before = driver.oom_kills(&machine.id).await.unwrap_or(0);
        let request = agent::ExecRequest {
            cmd: config.cmd,
            cwd,
            env: config.env,
            timeout_ms: config.timeout_s.map(|s| s.saturating_mul(1000)),
            stdin: config.stdin.map(String::into_bytes),
        };
        let stream = machine
            .agent
            .exec(request)
            .await
            .map_err(|e| self.agent_error(e, "exec"))?;
        let machine_id = machine.id.clone();
        Ok(stream.then(move |event| {
            let driver = driver.clone();
            let machine_id = machine_id.clone();
            async move {
                match event {
                    Ok(AgentEvent::Stdout(b)) => ExecEvent::Stdout {
                        stdout: String::from_utf8_lossy(&b).into_owned(),
                    },
                    Ok(AgentEvent::Stderr(b)) => ExecEvent::Stderr {
                        stderr: String::from_utf8_lossy(&b).into_owned(),
                    },
                    Ok(AgentEvent::Exit(exit)) => {
                        let oom = exit.signal == Some(9)
                            && driver.oom_kills(&machine_id).await.unwrap_or(0) > oom_before;
                        exit_event(&exit, oom)
                    }
                    Err(e) => ExecEvent::Exit {
                        exit_code: 255,
                        signal: None,
                        reason: Some(format!("lost: {e}")),
                    },
                }
            }
        }))
    }

    /// `PUT /v1/sandboxes/{sbx}/files/{path}`; `body` yields an error to abort the write.
    pub async fn put_file<S>(
        &self,
        org_id: &str,
        id: &str,
        path: &str,
        body: S,
    ) -> ApiResult<FileWritten>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static,
    {
        let path = validate::workspace_path(path)?;
        if path.is_empty() {
            return Err(ApiError::invalid_field(
                "path",
                "give a file path after `/files/`",
            ));
        }
        let machine = self.running_machine(org_id, id).await?;
        let size = machine
            .agent
            .put_file(&path, None, body)
            .await
            .map_err(|e| self.agent_error(e, &path))?;
        Ok(FileWritten { path, size })
    }

    /// `GET /v1/sandboxes/{sbx}/files/{path}`: the file as a stream.
    pub async fn get_file(
        &self,
        org_id: &str,
        id: &str,
        path: &str,
    ) -> ApiResult<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
        let path = validate::workspace_path(path)?;
        let machine = self.running_machine(org_id, id).await?;
        let stream = machine
            .agent
            .get_file(&path)
            .await
            .map_err(|e| self.agent_error(e, &path))?;
        Ok(stream.map(|chunk| chunk.map_err(std::io::Error::other)))
    }

    /// `GET /v1/sandboxes/{sbx}/files/{dir}/?list`.
    pub async fn list_files(&self, org_id: &str, id: &str, dir: &str) -> ApiResult<List<DirEntry>> {
        let dir = validate::workspace_path(dir)?;
        let machine = self.running_machine(org_id, id).await?;
        let entries = machine
            .agent
            .list_dir(&dir)
            .await
            .map_err(|e| self.agent_error(e, &dir))?;
        Ok(List {
            items: entries
                .into_iter()
                .map(|e| DirEntry {
                    name: e.name,
                    kind: entry_kind(e.kind).to_owned(),
                    size: e.size,
                })
                .collect(),
            next: None,
        })
    }

    /// `DELETE /v1/sandboxes/{sbx}/files/{path}` (directories recursively).
    pub async fn delete_file(&self, org_id: &str, id: &str, path: &str) -> ApiResult<()> {
        let path = validate::workspace_path(path)?;
        if path.is_empty() {
            return Err(ApiError::invalid_field(
                "path",
                "the workspace root itself cannot be deleted",
            ));
        }
        let machine = self.running_machine(org_id, id).await?;
        machine
            .agent
            .delete(&path, true)
            .await
            .map_err(|e| self.agent_error(e, &path))
    }

    /// `POST /v1/sandboxes/{sbx}/processes`: stored (so it comes back after a restart), then started.
    pub async fn start_process(
        &self,
        org_id: &str,
        id: &str,
        config: ProcessConfig,
    ) -> ApiResult<Process> {
        validate::slug("name", &config.name)?;
        validate::command("cmd", &config.cmd)?;
        validate::env("env", &config.env)?;
        let cwd = config
            .cwd
            .as_deref()
            .map(validate::workspace_path)
            .transpose()?;
        let machine = self.running_machine(org_id, id).await?;
        let spec = agent::ProcessSpec {
            name: config.name.clone(),
            cmd: config.cmd,
            cwd,
            env: config.env,
            port: config.port,
        };
        let info = machine
            .agent
            .process_start(spec.clone())
            .await
            .map_err(|e| self.agent_error(e, &config.name))?;
        self.store()
            .upsert_process(
                &machine.id,
                &spec.name,
                &serde_json::to_string(&spec).expect("a process spec always serializes"),
            )
            .await?;
        Ok(process_view(info))
    }

    /// `GET /v1/sandboxes/{sbx}/processes`.
    pub async fn list_processes(&self, org_id: &str, id: &str) -> ApiResult<List<Process>> {
        let machine = self.running_machine(org_id, id).await?;
        let infos = machine
            .agent
            .process_list()
            .await
            .map_err(|e| self.agent_error(e, "processes"))?;
        Ok(List {
            items: infos.into_iter().map(process_view).collect(),
            next: None,
        })
    }

    /// `DELETE /v1/sandboxes/{sbx}/processes/{name}`.
    pub async fn stop_process(&self, org_id: &str, id: &str, name: &str) -> ApiResult<()> {
        let machine = self.running_machine(org_id, id).await?;
        self.store().delete_process(&machine.id, name).await?;
        machine
            .agent
            .process_stop(name)
            .await
            .map_err(|e| self.agent_error(e, name))
    }

    /// `GET /v1/sandboxes/{sbx}/processes/{name}/logs`.
    pub async fn process_logs(
        &self,
        org_id: &str,
        id: &str,
        name: &str,
        follow: bool,
    ) -> ApiResult<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
        let machine = self.running_machine(org_id, id).await?;
        let stream = machine
            .agent
            .process_logs(name, follow)
            .await
            .map_err(|e| self.agent_error(e, name))?;
        Ok(stream.map(|chunk| chunk.map_err(std::io::Error::other)))
    }

    /// The sandbox record visible in the org.
    pub(crate) async fn sandbox_record(&self, org_id: &str, id: &str) -> ApiResult<SandboxRecord> {
        let record = self
            .store()
            .get_sandbox(Some(org_id), id)
            .await
            .map_err(not_found_as("sandbox", id))?;
        if record.desired == Desired::Deleted {
            return Err(ApiError::not_found("sandbox", id));
        }
        Ok(record)
    }

    pub(crate) async fn running_machine(&self, org_id: &str, id: &str) -> ApiResult<MachineInfo> {
        let record = self.sandbox_record(org_id, id).await?;
        match (record.status.as_str(), self.machines().get(&record.id)) {
            ("running", Some(machine)) => Ok(machine),
            ("failed", _) => Err(ApiError::conflict(format!(
                "sandbox `{id}` failed to start: {}; delete it and create another",
                record.error.as_deref().unwrap_or("unknown reason")
            ))),
            _ => Err(ApiError::unavailable(format!(
                "sandbox `{id}` is starting; retry, or wait with `GET /v1/sandboxes/{id}?wait=30`"
            ))),
        }
    }

    async fn wait_for_sandbox(
        &self,
        org_id: &str,
        id: &str,
        wait: Option<u64>,
    ) -> ApiResult<Sandbox> {
        let mut changes = self.subscribe_changes();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0)).min(MAX_WAIT);
        loop {
            let record = self.sandbox_record(org_id, id).await?;
            let settled = record.status != "starting" && record.status != "deleting";
            if settled
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                return Ok(sandbox_view(record));
            }
        }
    }

    pub(crate) fn agent_error(&self, err: AgentError, subject: &str) -> ApiError {
        match err {
            AgentError::NotFound(_) => {
                ApiError::not_found_detail(format!("`{subject}` does not exist in the sandbox"))
            }
            AgentError::InvalidPath(why) => ApiError::invalid_field(
                "path",
                format!("`{subject}`: {why}; give a path inside the workspace"),
            ),
            AgentError::Conflict(why) => ApiError::conflict(why),
            AgentError::Unreachable(e) => {
                self.wake_reconciler();
                ApiError::unavailable(format!(
                    "the sandbox's machine is not answering ({e}); it is being restarted, retry shortly"
                ))
            }
            AgentError::IsADirectory(why) | AgentError::NotADirectory(why) => {
                ApiError::conflict(format!("`{subject}`: {why}")).with_field("path")
            }
            AgentError::InvalidRequest(why) => {
                ApiError::unprocessable(format!("`{subject}`: {why}"))
            }
            other => ApiError::unprocessable(format!("`{subject}`: {other}")),
        }
    }
}

fn exit_event(exit: &agent::ExitInfo, oom: bool) -> ExecEvent {
    let exit_code = match (exit.code, exit.signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    let reason = if oom {
        Some("out_of_memory: killed by the sandbox's memory limit; raise `memory_mib` or use less memory".to_owned())
    } else if exit.timed_out {
        Some("timeout: killed after `timeout_s`".to_owned())
    } else if exit.not_found {
        Some("not_found: the program is not on PATH in the sandbox".to_owned())
    } else {
        None
    };
    ExecEvent::Exit {
        exit_code,
        signal: exit.signal,
        reason,
    }
}

fn entry_kind(kind: agent::EntryKind) -> &'static str {
    match kind {
        agent::EntryKind::File => "file",
        agent::EntryKind::Dir => "dir",
        agent::EntryKind::Symlink => "symlink",
        agent::EntryKind::Other => "other",
    }
}

/// The wire form of a sandbox record.
pub(crate) fn sandbox_view(record: SandboxRecord) -> Sandbox {
    let status = match record.status.as_str() {
        "running" => SandboxStatus::Running,
        "failed" => SandboxStatus::Failed,
        "deleting" => SandboxStatus::Deleting,
        _ => SandboxStatus::Starting,
    };
    Sandbox {
        id: record.id,
        app: record.app_id,
        status,
        image: record.image,
        vcpus: record.vcpus,
        memory_mib: record.memory_mib,
        address: record.address,
        error: record.error,
        created_at: record.created_at,
    }
}

fn process_view(info: agent::ProcessInfo) -> Process {
    Process {
        name: info.name,
        cmd: info.cmd,
        port: info.port,
        status: match info.status {
            agent::ProcessStatus::Running => "running",
            agent::ProcessStatus::Backoff => "backoff",
            agent::ProcessStatus::Stopped => "stopped",
        }
        .to_owned(),
        restarts: info.restarts,
        last_exit_code: info.last_exit_code,
    }
}

/// The sandbox's stored environment.
pub(crate) fn sandboxes_env(record: &SandboxRecord) -> BTreeMap<String, String> {
    serde_json::from_str(&record.env).unwrap_or_default()
}
