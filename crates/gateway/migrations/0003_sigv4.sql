-- SigV4 keys of executors that run a stock `codex exec-server` (issue 8).
--
-- codex signs its requests with AWS SigV4 (HMAC-SHA256 keyed by a key derived
-- from the secret), so the gateway must be able to recompute signatures: the
-- secret is kept here as issued, not hashed. The data dir is kept 0700 and
-- the database is as sensitive as the secrets themselves; see ARCHITECTURE.md.
-- Deleting the executor deletes its key.
CREATE TABLE executor_sigv4_keys (
    key_id      TEXT PRIMARY KEY NOT NULL,
    exe_id      TEXT NOT NULL UNIQUE REFERENCES executors(exe_id) ON DELETE CASCADE,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
