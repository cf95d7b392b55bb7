-- Version 2: what a real queue needs on top of the Reigh columns: leases and heartbeats, priority, an attempt cap,
-- retry back-off, progress and result metadata, orchestrator children with their identity (parent, role, index),
-- multi-parent dependencies, and the workers table.

-- name: add_max_attempts
ALTER TABLE tasks ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3

-- name: add_priority
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0

-- name: add_lease_expires_at
ALTER TABLE tasks ADD COLUMN lease_expires_at TEXT NULL

-- name: add_heartbeat_at
ALTER TABLE tasks ADD COLUMN heartbeat_at TEXT NULL

-- name: add_available_at
-- Retry back-off: a Queued task is not claimable before this time.
ALTER TABLE tasks ADD COLUMN available_at TEXT NULL

-- name: add_progress
ALTER TABLE tasks ADD COLUMN progress TEXT NULL

-- name: add_result
ALTER TABLE tasks ADD COLUMN result TEXT NULL

-- name: add_parent_id
ALTER TABLE tasks ADD COLUMN parent_id TEXT NULL

-- name: add_role
ALTER TABLE tasks ADD COLUMN role TEXT NULL

-- name: add_segment_index
ALTER TABLE tasks ADD COLUMN segment_index INTEGER NULL

-- name: add_awaiting_children
-- An orchestrator that has enqueued its children and waits (In Progress, no lease) for the completion hook.
ALTER TABLE tasks ADD COLUMN awaiting_children INTEGER NOT NULL DEFAULT 0

-- name: add_completes_parent
-- The child whose output becomes the orchestrator's output (the stitch).
ALTER TABLE tasks ADD COLUMN completes_parent INTEGER NOT NULL DEFAULT 0

-- name: create_task_dependencies
CREATE TABLE IF NOT EXISTS task_dependencies (
    task_id TEXT NOT NULL,
    depends_on_id TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, depends_on_id)
)

-- name: index_task_dependencies_depends_on
CREATE INDEX IF NOT EXISTS idx_task_dependencies_depends_on ON task_dependencies (depends_on_id)

-- name: index_child_identity
-- NULL segment indices must collide too, hence the COALESCE.
CREATE UNIQUE INDEX IF NOT EXISTS ux_tasks_child_identity
    ON tasks (parent_id, role, COALESCE(segment_index, -1)) WHERE parent_id IS NOT NULL

-- name: index_claim_order
CREATE INDEX IF NOT EXISTS idx_tasks_claim_order ON tasks (status, priority DESC, created_at)

-- name: index_leases
CREATE INDEX IF NOT EXISTS idx_tasks_leases ON tasks (lease_expires_at) WHERE status = 'In Progress'

-- name: index_parent
CREATE INDEX IF NOT EXISTS idx_tasks_parent ON tasks (parent_id)

-- name: create_workers
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_heartbeat TEXT NULL,
    current_task_id TEXT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    started_at TEXT NOT NULL
)
