-- A run's change set: what it created, modified and deleted (a JSON list of
-- {path, kind, type, size, mode}; '' for none or not computed), whether the list is
-- truncated, and whether the run's rollback undid the changes.
ALTER TABLE runs ADD COLUMN changes TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN changes_truncated BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE runs ADD COLUMN changes_undone BOOLEAN NOT NULL DEFAULT false;
