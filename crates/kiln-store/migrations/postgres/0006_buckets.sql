-- S3 buckets: one row per bucket, named globally on the node (S3 names are global). Each has
-- its own key pair; the secret is sealed by the control plane before it reaches the store.
CREATE TABLE buckets (
    name           TEXT   PRIMARY KEY,
    org_id         TEXT   NOT NULL REFERENCES orgs (id),
    app_id         TEXT   NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    access_key_id  TEXT   NOT NULL UNIQUE,
    secret_sealed  TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX buckets_app ON buckets (app_id, created_at);
