-- Scheduled jobs: a command run on a schedule in a fresh machine from the app's live release.
-- `last_slot` is the latest scheduled time already handled (run or skipped), so a restart
-- neither repeats a slot nor replays every slot it missed.
CREATE TABLE cron_jobs (
    id            TEXT   PRIMARY KEY,
    org_id        TEXT   NOT NULL,
    app_id        TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    schedule      TEXT   NOT NULL,
    timezone      TEXT   NOT NULL,
    cmd           TEXT   NOT NULL,
    allow_overlap BIGINT NOT NULL,
    timeout_s     BIGINT NOT NULL,
    last_slot     BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (app_id, name)
);

-- Every slot of a job: run, or skipped (with the reason).
CREATE TABLE cron_runs (
    id           TEXT   PRIMARY KEY,
    job_id       TEXT   NOT NULL REFERENCES cron_jobs (id) ON DELETE CASCADE,
    scheduled_at BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    status       TEXT   NOT NULL,
    exit_code    BIGINT,
    reason       TEXT,
    log_tail     TEXT
);
CREATE INDEX cron_runs_by_job ON cron_runs (job_id, scheduled_at);
