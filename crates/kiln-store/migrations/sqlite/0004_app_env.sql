-- An app's configuration: variables and secrets. Secret values are sealed by the control
-- plane before they reach the store; the store never sees them in the clear.
CREATE TABLE app_env (
    app_id     TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    value      TEXT   NOT NULL,
    secret     BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, name)
);

-- What each deployment's machine was given: variable name → SHA-256 of its value, so a
-- deploy can show what changed without keeping values twice.
ALTER TABLE deployments ADD COLUMN env_fingerprint TEXT;
