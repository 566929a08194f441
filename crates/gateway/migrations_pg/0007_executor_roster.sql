-- The twin of migrations/0012 (the same table; PostgreSQL's triggers call
-- a function, once per statement).
-- envs/list without reading every executor row of the workspace (issue 18,
-- "Numbers": 10,000 executors in a workspace). A gateway keeps each
-- workspace's roster (exe_id, name, is_default) in memory and re-reads it
-- only when this one-row counter moved: triggers bump it on every change
-- of the roster (an executor added or removed, directly or by its
-- workspace's cascade; renamed; moved; made default), by any replica or
-- `execgate admin`, so the check is exact. Connects, disconnects and
-- last_seen writes do not touch these columns and do not bump it.
CREATE TABLE executor_roster (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO executor_roster (id, version) VALUES (1, 0);

CREATE FUNCTION executor_roster_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE executor_roster SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER executor_roster_changed
    AFTER INSERT OR DELETE OR UPDATE OF exe_id, workspace, name, is_default ON executors
    FOR EACH STATEMENT EXECUTE FUNCTION executor_roster_bump();
