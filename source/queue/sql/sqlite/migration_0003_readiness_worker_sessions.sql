-- Version 3: an idle poll that costs nothing however many tasks wait, and worker ids held by one process at a time.
-- (See the PostgreSQL file of the same version for the reasoning; `blocked` is 0/1/NULL here.)

-- name: add_blocked
ALTER TABLE tasks ADD COLUMN blocked INTEGER NULL

-- name: index_ready
CREATE INDEX IF NOT EXISTS idx_tasks_ready ON tasks (priority DESC, created_at)
    WHERE status = 'Queued' AND blocked = 0

-- name: index_unclassified
CREATE INDEX IF NOT EXISTS idx_tasks_unclassified ON tasks (created_at) WHERE status = 'Queued' AND blocked IS NULL

-- name: index_blocked
CREATE INDEX IF NOT EXISTS idx_tasks_blocked ON tasks (created_at) WHERE status = 'Queued' AND blocked = 1

-- name: drop_old_claim_order
DROP INDEX IF EXISTS idx_tasks_claim_order

-- name: add_worker_session_id
ALTER TABLE workers ADD COLUMN session_id TEXT NULL
