-- The audit log (issue 4), in its own database file `audit.db` (see
-- `store.rs`: a commit here must not change `execgate.db`, whose files'
-- state keys the hot-path lookups). Until the move, this table was created
-- in execgate.db by its migration 0004; `Store::open` moves old rows over.

-- One row per audited operation: tool calls, process operations, file
-- transfers and bridge sessions. Arguments are kept only as SHA-256 and
-- size, never their bytes; error messages are not kept either (they can
-- quote arguments), only error codes. Written in batches by the gateway's
-- audit writer (`audit.rs`). AUTOINCREMENT: ids are never reused, so a
-- pagination cursor stays valid across pruning.
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,          -- unix ms when the operation started
    workspace    TEXT NOT NULL,
    user_id      TEXT,
    environment  TEXT,
    exe_id       TEXT,
    kind         TEXT NOT NULL,             -- tool | process | file | bridge
    method       TEXT NOT NULL,             -- shell, stdin, files.put, ...
    via          TEXT NOT NULL,             -- rest | mcp | bridge
    session_id   TEXT,
    args_sha256  TEXT,
    args_bytes   INTEGER,
    outcome      TEXT NOT NULL,             -- ok | tool_error | error | cancelled | started
    error_code   TEXT,
    exit_code    INTEGER,
    duration_ms  INTEGER NOT NULL DEFAULT 0,
    bytes_in     INTEGER NOT NULL DEFAULT 0,
    bytes_out    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX audit_workspace ON audit (workspace, id);
CREATE INDEX audit_at ON audit (at);
