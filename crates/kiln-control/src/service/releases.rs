//! Publishing: a sandbox's workspace (after an optional build) or an uploaded artifact
//! becomes an immutable, signed, numbered release.

use chrono::Utc;
use futures::TryStreamExt;
use kiln_api::releases::{Manifest, Provenance, Release, ReleaseConfig, Verification};
use kiln_artifacts::Digest;
use kiln_guest::protocol::ExecRequest;
use kiln_store::{NewRelease, ReleaseRecord};
use sha2::{Digest as _, Sha256};

use super::{Service, not_found_as};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Longest a build command may run.
const BUILD_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Bytes of build log kept in an error.
const LOG_TAIL_BYTES: usize = 4096;

impl Service {
    /// `POST /v1/apps/{app}/releases`.
    pub async fn publish(
        &self,
        caller: &Caller,
        org_id: &str,
        app: &str,
        config: ReleaseConfig,
    ) -> ApiResult<Release> {
        let started_at = Utc::now();
        let app = self.app_record(org_id, app).await?;
        let start_cmd = match config.start_cmd.as_deref().map(str::trim) {
            Some(cmd) if !cmd.is_empty() => cmd.to_owned(),
            _ => {
                return Err(ApiError::unprocessable(
                    "a release needs `start_cmd`, the shell command that serves the app, e.g. \"node server.js\"",
                )
                .with_field("start_cmd"));
            }
        };
        let port = match config.port {
            Some(port) if port > 0 => port,
            _ => {
                return Err(ApiError::unprocessable(
                    "a release needs `port`, the port the app listens on (on 0.0.0.0), e.g. 3000",
                )
                .with_field("port"));
            }
        };
        let health_path = config.health_path.unwrap_or_else(|| "/".to_owned());
        if !health_path.starts_with('/')
            || health_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ApiError::invalid_field(
                "health_path",
                "give an absolute path such as `/healthz`",
            ));
        }
        let (digest, size, source_sandbox, build_log) = match (
            &config.sandbox,
            &config.artifact_digest,
        ) {
            (Some(sandbox), None) => {
                let (digest, size, log) = self
                    .pack_sandbox(org_id, &app.id, sandbox, config.build_cmd.as_deref())
                    .await?;
                (digest, size, Some(sandbox.clone()), log)
            }
            (None, Some(digest)) => {
                if config.build_cmd.is_some() {
                    return Err(ApiError::unprocessable(
                        "`build_cmd` runs in a sandbox; an uploaded artifact is published as it is",
                    )
                    .with_field("build_cmd"));
                }
                let digest: Digest = digest.parse().map_err(|e| {
                    ApiError::invalid_field(
                        "artifact_digest",
                        format!("{e}: give `sha256:` and 64 hex digits"),
                    )
                })?;
                let size = self.artifacts().size(&digest).await.map_err(|_| {
                    ApiError::unprocessable(format!(
                        "no artifact {digest} is stored: upload it with `POST /v1/artifacts/uploads` first"
                    ))
                    .with_field("artifact_digest")
                })?;
                (digest, size, None, None)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `sandbox` (publish its workspace) or `artifact_digest` (an uploaded artifact)",
                ));
            }
        };
        let manifest = Manifest {
            start_cmd,
            port,
            health_path,
            runtime_image: kiln_runtime::default_image().to_string(),
            env: self.env_manifest(&app.id).await?,
        };
        let provenance = Provenance {
            app: app.id.clone(),
            source_sandbox,
            workspace_digest: digest.to_string(),
            build_cmd: config.build_cmd.clone(),
            build_log_digest: build_log
                .as_ref()
                .map(|log| format!("sha256:{}", hex::encode(Sha256::digest(log.as_bytes())))),
            builder_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_by: caller.name().to_owned(),
            started_at,
            finished_at: Utc::now(),
        };
        let new = NewRelease {
            org_id: org_id.to_owned(),
            app_id: app.id.clone(),
            digest: digest.to_string(),
            size,
            manifest: serde_json::to_string(&manifest).expect("a manifest always serializes"),
            provenance: serde_json::to_string(&provenance).expect("provenance always serializes"),
        };
        let signer = self.signer();
        let record = self
            .store()
            .create_release(&new, |record| signer.sign(&signed_bytes(record)))
            .await?;
        let mut release = self.release_view(record)?;
        release.build_log = build_log;
        Ok(release)
    }

    /// `GET /v1/apps/{app}/releases`.
    pub async fn list_releases(
        &self,
        org_id: &str,
        app: &str,
    ) -> ApiResult<kiln_api::List<Release>> {
        let app = self.app_record(org_id, app).await?;
        let records = self.store().list_releases(org_id, &app.id).await?;
        let items = records
            .into_iter()
            .map(|r| self.release_view(r))
            .collect::<ApiResult<_>>()?;
        Ok(kiln_api::List { items, next: None })
    }

    /// `GET /v1/releases/{rel}`.
    pub async fn get_release(&self, org_id: &str, id: &str) -> ApiResult<Release> {
        let record = self
            .store()
            .get_release(org_id, None, id)
            .await
            .map_err(not_found_as("release", id))?;
        self.release_view(record)
    }

    /// `GET /v1/releases/{rel}/verify`: the signature and the stored artifact's digest.
    pub async fn verify_release(&self, org_id: &str, id: &str) -> ApiResult<Verification> {
        let record = self
            .store()
            .get_release(org_id, None, id)
            .await
            .map_err(not_found_as("release", id))?;
        let mut problems = Vec::new();
        let signature_valid = kiln_artifacts::verify(
            &self.signer().public_key(),
            &signed_bytes(&record),
            &record.signature,
        )
        .is_ok();
        if !signature_valid {
            problems.push(
                "the signature does not match the release: its record was altered".to_owned(),
            );
        }
        let artifact_valid = match record.digest.parse::<Digest>() {
            Ok(digest) => match self.artifacts().verify(&digest).await {
                Ok(()) => true,
                Err(e) => {
                    problems.push(format!(
                        "the stored artifact does not match {}: {e}",
                        record.digest
                    ));
                    false
                }
            },
            Err(e) => {
                problems.push(format!("the release's digest is malformed: {e}"));
                false
            }
        };
        Ok(Verification {
            signature_valid,
            artifact_valid,
            problems,
        })
    }

    /// Runs the build (if any) and packs the workspace into the artifact store.
    async fn pack_sandbox(
        &self,
        org_id: &str,
        app_id: &str,
        sandbox: &str,
        build_cmd: Option<&str>,
    ) -> ApiResult<(Digest, u64, Option<String>)> {
        let record = self
            .sandbox_record(org_id, sandbox)
            .await
            .map_err(|e| e.with_field("sandbox"))?;
        if record.app_id != app_id {
            return Err(ApiError::unprocessable(format!(
                "sandbox `{sandbox}` belongs to another app"
            ))
            .with_field("sandbox"));
        }
        let machine = self.running_machine(org_id, sandbox).await?;
        let log = match build_cmd {
            Some(cmd) => {
                let output = machine
                    .agent
                    .exec_collect(ExecRequest {
                        cmd: vec!["sh".into(), "-c".into(), cmd.to_owned()],
                        timeout_ms: Some(BUILD_TIMEOUT_MS),
                        ..ExecRequest::default()
                    })
                    .await
                    .map_err(|e| self.agent_error(e, "build"))?;
                let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
                log.push_str(&String::from_utf8_lossy(&output.stderr));
                if !output.exit.success() {
                    let tail = log[log.len().saturating_sub(LOG_TAIL_BYTES)..].to_owned();
                    return Err(ApiError::unprocessable(format!(
                        "the build command failed (exit {:?}): fix the build, then publish again",
                        output.exit.code
                    ))
                    .with_field("build_cmd")
                    .with_log_tail(tail));
                }
                Some(log)
            }
            None => None,
        };
        let tar = machine
            .agent
            .archive("")
            .await
            .map_err(|e| self.agent_error(e, "workspace"))?;
        let reader = tokio_util::io::StreamReader::new(tar.map_err(std::io::Error::other));
        let (digest, size) = self
            .artifacts()
            .put_tar_stream(reader)
            .await
            .map_err(|e| ApiError::internal("storing the artifact", &e))?;
        Ok((digest, size, log))
    }

    pub(crate) fn release_view(&self, record: ReleaseRecord) -> ApiResult<Release> {
        let manifest = serde_json::from_str(&record.manifest)
            .map_err(|e| ApiError::internal("reading a manifest", &e))?;
        let provenance = serde_json::from_str(&record.provenance)
            .map_err(|e| ApiError::internal("reading provenance", &e))?;
        Ok(Release {
            id: record.id,
            app: record.app_id,
            version: format!("v{}", record.version),
            digest: record.digest,
            size: record.size,
            manifest,
            provenance,
            signature: record.signature,
            public_key: self.signer().public_key(),
            status: "ready".into(),
            build_log: None,
            created_at: record.created_at,
        })
    }
}

/// What a release's signature covers: its identity, artifact, manifest and provenance.
fn signed_bytes(record: &ReleaseRecord) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": record.id,
        "app": record.app_id,
        "version": record.version,
        "digest": record.digest,
        "size": record.size,
        "manifest": record.manifest,
        "provenance": record.provenance,
        "created_at": record.created_at.timestamp_millis(),
    }))
    .expect("a release always serializes")
}
