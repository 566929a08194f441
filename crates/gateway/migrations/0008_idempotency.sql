-- Idempotency keys (issue 21, section 3): `Idempotency-Key` on the
-- mutating connectors routes. One row per (workspace, key), claimed with
-- INSERT … ON CONFLICT so that two requests (or two replicas) racing on one
-- key run it once; see crates/gateway/src/ops/idempotency.rs.
--
-- state: 'running' (claimed; `alive_at` is refreshed while it runs),
-- 'done' (`status` and `answer` hold the first answer), 'too_large' (it ran,
-- its answer was over the stored bound: `status` only).
-- fingerprint: SHA-256 (hex) of the method, the path (with the query for
-- PUT /files) and, but for PUT /files, the body. body_sha256: PUT /files
-- only, the SHA-256 of the body once it was read whole.
-- Times are Unix ms. A row whose `expires_at` passed is as good as absent
-- (a claim takes it over) and is deleted by the sweep.
CREATE TABLE idempotency_keys (
    workspace    TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    body_sha256  TEXT,
    claim_id     TEXT NOT NULL,
    state        TEXT NOT NULL,
    status       BIGINT,
    answer       BLOB,
    created_at   BIGINT NOT NULL,
    alive_at     BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (workspace, idem_key)
);

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
