//! Cron jobs: a command run on a schedule in a fresh machine from the app's live release.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Client, ClientError, List};

/// Body of `POST /v1/apps/{app}/cron`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJobConfig {
    /// Unique within the app: lowercase letters, digits and `-`.
    pub name: String,
    /// A cron expression: 5 fields (`minute hour day-of-month month day-of-week`), or 6 with
    /// seconds first; `@hourly`-style aliases too.
    pub schedule: String,
    /// The command, as argv; it runs in the release's directory.
    pub cmd: Vec<String>,
    /// IANA time zone the schedule is read in; `UTC` by default.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Start a slot even while the previous run still goes; `false` by default (the slot is
    /// recorded as skipped).
    #[serde(default)]
    pub allow_overlap: Option<bool>,
    /// Seconds a run may take before it is killed; 3600 by default.
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

/// A cron job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CronJob {
    /// `cron_…` id.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// Name, unique within the app.
    pub name: String,
    /// The cron expression.
    pub schedule: String,
    /// The time zone it is read in.
    pub timezone: String,
    /// The command.
    pub cmd: Vec<String>,
    /// Whether runs may overlap.
    pub allow_overlap: bool,
    /// Run time limit in seconds.
    pub timeout_s: u32,
    /// The next slot.
    pub next_run_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// One slot of a job: run, or skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CronRun {
    /// `run_…` id.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// The slot.
    pub scheduled_at: DateTime<Utc>,
    /// When its machine was asked for; absent for a skipped slot.
    pub started_at: Option<DateTime<Utc>>,
    /// When the command ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The end of the command's output (stdout and stderr interleaved).
    pub log_tail: Option<String>,
}

impl Client {
    /// `POST /v1/apps/{app}/cron`.
    pub async fn create_cron_job(
        &self,
        app: &str,
        config: &CronJobConfig,
    ) -> Result<CronJob, ClientError> {
        self.post(&format!("/v1/apps/{app}/cron"), config).await
    }

    /// `GET /v1/apps/{app}/cron`.
    pub async fn cron_jobs(&self, app: &str) -> Result<List<CronJob>, ClientError> {
        self.get(&format!("/v1/apps/{app}/cron")).await
    }

    /// `GET /v1/cron/{job}`.
    pub async fn cron_job(&self, job: &str) -> Result<CronJob, ClientError> {
        self.get(&format!("/v1/cron/{job}")).await
    }

    /// `DELETE /v1/cron/{job}`.
    pub async fn delete_cron_job(&self, job: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/cron/{job}")).await
    }

    /// `GET /v1/cron/{job}/runs`: newest slot first.
    pub async fn cron_runs(&self, job: &str) -> Result<List<CronRun>, ClientError> {
        self.get(&format!("/v1/cron/{job}/runs")).await
    }
}
