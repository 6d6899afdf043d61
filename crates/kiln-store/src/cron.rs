//! Cron jobs and the record of every slot they had: run, or skipped and why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, new_id, now};

/// A stored cron job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJobRecord {
    /// `cron_…` id.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// The app whose live release the job runs.
    pub app_id: String,
    /// Unique within the app.
    pub name: String,
    /// The cron expression (5 fields, or 6 with seconds first).
    pub schedule: String,
    /// IANA time zone the schedule is read in.
    pub timezone: String,
    /// The command, as argv.
    pub cmd: Vec<String>,
    /// Whether a slot may start while the previous run still goes.
    pub allow_overlap: bool,
    /// How long a run may take before it is killed.
    pub timeout_s: u32,
    /// The latest slot already handled.
    pub last_slot: DateTime<Utc>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What a new job is made of.
#[derive(Clone, Debug)]
pub struct NewCronJob<'a> {
    /// Owning org.
    pub org_id: &'a str,
    /// The app.
    pub app_id: &'a str,
    /// Unique within the app.
    pub name: &'a str,
    /// The cron expression.
    pub schedule: &'a str,
    /// IANA time zone.
    pub timezone: &'a str,
    /// The command.
    pub cmd: &'a [String],
    /// Whether runs may overlap.
    pub allow_overlap: bool,
    /// Run time limit.
    pub timeout_s: u32,
}

/// One slot of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRunRecord {
    /// `run_…` id; also the id of the run's machine.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// The slot this run is for.
    pub scheduled_at: DateTime<Utc>,
    /// When the machine was asked for; `None` for a skipped slot.
    pub started_at: Option<DateTime<Utc>>,
    /// When the command ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The end of the command's output.
    pub log_tail: Option<String>,
}

const JOB_COLUMNS: &str = "id, org_id, app_id, name, schedule, timezone, cmd, allow_overlap, timeout_s, last_slot, created_at";
const RUN_COLUMNS: &str =
    "id, job_id, scheduled_at, started_at, finished_at, status, exit_code, reason, log_tail";

fn job_from_row(row: &AnyRow) -> Result<CronJobRecord> {
    let cmd: String = row.try_get("cmd")?;
    let allow_overlap: i64 = row.try_get("allow_overlap")?;
    let timeout_s: i64 = row.try_get("timeout_s")?;
    Ok(CronJobRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        app_id: row.try_get("app_id")?,
        name: row.try_get("name")?,
        schedule: row.try_get("schedule")?,
        timezone: row.try_get("timezone")?,
        cmd: serde_json::from_str(&cmd).map_err(|e| StoreError::Corrupt {
            what: format!("cron job command: {e}"),
        })?,
        allow_overlap: allow_overlap != 0,
        timeout_s: u32::try_from(timeout_s).unwrap_or(u32::MAX),
        last_slot: get_time(row, "last_slot")?,
        created_at: get_time(row, "created_at")?,
    })
}

fn opt_time(row: &AnyRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    let ms: Option<i64> = row.try_get(column)?;
    ms.map(|ms| {
        DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt {
            what: format!("{column} = {ms} is not a valid timestamp"),
        })
    })
    .transpose()
}

fn run_from_row(row: &AnyRow) -> Result<CronRunRecord> {
    let exit_code: Option<i64> = row.try_get("exit_code")?;
    Ok(CronRunRecord {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        scheduled_at: get_time(row, "scheduled_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        status: row.try_get("status")?,
        exit_code: exit_code.and_then(|c| i32::try_from(c).ok()),
        reason: row.try_get("reason")?,
        log_tail: row.try_get("log_tail")?,
    })
}

impl Store {
    /// Records a job whose first slot is the first one after now.
    pub async fn create_cron_job(&self, new: NewCronJob<'_>) -> Result<CronJobRecord> {
        let at = now();
        let record = CronJobRecord {
            id: new_id("cron"),
            org_id: new.org_id.to_owned(),
            app_id: new.app_id.to_owned(),
            name: new.name.to_owned(),
            schedule: new.schedule.to_owned(),
            timezone: new.timezone.to_owned(),
            cmd: new.cmd.to_vec(),
            allow_overlap: new.allow_overlap,
            timeout_s: new.timeout_s,
            last_slot: at,
            created_at: at,
        };
        let cmd = serde_json::to_string(&record.cmd).map_err(|e| StoreError::Corrupt {
            what: format!("cron job command: {e}"),
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cron_jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
        )))
        .bind(&record.id)
        .bind(&record.org_id)
        .bind(&record.app_id)
        .bind(&record.name)
        .bind(&record.schedule)
        .bind(&record.timezone)
        .bind(cmd)
        .bind(i64::from(record.allow_overlap))
        .bind(i64::from(record.timeout_s))
        .bind(at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(write_error(|| format!("cron job {:?}", new.name)))?;
        Ok(record)
    }

    /// A job by id; `org_id` `None` for any org.
    pub async fn get_cron_job(&self, org_id: Option<&str>, id: &str) -> Result<CronJobRecord> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM cron_jobs WHERE id = $1 AND ($2 IS NULL OR org_id = $2)"
        )))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(job_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// The app's jobs by name.
    pub async fn list_cron_jobs(&self, app_id: &str) -> Result<Vec<CronJobRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM cron_jobs WHERE app_id = $1 ORDER BY name"
        )))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Every job of every app, for the scheduler.
    pub async fn list_all_cron_jobs(&self) -> Result<Vec<CronJobRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM cron_jobs ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Deletes a job and its runs; [`StoreError::NotFound`] when it does not exist.
    pub async fn delete_cron_job(&self, org_id: &str, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM cron_runs WHERE job_id IN (SELECT id FROM cron_jobs WHERE id = $1 AND org_id = $2)")
            .bind(id)
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM cron_jobs WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every job of an app with their runs (the app is going away).
    pub async fn delete_app_cron_jobs(&self, app_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM cron_runs WHERE job_id IN (SELECT id FROM cron_jobs WHERE app_id = $1)",
        )
        .bind(app_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM cron_jobs WHERE app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims `slot` for the job: moves `last_slot` from `seen` to `slot` and records the run
    /// (`running`, or `skipped` with `skip_reason`) in one transaction. Returns `None` when
    /// `last_slot` was no longer `seen` (another scheduler claimed it first).
    pub async fn claim_cron_slot(
        &self,
        job_id: &str,
        seen: DateTime<Utc>,
        slot: DateTime<Utc>,
        skip_reason: Option<&str>,
    ) -> Result<Option<CronRunRecord>> {
        let mut tx = self.pool.begin().await?;
        let moved =
            sqlx::query("UPDATE cron_jobs SET last_slot = $1 WHERE id = $2 AND last_slot = $3")
                .bind(slot.timestamp_millis())
                .bind(job_id)
                .bind(seen.timestamp_millis())
                .execute(&mut *tx)
                .await?;
        if moved.rows_affected() == 0 {
            return Ok(None);
        }
        let at = now();
        let record = CronRunRecord {
            id: new_id("run"),
            job_id: job_id.to_owned(),
            scheduled_at: slot,
            started_at: skip_reason.is_none().then_some(at),
            finished_at: None,
            status: if skip_reason.is_some() {
                "skipped"
            } else {
                "running"
            }
            .to_owned(),
            exit_code: None,
            reason: skip_reason.map(str::to_owned),
            log_tail: None,
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cron_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, NULL, $5, NULL, $6, NULL)"
        )))
        .bind(&record.id)
        .bind(job_id)
        .bind(slot.timestamp_millis())
        .bind(record.started_at.map(|t| t.timestamp_millis()))
        .bind(&record.status)
        .bind(&record.reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    /// Records how a run ended.
    pub async fn finish_cron_run(
        &self,
        id: &str,
        status: &str,
        exit_code: Option<i32>,
        reason: Option<&str>,
        log_tail: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cron_runs SET finished_at = $1, status = $2, exit_code = $3, reason = $4, log_tail = $5 WHERE id = $6",
        )
        .bind(now().timestamp_millis())
        .bind(status)
        .bind(exit_code.map(i64::from))
        .bind(reason)
        .bind(log_tail)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops a job's ended runs beyond its newest `keep` runs, so the history of a job that
    /// fires every second stays bounded. Answers how many went.
    pub async fn prune_cron_runs(&self, job_id: &str, keep: u32) -> Result<u64> {
        let pruned = sqlx::query(
            "DELETE FROM cron_runs WHERE job_id = $1 AND status <> 'running' AND id NOT IN \
             (SELECT id FROM cron_runs WHERE job_id = $1 ORDER BY scheduled_at DESC, id DESC LIMIT $2)",
        )
        .bind(job_id)
        .bind(i64::from(keep))
        .execute(&self.pool)
        .await?;
        Ok(pruned.rows_affected())
    }

    /// A job's runs, newest slot first, at most `limit`.
    pub async fn list_cron_runs(&self, job_id: &str, limit: u32) -> Result<Vec<CronRunRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs WHERE job_id = $1 ORDER BY scheduled_at DESC, id DESC LIMIT $2"
        )))
        .bind(job_id)
        .bind(crate::page_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Runs still marked `running`, of every job.
    pub async fn list_running_cron_runs(&self) -> Result<Vec<CronRunRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs WHERE status = 'running' ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        Store::connect("sqlite::memory:").await.expect("store")
    }

    fn job<'a>(name: &'a str, cmd: &'a [String]) -> NewCronJob<'a> {
        NewCronJob {
            org_id: "org_1",
            app_id: "app_1",
            name,
            schedule: "*/5 * * * *",
            timezone: "UTC",
            cmd,
            allow_overlap: false,
            timeout_s: 60,
        }
    }

    #[tokio::test]
    async fn jobs_round_trip_and_names_are_unique_per_app() {
        let store = store().await;
        let cmd = vec!["echo".to_owned(), "hi there".to_owned()];
        let created = store
            .create_cron_job(job("nightly", &cmd))
            .await
            .expect("create");
        let read = store
            .get_cron_job(Some("org_1"), &created.id)
            .await
            .expect("get");
        assert_eq!(read, created);
        assert!(matches!(
            store.get_cron_job(Some("org_2"), &created.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.create_cron_job(job("nightly", &cmd)).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(store.list_cron_jobs("app_1").await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn a_slot_is_claimed_once_and_runs_are_recorded() {
        let store = store().await;
        let cmd = vec!["true".to_owned()];
        let created = store
            .create_cron_job(job("tick", &cmd))
            .await
            .expect("create");
        let slot = created.last_slot + chrono::Duration::minutes(5);
        let run = store
            .claim_cron_slot(&created.id, created.last_slot, slot, None)
            .await
            .expect("claim")
            .expect("first claim wins");
        assert_eq!(run.status, "running");
        assert!(
            store
                .claim_cron_slot(&created.id, created.last_slot, slot, None)
                .await
                .expect("claim")
                .is_none(),
            "a second claim from the same view must lose"
        );
        let later = slot + chrono::Duration::minutes(5);
        let skipped = store
            .claim_cron_slot(&created.id, slot, later, Some("still going"))
            .await
            .expect("claim")
            .expect("claimed");
        assert_eq!(skipped.status, "skipped");
        assert_eq!(skipped.started_at, None);
        store
            .finish_cron_run(&run.id, "succeeded", Some(0), None, Some("ok\n"))
            .await
            .expect("finish");
        let runs = store.list_cron_runs(&created.id, 10).await.expect("runs");
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].id, skipped.id, "newest slot first");
        assert_eq!(runs[1].exit_code, Some(0));
        assert_eq!(runs[1].log_tail.as_deref(), Some("ok\n"));
        assert!(runs[1].finished_at.is_some());
        assert!(
            store
                .list_running_cron_runs()
                .await
                .expect("running")
                .is_empty()
        );
        store
            .delete_cron_job("org_1", &created.id)
            .await
            .expect("delete");
        assert!(
            store
                .list_cron_runs(&created.id, 10)
                .await
                .expect("runs")
                .is_empty()
        );
    }
}
