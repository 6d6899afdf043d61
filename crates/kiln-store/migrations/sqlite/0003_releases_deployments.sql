-- Releases: immutable, numbered per app, pointing at a content-addressed artifact.
CREATE TABLE releases (
    id          TEXT   NOT NULL PRIMARY KEY,
    org_id      TEXT   NOT NULL,
    app_id      TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    digest      TEXT   NOT NULL,
    size        BIGINT NOT NULL,
    manifest    TEXT   NOT NULL,
    provenance  TEXT   NOT NULL,
    signature   TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (app_id, version)
);
CREATE INDEX releases_app ON releases (org_id, app_id, version);

-- Deployments: each promotion of a release to an app's production host. At most one per
-- app has live = 1; the others are history (and, for a while, warm machines).
CREATE TABLE deployments (
    id          TEXT   NOT NULL PRIMARY KEY,
    org_id      TEXT   NOT NULL,
    app_id      TEXT   NOT NULL,
    release_id  TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    reason      TEXT,
    log_tail    TEXT,
    address     TEXT,
    live        BIGINT NOT NULL,
    created_by  TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX deployments_app ON deployments (org_id, app_id, id);
