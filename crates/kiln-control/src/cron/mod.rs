//! The cron scheduler: claims each job's due slot once and runs it in a fresh machine from the
//! app's live release.
//!
//! A slot is claimed by moving the job's `last_slot` forward in the same transaction that
//! records the run, so a restart neither repeats a slot nor replays every slot it missed: after
//! downtime only the latest due slot runs. A slot whose previous run still goes is recorded as
//! skipped unless the job allows overlap.

mod plan;
mod run;
pub mod schedule;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use self::plan::Plan;
use crate::service::Service;
pub use schedule::{Schedule, ScheduleError};

/// How often due slots are looked for; the lateness of a run is at most this.
const TICK: Duration = Duration::from_millis(250);
/// Runs kept per job (newest first, plus any still going); older ones are dropped as new
/// slots are claimed.
pub(crate) const RUNS_KEPT: u32 = 1_000;

/// Runs until `shutdown` is cancelled.
pub async fn run(service: Service, shutdown: CancellationToken) {
    settle_interrupted(&service).await;
    let mut plan = Plan::default();
    loop {
        if let Err(e) = tick(&service, &mut plan).await {
            tracing::warn!(error = %e, "cron pass failed; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Runs left `running` by a previous process cannot be followed any more: their machines are
/// removed and the runs marked failed.
async fn settle_interrupted(service: &Service) {
    let runs = match service.store().list_running_cron_runs().await {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read interrupted cron runs");
            return;
        }
    };
    for run in runs {
        if let Err(e) = service.driver().destroy(&run.id).await {
            tracing::warn!(run = %run.id, error = %e, "removing an interrupted run's machine failed");
        }
        let _ = service
            .store()
            .finish_cron_run(
                &run.id,
                "failed",
                None,
                Some("interrupted: the node restarted while it ran"),
                None,
            )
            .await;
    }
}

async fn tick(service: &Service, plan: &mut Plan) -> Result<(), kiln_store::StoreError> {
    let store = service.store();
    let now = Utc::now();
    let running: HashMap<String, String> = store
        .list_running_cron_runs()
        .await?
        .into_iter()
        .map(|r| (r.job_id, r.id))
        .collect();
    let jobs = store.list_all_cron_jobs().await?;
    plan.keep_only(jobs.iter().map(|job| job.id.as_str()));
    for job in jobs {
        let Some(slot) = plan.due_slot(&job, now) else {
            continue;
        };
        let skip = match running.get(&job.id) {
            Some(previous) if !job.allow_overlap => Some(format!(
                "the previous run `{previous}` was still going (the job does not allow overlap)"
            )),
            _ => None,
        };
        let Some(claimed) = store
            .claim_cron_slot(&job.id, job.last_slot, slot, skip.as_deref())
            .await?
        else {
            continue;
        };
        if let Err(e) = store.prune_cron_runs(&job.id, RUNS_KEPT).await {
            tracing::warn!(job = %job.id, error = %e, "could not prune old cron runs");
        }
        if skip.is_some() {
            tracing::info!(job = %job.id, %slot, "cron slot skipped: previous run still going");
            continue;
        }
        tracing::info!(job = %job.id, run = %claimed.id, %slot, "cron run starting");
        let service = service.clone();
        tokio::spawn(async move { run::execute(&service, &job, &claimed).await });
    }
    Ok(())
}
