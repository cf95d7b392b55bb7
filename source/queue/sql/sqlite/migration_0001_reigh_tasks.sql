-- Version 1: the Reigh-compatible `tasks` table (the columns the upstream worker and the Reigh app read and write).
-- Tolerant of a table an older upstream worker created: the table is only created when missing, and each column
-- that such a table may lack is added (the runner skips an ADD COLUMN whose column already exists).

-- name: create_tasks
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'Queued',
    dependant_on TEXT NULL,
    output_location TEXT NULL,
    project_id TEXT NULL,
    worker_id TEXT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NULL,
    generation_started_at TEXT NULL,
    generation_processed_at TEXT NULL
)

-- name: add_dependant_on
ALTER TABLE tasks ADD COLUMN dependant_on TEXT NULL

-- name: add_project_id
ALTER TABLE tasks ADD COLUMN project_id TEXT NULL

-- name: add_worker_id
ALTER TABLE tasks ADD COLUMN worker_id TEXT NULL

-- name: add_attempts
ALTER TABLE tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0

-- name: add_error_message
ALTER TABLE tasks ADD COLUMN error_message TEXT NULL

-- name: add_generation_started_at
ALTER TABLE tasks ADD COLUMN generation_started_at TEXT NULL

-- name: add_generation_processed_at
ALTER TABLE tasks ADD COLUMN generation_processed_at TEXT NULL

-- name: index_status_created
CREATE INDEX IF NOT EXISTS idx_status_created ON tasks (status, created_at)

-- name: index_dependant_on
CREATE INDEX IF NOT EXISTS idx_dependant_on ON tasks (dependant_on)
