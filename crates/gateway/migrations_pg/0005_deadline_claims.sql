-- Exactly-once deadlines across replicas (issue 18, "Exactly-once duties").
-- Each replica's deadline task enforces the due deadlines of the executors
-- whose link it holds; with replicas it first claims the deadline with one
-- UPDATE … WHERE deadline_done = FALSE AND the claim is free or lapsed …
-- RETURNING, for the time the termination may take. A claimer that dies
-- leaves a claim that lapses, and whichever replica then holds the
-- executor enforces the deadline. A single gateway does not claim. Unix
-- milliseconds; NULL when unclaimed.
ALTER TABLE process_sessions ADD COLUMN deadline_claimed_until BIGINT;
-- The twin of migrations/0010 and migrations_pg/0005 (the same SQL).
