-- Initial schema of the Kiln metadata store (PostgreSQL).
-- Keep in step with ../sqlite/0001_initial.sql: same tables, same columns, portable types.
-- Timestamps are milliseconds since the Unix epoch (BIGINT).
-- Ids are compared bytewise (COLLATE "C") so that `ORDER BY id` matches SQLite and creation order.

CREATE TABLE orgs (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name        TEXT   NOT NULL,
    slug        TEXT   NOT NULL UNIQUE,
    base_domain TEXT   NOT NULL,
    brand       TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    org_id     TEXT   NOT NULL REFERENCES orgs (id),
    name       TEXT   NOT NULL,
    token_hash TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX tokens_org_id ON tokens (org_id, id);

CREATE TABLE apps (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    org_id     TEXT   NOT NULL REFERENCES orgs (id),
    name       TEXT   NOT NULL,
    slug       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, slug)
);

-- app_id has no foreign key on purpose: an app row may be deleted while its sandboxes are
-- still being torn down by the reconciler, which needs their rows until it purges them.
CREATE TABLE sandboxes (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    org_id     TEXT   NOT NULL REFERENCES orgs (id),
    app_id     TEXT   NOT NULL,
    image      TEXT   NOT NULL,
    vcpus      BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    env        TEXT   NOT NULL,
    desired    TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    address    TEXT,
    error      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX sandboxes_org_id ON sandboxes (org_id, id);
CREATE INDEX sandboxes_app_id ON sandboxes (app_id, id);

CREATE TABLE processes (
    sandbox_id TEXT   NOT NULL REFERENCES sandboxes (id),
    name       TEXT   NOT NULL,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, name)
);

CREATE TABLE idempotency_keys (
    org_id       TEXT   NOT NULL REFERENCES orgs (id),
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    status       BIGINT NOT NULL,
    body         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
