-- The audit log moved to its own database file, audit.db
-- (migrations_audit/0001_audit.sql). `Store::open` copies any rows over
-- before this runs; the table is dropped here so that a fresh store, which
-- got it from 0004, ends the same as a migrated one.
DROP TABLE IF EXISTS audit;
