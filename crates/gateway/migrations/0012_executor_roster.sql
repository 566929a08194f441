-- envs/list without reading every executor row of the workspace (issue 18,
-- "Numbers": 10,000 executors in a workspace). A gateway keeps each
-- workspace's roster (exe_id, name, is_default) in memory and re-reads it
-- only when this one-row counter moved: triggers bump it on every change
-- of the roster (an executor added or removed, directly or by its
-- workspace's cascade; renamed; moved; made default), by any process on
-- the store, so the check is exact. Connects, disconnects and last_seen
-- writes do not touch these columns and do not bump it. The twin of
-- migrations_pg/0007.
CREATE TABLE executor_roster (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO executor_roster (id, version) VALUES (1, 0);

CREATE TRIGGER executor_roster_insert AFTER INSERT ON executors
BEGIN
    UPDATE executor_roster SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER executor_roster_delete AFTER DELETE ON executors
BEGIN
    UPDATE executor_roster SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER executor_roster_update AFTER UPDATE OF exe_id, workspace, name, is_default ON executors
BEGIN
    UPDATE executor_roster SET version = version + 1 WHERE id = 1;
END;
