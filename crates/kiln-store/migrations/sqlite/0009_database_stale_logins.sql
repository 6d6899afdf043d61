-- Logins a rotation replaced but could not revoke, because machines may still have been using
-- them (their restart failed): a JSON array of user names, revoked by the next rotation that
-- restarts every machine.
ALTER TABLE databases ADD COLUMN stale_users TEXT NOT NULL DEFAULT '[]';
