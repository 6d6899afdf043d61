-- The port of the app's primary sandbox that its preview URL serves; NULL until a preview
-- is asked for. Kept on the app so the URL survives sandbox restarts and re-creates.
ALTER TABLE apps ADD COLUMN preview_port BIGINT;
