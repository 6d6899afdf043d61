//! Cron jobs: create, read, delete, and the record of their runs.

use chrono::Utc;
use kiln_api::List;
use kiln_api::cron::{CronJob, CronJobConfig, CronRun};
use kiln_store::{CronJobRecord, CronRunRecord, NewCronJob, StoreError};

use super::{Service, not_found_as};
use crate::cron::Schedule;
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Run time limit when the job names none.
const DEFAULT_TIMEOUT_S: u32 = 3600;
/// The longest run time limit a job may ask for: one day.
const MAX_TIMEOUT_S: u32 = 86_400;
/// Runs a listing shows.
const RUNS_PAGE: u32 = 100;

impl Service {
    /// `POST /v1/apps/{app}/cron`.
    pub async fn create_cron_job(
        &self,
        org_id: &str,
        app: &str,
        config: CronJobConfig,
    ) -> ApiResult<CronJob> {
        let app = self.app_record(org_id, app).await?;
        validate::slug("name", &config.name)?;
        validate::command("cmd", &config.cmd)?;
        let timezone = config.timezone.unwrap_or_else(|| "UTC".to_owned());
        Schedule::parse(&config.schedule, &timezone)
            .map_err(|e| ApiError::unprocessable(e.detail).with_field(e.field))?;
        let timeout_s = config.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
        if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
            return Err(ApiError::unprocessable(format!(
                "`timeout_s` must be between 1 and {MAX_TIMEOUT_S} seconds, got {timeout_s}"
            ))
            .with_field("timeout_s"));
        }
        let record = self
            .store()
            .create_cron_job(NewCronJob {
                org_id,
                app_id: &app.id,
                name: &config.name,
                schedule: config.schedule.trim(),
                timezone: &timezone,
                cmd: &config.cmd,
                allow_overlap: config.allow_overlap.unwrap_or(false),
                timeout_s,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => ApiError::conflict(format!(
                    "the app already has a cron job named `{}`: pick another name or delete it",
                    config.name
                ))
                .with_field("name"),
                other => other.into(),
            })?;
        Ok(job_view(record))
    }

    /// `GET /v1/apps/{app}/cron`.
    pub async fn list_cron_jobs(&self, org_id: &str, app: &str) -> ApiResult<List<CronJob>> {
        let app = self.app_record(org_id, app).await?;
        let items = self
            .store()
            .list_cron_jobs(&app.id)
            .await?
            .into_iter()
            .map(job_view)
            .collect();
        Ok(List { items, next: None })
    }

    /// `GET /v1/cron/{job}`.
    pub async fn cron_job(&self, org_id: &str, job: &str) -> ApiResult<CronJob> {
        Ok(job_view(self.cron_job_record(org_id, job).await?))
    }

    /// `DELETE /v1/cron/{job}`: no new slots; a run still going finishes.
    pub async fn delete_cron_job(&self, org_id: &str, job: &str) -> ApiResult<()> {
        self.store()
            .delete_cron_job(org_id, job)
            .await
            .map_err(not_found_as("cron job", job))
    }

    /// `GET /v1/cron/{job}/runs`: newest slot first.
    pub async fn cron_runs(&self, org_id: &str, job: &str) -> ApiResult<List<CronRun>> {
        let job = self.cron_job_record(org_id, job).await?;
        let items = self
            .store()
            .list_cron_runs(&job.id, RUNS_PAGE)
            .await?
            .into_iter()
            .map(run_view)
            .collect();
        Ok(List { items, next: None })
    }

    async fn cron_job_record(&self, org_id: &str, job: &str) -> ApiResult<CronJobRecord> {
        self.store()
            .get_cron_job(Some(org_id), job)
            .await
            .map_err(not_found_as("cron job", job))
    }
}

fn job_view(record: CronJobRecord) -> CronJob {
    let next_run_at = Schedule::parse(&record.schedule, &record.timezone)
        .ok()
        .and_then(|s| s.next_after(Utc::now().max(record.last_slot)));
    CronJob {
        id: record.id,
        app_id: record.app_id,
        name: record.name,
        schedule: record.schedule,
        timezone: record.timezone,
        cmd: record.cmd,
        allow_overlap: record.allow_overlap,
        timeout_s: record.timeout_s,
        next_run_at,
        created_at: record.created_at,
    }
}

fn run_view(record: CronRunRecord) -> CronRun {
    CronRun {
        id: record.id,
        job_id: record.job_id,
        scheduled_at: record.scheduled_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        status: record.status,
        exit_code: record.exit_code,
        reason: record.reason,
        log_tail: record.log_tail,
    }
}
