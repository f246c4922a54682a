-- The sandbox's durable state: current_snapshot is the snapshot it resumes from (set
-- when a snapshot of its live state is taken, on rollback and on fork), head_run the
-- newest acknowledged run whose effects its live state holds. A snapshot's state_run
-- is the run whose end state the image holds ('' for a state before any run).
ALTER TABLE sandboxes ADD COLUMN current_snapshot TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN head_run TEXT NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN state_run TEXT NOT NULL DEFAULT '';

-- Sandboxes recorded before this migration resume from their newest snapshot that
-- is not a failure's.
UPDATE sandboxes SET current_snapshot = COALESCE((
    SELECT s.id FROM snapshots s
    WHERE s.sandbox_id = sandboxes.id AND s.kind <> 'failure'
    ORDER BY s.created_at DESC, s.id COLLATE "C" DESC LIMIT 1), '');
