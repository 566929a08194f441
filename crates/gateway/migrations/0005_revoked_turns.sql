-- Revoked capability-token turns (issue 4, "Capability tokens and the bridge").
--
-- A capability token names its turn_id; revoking the turn refuses every
-- token of it at /bridge (401 turn_revoked) and closes the live bridge
-- sessions that hold one. Rows are never deleted: a turn id is revoked for
-- good (tokens live at most 24 h, so the table could be pruned of rows older
-- than that; it is small enough not to bother yet).
CREATE TABLE revoked_turns (
    turn_id     TEXT PRIMARY KEY NOT NULL,
    revoked_at  INTEGER NOT NULL
);
