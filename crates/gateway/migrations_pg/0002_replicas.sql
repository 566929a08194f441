-- Replicas and executor ownership (issue 18, "Ownership and forwarding").
--
-- A gateway started with --advertise-url and --cluster-secret-file is a
-- replica: it has a random id per process start, and heartbeats its row
-- every second. An executor's link is held by exactly one replica, recorded
-- as a lease with a fencing epoch: taking it (a new link) adds 1 to the
-- epoch; the holder renews every lease it holds in one statement per
-- heartbeat; a replica whose lease lapsed, or whose epoch is no longer the
-- row's, stops serving that executor. Times are Unix milliseconds. The
-- SQLite twin is migrations/0007_replicas.sql (the same SQL).
CREATE TABLE replicas (
    replica_id   TEXT PRIMARY KEY NOT NULL,
    peer_url     TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE executor_leases (
    exe_id      TEXT PRIMARY KEY NOT NULL,
    replica_id  TEXT NOT NULL,
    peer_url    TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    -- The executor's environmentInfo from its handshake (JSON), written
    -- by the holder when it takes the lease: other replicas describe the
    -- executor (envs/list) from it without a channel to the holder.
    environment_info TEXT
);

CREATE INDEX executor_leases_by_replica ON executor_leases (replica_id);
