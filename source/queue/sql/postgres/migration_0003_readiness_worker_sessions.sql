-- Version 3: an idle poll that costs nothing however many tasks wait, and worker ids held by one process at a time.
--
-- `blocked` caches "some dependency of this Queued task is not Complete": NULL = not yet classified (a row written
-- by another app), true = waiting, false = claimable. The queue sets it when a task is inserted or retried, clears it
-- for the dependents of a task that completes, and classifies NULL rows on every poll, so a claim reads one index
-- instead of testing every Queued row's dependencies (100k waiting rows cost ~0.7 s per poll before).
-- `workers.session_id` names the process holding a worker id; another process may take the id only once the
-- holder's heartbeat is stale, so two workers started with one --worker-id cannot run each other's tasks.

-- name: add_blocked
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS blocked boolean NULL

-- name: index_ready
CREATE INDEX IF NOT EXISTS idx_tasks_ready ON tasks (priority DESC, created_at, seq)
    WHERE status = 'Queued' AND blocked = false

-- name: index_unclassified
CREATE INDEX IF NOT EXISTS idx_tasks_unclassified ON tasks (created_at) WHERE status = 'Queued' AND blocked IS NULL

-- name: index_blocked
CREATE INDEX IF NOT EXISTS idx_tasks_blocked ON tasks (created_at) WHERE status = 'Queued' AND blocked = true

-- name: drop_old_claim_order
DROP INDEX IF EXISTS idx_tasks_claim_order

-- name: add_worker_session_id
ALTER TABLE workers ADD COLUMN IF NOT EXISTS session_id text NULL
