-- The gateway's durable state. Everything else it holds is rebuildable.
-- Times are unix milliseconds (UTC).

CREATE TABLE workspaces (
    name        TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Proxy tokens are shown once; only their SHA-256 is kept.
CREATE TABLE proxy_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    workspace   TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    user_id     TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE executors (
    exe_id          TEXT PRIMARY KEY NOT NULL,
    workspace       TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    is_default      INTEGER NOT NULL DEFAULT 0,
    token_hash      TEXT NOT NULL,
    registered_at   INTEGER NOT NULL,
    last_seen_at    INTEGER,
    connected_at    INTEGER,
    disconnected_at INTEGER,
    os              TEXT,
    version         TEXT,
    kind            TEXT,
    -- The executor's JSON-RPC session id, sent back as resumeSessionId after
    -- any reconnect or gateway restart so that running processes stay reachable.
    session_id      TEXT,
    UNIQUE (workspace, name)
);

-- The gateway's index of exec_command sessions: the process itself, its
-- output and its exit status live on the executor.
CREATE TABLE process_sessions (
    sid         TEXT PRIMARY KEY NOT NULL,
    workspace   TEXT NOT NULL,
    exe_id      TEXT NOT NULL,
    process_id  TEXT NOT NULL,
    command     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX process_sessions_workspace ON process_sessions (workspace, created_at);
