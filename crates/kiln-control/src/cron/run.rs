//! One cron run: a fresh machine from the app's live release, the command, the outcome.

use std::time::Duration;

use futures::StreamExt;
use kiln_api::releases::Manifest;
use kiln_guest::client::ExecEvent;
use kiln_guest::protocol::{ExecRequest, ExitInfo};
use kiln_store::{CronJobRecord, CronRunRecord};

use crate::service::Service;

/// How much of a run's output is kept.
const LOG_TAIL_BYTES: usize = 8 * 1024;
/// What a run may take beyond its command's own timeout: the machine's boot (a VM under TCG
/// may take up to two minutes) and the release's unpacking.
const HOST_ALLOWANCE: Duration = Duration::from_secs(180);

/// Runs the command, records the outcome and removes the machine, whatever happened.
pub(super) async fn execute(service: &Service, job: &CronJobRecord, run: &CronRunRecord) {
    // The guest ends the command at `timeout_s`; this bounds the rest (a boot or an agent that
    // never answers), so a stuck run cannot hold the job's later slots as overlapping for ever.
    let limit = Duration::from_secs(u64::from(job.timeout_s)) + HOST_ALLOWANCE;
    let outcome = tokio::time::timeout(limit, run_in_machine(service, job, run))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no outcome from the run's machine within {} s; it was removed",
                limit.as_secs()
            ))
        });
    if let Err(e) = service.driver().destroy(&run.id).await {
        tracing::warn!(run = %run.id, error = %e, "removing a cron run's machine failed");
    }
    let (status, code, reason, tail) = match outcome {
        Ok((exit, tail)) if exit.success() => ("succeeded", exit.code, None, Some(tail)),
        Ok((exit, tail)) => ("failed", exit.code, Some(failure(&exit, job)), Some(tail)),
        Err(reason) => ("failed", None, Some(reason), None),
    };
    tracing::info!(job = %job.id, run = %run.id, status, "cron run finished");
    if let Err(e) = service
        .store()
        .finish_cron_run(&run.id, status, code, reason.as_deref(), tail.as_deref())
        .await
    {
        tracing::warn!(run = %run.id, error = %e, "recording a cron run failed");
    }
}

async fn run_in_machine(
    service: &Service,
    job: &CronJobRecord,
    run: &CronRunRecord,
) -> Result<(ExitInfo, String), String> {
    let store = service.store();
    let live = store
        .live_deployment(&job.app_id)
        .await
        .map_err(|e| format!("reading the live deployment: {e}"))?
        .ok_or("the app has no live release to run: deploy one first")?;
    let release = store
        .get_release(&job.org_id, Some(&job.app_id), &live.release_id)
        .await
        .map_err(|e| format!("reading release {}: {e}", live.release_id))?;
    let manifest: Manifest = serde_json::from_str(&release.manifest)
        .map_err(|e| format!("release {} has an unreadable manifest: {e}", release.id))?;
    let env = service
        .release_env(&job.org_id, &job.app_id, &manifest)
        .await?;
    let machine = service
        .boot_release_machine(&run.id, &job.org_id, "cron", &release, &manifest, env)
        .await?;
    let mut request = ExecRequest::new(job.cmd.clone());
    request.timeout_ms = Some(u64::from(job.timeout_s) * 1000);
    let mut events = machine
        .agent
        .exec(request)
        .await
        .map_err(|e| format!("starting the command: {e}"))?;
    let mut tail = Vec::new();
    while let Some(event) = events.next().await {
        match event.map_err(|e| format!("the guest agent failed mid-run: {e}"))? {
            ExecEvent::Stdout(chunk) | ExecEvent::Stderr(chunk) => {
                tail.extend_from_slice(&chunk);
                if tail.len() > 2 * LOG_TAIL_BYTES {
                    tail.drain(..tail.len() - LOG_TAIL_BYTES);
                }
            }
            ExecEvent::Exit(exit) => {
                let start = tail.len().saturating_sub(LOG_TAIL_BYTES);
                return Ok((exit, String::from_utf8_lossy(&tail[start..]).into_owned()));
            }
        }
    }
    Err("the command's output ended without an exit status".to_owned())
}

/// Why a command that ran did not succeed, in words.
fn failure(exit: &ExitInfo, job: &CronJobRecord) -> String {
    if exit.timed_out {
        format!("timed out after {} s and was killed", job.timeout_s)
    } else if exit.not_found {
        format!(
            "`{}` was not found in the release's machine",
            job.cmd.first().map(String::as_str).unwrap_or_default()
        )
    } else if let Some(signal) = exit.signal {
        format!("killed by signal {signal}")
    } else {
        format!("exited with code {}", exit.code.unwrap_or(-1))
    }
}
