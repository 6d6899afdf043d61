-- The scheduler looks up runs still going several times a second; finished and skipped runs,
-- the bulk of the table, stay out of this index.
CREATE INDEX cron_runs_running ON cron_runs (status) WHERE status = 'running';
