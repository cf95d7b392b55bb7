-- Version 1: the Reigh-compatible `tasks` table (the columns the upstream worker and the Reigh app read and write).
-- Tolerant of a table that already exists (a Supabase project that Reigh created): the table is only created when
-- missing, and each column such a table may lack is added.

-- name: create_tasks
CREATE TABLE IF NOT EXISTS tasks (
    id text PRIMARY KEY,
    task_type text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'Queued',
    dependant_on text NULL,
    output_location text NULL,
    project_id text NULL,
    worker_id text NULL,
    attempts integer NOT NULL DEFAULT 0,
    error_message text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NULL,
    generation_started_at timestamptz NULL,
    generation_processed_at timestamptz NULL
)

-- name: add_dependant_on
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS dependant_on text NULL

-- name: add_project_id
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS project_id text NULL

-- name: add_worker_id
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS worker_id text NULL

-- name: add_attempts
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0

-- name: add_error_message
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS error_message text NULL

-- name: add_generation_started_at
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS generation_started_at timestamptz NULL

-- name: add_generation_processed_at
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS generation_processed_at timestamptz NULL

-- name: index_status_created
CREATE INDEX IF NOT EXISTS idx_status_created ON tasks (status, created_at)

-- name: index_dependant_on
CREATE INDEX IF NOT EXISTS idx_dependant_on ON tasks (dependant_on)
