-- Managed databases: one server instance per row. Passwords are sealed by the control plane
-- before they reach the store. `retired_user` is a login being revoked by a rotation, kept
-- until its revocation is done so a crash mid-rotation finishes it on restart.
CREATE TABLE databases (
    id             TEXT   PRIMARY KEY,
    org_id         TEXT   NOT NULL,
    app_id         TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    engine         TEXT   NOT NULL,
    host           TEXT   NOT NULL,
    port           BIGINT NOT NULL,
    desired        TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    error          TEXT,
    login_user     TEXT   NOT NULL,
    login_password TEXT   NOT NULL,
    generation     BIGINT NOT NULL,
    admin_password TEXT   NOT NULL,
    retired_user   TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    UNIQUE (app_id, name),
    UNIQUE (host, port)
);
CREATE INDEX databases_org ON databases (org_id);
