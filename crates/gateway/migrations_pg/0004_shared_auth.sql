-- What replicas share to authenticate executors (issue 18, "Registration
-- across replicas"), so that executors work behind a load balancer without
-- session affinity. Only replicas use these tables; a single gateway keeps
-- both in memory. Times are Unix milliseconds. The SQLite twin is migrations/0009_shared_auth.sql (the same SQL).
--
-- Connect tickets: a ticket handed out by one replica's register endpoint
-- is accepted by the WebSocket upgrade on any replica. The key is the
-- ticket's SHA-256 (hex), never the ticket itself; one row per executor (a
-- new register replaces the last); single use (taken with DELETE …
-- RETURNING).
CREATE TABLE connect_tickets (
    ticket_hash TEXT PRIMARY KEY NOT NULL,
    exe_id      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX connect_tickets_by_exe ON connect_tickets (exe_id);

-- SigV4 signatures already used (their SHA-256), so that a captured signed
-- request is refused on every replica, not only on the one that saw it.
CREATE TABLE spent_signatures (
    signature_hash TEXT PRIMARY KEY NOT NULL,
    expires_at     BIGINT NOT NULL
);

CREATE INDEX spent_signatures_by_expiry ON spent_signatures (expires_at);
