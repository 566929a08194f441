-- Process lifecycles (issue 5).

-- The executor JSON-RPC session a process was started in. A process lives
-- in its executor session: when the executor later answers initialize with
-- another session id, it restarted (or the session expired) and the process
-- is gone. NULL for rows from before this migration.
ALTER TABLE process_sessions ADD COLUMN executor_session_id TEXT;

-- exec_command's max_runtime_ms, as an absolute deadline (unix ms). The
-- gateway owns deadlines; keeping them here lets them survive a gateway
-- restart. `deadline_done` is set once the process was terminated (or found
-- gone), so that each deadline is enforced once.
ALTER TABLE process_sessions ADD COLUMN deadline_at INTEGER;
ALTER TABLE process_sessions ADD COLUMN deadline_done INTEGER NOT NULL DEFAULT 0;
CREATE INDEX process_sessions_deadline ON process_sessions (deadline_at)
    WHERE deadline_at IS NOT NULL AND deadline_done = 0;
