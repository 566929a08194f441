-- PostgreSQL twin of migrations/0011_mcp_tasks.sql (the same SQL).
-- MCP tasks (issue 21: the `io.modelcontextprotocol/tasks` extension of
-- the 2026-07-28 specification). A `shell` call whose client declares the
-- extension runs as an exec_command process session and is answered with a
-- task; the task's id is the session's `sid` (process_sessions), so its
-- process, output and deadline are the session's. This row holds what the
-- session does not: the call's output budget and timeout, the task's TTL,
-- a cancellation, and the final CallToolResult once a `tasks/get` saw the
-- process end (so the answer outlives the executor's retention of the
-- process). See crates/gateway/src/ops/tasks.rs.
--
-- Times are Unix ms. A row whose `expires_at` passed is as good as absent
-- and is deleted by the next task creation.
CREATE TABLE mcp_tasks (
    task_id           TEXT PRIMARY KEY,
    workspace         TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    timeout_ms        BIGINT NOT NULL,
    max_output_bytes  BIGINT,
    cancelled_at      BIGINT,
    finished_at       BIGINT,
    result            TEXT
);

CREATE INDEX mcp_tasks_expires_at ON mcp_tasks (expires_at);
