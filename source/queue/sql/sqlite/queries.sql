-- The queue's statements for SQLite. Parameters are `:named`; `utc_now()` and `utc_after(seconds)` are Python
-- functions registered on every connection (ISO-8601 UTC with microseconds, so text order is time order).
-- Every task query returns the columns of `tasks` plus `depends_on_list` (JSON array, link-table order) and `seq`
-- (insertion order, the tie-breaker after created_at).

-- name: create_schema_version
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    applied_at TEXT NOT NULL
)

-- name: applied_versions
SELECT version FROM schema_version ORDER BY version

-- name: record_migration
INSERT INTO schema_version (version, title, applied_at) VALUES (:version, :title, utc_now())

-- name: lock_for_migration
-- BEGIN IMMEDIATE already holds the database's write lock.
SELECT 1

-- name: table_columns
SELECT name FROM pragma_table_info(:table_name)

-- name: insert_task
INSERT INTO tasks (
    id, task_type, params, status, dependant_on, project_id, priority, max_attempts, attempts,
    parent_id, role, segment_index, completes_parent, created_at, updated_at
) VALUES (
    :task_id, :task_type, :params, 'Queued', :dependant_on, :project_id, :priority, :max_attempts, 0,
    :parent_id, :role, :segment_index, :completes_parent, utc_now(), utc_now()
)

-- name: insert_dependency
INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (:task_id, :depends_on_id, :position)
ON CONFLICT DO NOTHING

-- name: get_task
SELECT t.*, t.rowid AS seq,
    (SELECT json_group_array(depends_on_id) FROM (
        SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id ORDER BY l.position
    )) AS depends_on_list
FROM tasks t WHERE t.id = :task_id

-- name: lock_task
-- The write transaction already serialises everything; same as get_task.
SELECT t.*, t.rowid AS seq,
    (SELECT json_group_array(depends_on_id) FROM (
        SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id ORDER BY l.position
    )) AS depends_on_list
FROM tasks t WHERE t.id = :task_id

-- name: children_of
SELECT t.*, t.rowid AS seq,
    (SELECT json_group_array(depends_on_id) FROM (
        SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id ORDER BY l.position
    )) AS depends_on_list
FROM tasks t WHERE t.parent_id = :parent_id
ORDER BY t.created_at, t.rowid

-- name: dependents_of
-- Tasks that wait for :task_id, through Reigh's single column or the link table.
SELECT t.id, t.status, t.parent_id, t.role, t.segment_index FROM tasks t
WHERE t.dependant_on = :task_id
   OR t.id IN (SELECT l.task_id FROM task_dependencies l WHERE l.depends_on_id = :task_id)
ORDER BY t.created_at, t.rowid

-- name: list_tasks
SELECT t.*, t.rowid AS seq,
    (SELECT json_group_array(depends_on_id) FROM (
        SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id ORDER BY l.position
    )) AS depends_on_list
FROM tasks t
WHERE (:status IS NULL OR t.status = :status) AND (:task_type IS NULL OR t.task_type = :task_type)
ORDER BY t.created_at DESC, t.rowid DESC
LIMIT :limit

-- name: claim_next
-- One statement inside BEGIN IMMEDIATE: the oldest ready task (highest priority first) whose dependencies, the
-- Reigh column and every link, are Complete. A dependency that does not exist keeps the task waiting.
UPDATE tasks
SET status = 'In Progress', worker_id = :worker_id, lease_expires_at = utc_after(:lease_seconds),
    heartbeat_at = utc_now(), generation_started_at = utc_now(), updated_at = utc_now(), progress = NULL
WHERE id = (
    SELECT t.id FROM tasks t
    WHERE t.status = 'Queued'
      AND (t.available_at IS NULL OR t.available_at <= utc_now())
      AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
      AND (t.dependant_on IS NULL
           OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
      AND NOT EXISTS (
          SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id = l.depends_on_id
          WHERE l.task_id = t.id AND (d.status IS NULL OR d.status <> 'Complete'))
    ORDER BY t.priority DESC, t.created_at ASC, t.rowid ASC
    LIMIT 1
) AND status = 'Queued'
RETURNING id

-- name: count_ready
SELECT COUNT(*) AS n FROM tasks t
WHERE t.status = 'Queued'
  AND (t.available_at IS NULL OR t.available_at <= utc_now())
  AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
  AND (t.dependant_on IS NULL
       OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
  AND NOT EXISTS (
      SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id = l.depends_on_id
      WHERE l.task_id = t.id AND (d.status IS NULL OR d.status <> 'Complete'))

-- name: renew_lease
UPDATE tasks SET lease_expires_at = utc_after(:lease_seconds), heartbeat_at = utc_now(), updated_at = utc_now()
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress' AND awaiting_children = 0
RETURNING id

-- name: set_progress
UPDATE tasks SET progress = :progress, updated_at = utc_now()
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress'

-- name: mark_complete
UPDATE tasks
SET status = 'Complete', output_location = :output_location, result = :result, error_message = NULL,
    lease_expires_at = NULL, available_at = NULL, awaiting_children = 0,
    generation_processed_at = utc_now(), updated_at = utc_now()
WHERE id = :task_id AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: requeue_after_failure
UPDATE tasks
SET status = 'Queued', attempts = attempts + 1, error_message = :error_message, worker_id = NULL,
    lease_expires_at = NULL, heartbeat_at = NULL, generation_started_at = NULL,
    available_at = utc_after(:delay_seconds), updated_at = utc_now()
WHERE id = :task_id AND status = 'In Progress'
RETURNING id

-- name: mark_failed
UPDATE tasks
SET status = 'Failed', attempts = attempts + 1, error_message = :error_message, lease_expires_at = NULL,
    available_at = NULL, generation_processed_at = utc_now(), updated_at = utc_now()
WHERE id = :task_id AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: terminate_task
-- A cascade: Failed or Cancelled, for tasks that have not finished yet.
UPDATE tasks
SET status = :status, error_message = :error_message, lease_expires_at = NULL, available_at = NULL,
    generation_processed_at = utc_now(), updated_at = utc_now()
WHERE id = :task_id AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: release_task
-- Graceful shutdown: back to Queued with no attempt penalty.
UPDATE tasks
SET status = 'Queued', worker_id = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    generation_started_at = NULL, progress = NULL, updated_at = utc_now()
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress' AND awaiting_children = 0
RETURNING id

-- name: mark_awaiting_children
UPDATE tasks
SET awaiting_children = 1, worker_id = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    progress = :progress, updated_at = utc_now()
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress'
RETURNING id

-- name: complete_parent
UPDATE tasks
SET status = 'Complete', output_location = :output_location, result = :result, error_message = NULL,
    awaiting_children = 0, generation_processed_at = utc_now(), updated_at = utc_now()
WHERE id = :task_id AND status = 'In Progress' AND awaiting_children = 1
RETURNING id

-- name: reclaim_expired
-- Expired leases (or every task of :of_worker, a worker that restarted): one more attempt used; Failed past the cap.
UPDATE tasks
SET attempts = attempts + 1,
    status = CASE WHEN attempts + 1 >= max_attempts THEN 'Failed' ELSE 'Queued' END,
    error_message = CASE
        WHEN attempts + 1 >= max_attempts
        THEN 'lease expired on worker ' || COALESCE(worker_id, '?') || '; gave up after '
             || (attempts + 1) || ' attempts'
        ELSE 'lease expired on worker ' || COALESCE(worker_id, '?') || ' (attempt '
             || (attempts + 1) || ' of ' || max_attempts || ')'
        END,
    lease_expires_at = NULL, heartbeat_at = NULL, available_at = NULL,
    generation_started_at = CASE WHEN attempts + 1 >= max_attempts THEN generation_started_at ELSE NULL END,
    worker_id = CASE WHEN attempts + 1 >= max_attempts THEN worker_id ELSE NULL END,
    updated_at = utc_now()
WHERE status = 'In Progress' AND awaiting_children = 0
  AND ((:of_worker IS NULL AND lease_expires_at IS NOT NULL AND lease_expires_at < utc_now())
       OR (:of_worker IS NOT NULL AND worker_id = :of_worker))
RETURNING id, status, error_message

-- name: reset_task
-- retry: a Failed or Cancelled task starts over (awaiting orchestrators go back to waiting for their children).
UPDATE tasks
SET status = :status, attempts = 0, error_message = NULL, worker_id = NULL, lease_expires_at = NULL,
    heartbeat_at = NULL, available_at = NULL, progress = NULL, output_location = NULL, result = NULL,
    generation_started_at = NULL, generation_processed_at = NULL, updated_at = utc_now()
WHERE id = :task_id AND status IN ('Failed', 'Cancelled')
RETURNING id

-- name: count_by_type_and_status
SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status ORDER BY task_type, status

-- name: oldest_queued
SELECT MIN(created_at) AS created_at FROM tasks WHERE status = 'Queued'

-- name: upsert_worker
INSERT INTO workers (id, status, last_heartbeat, current_task_id, metadata, started_at)
VALUES (:worker_id, :status, utc_now(), :current_task_id, :metadata, utc_now())
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, last_heartbeat = excluded.last_heartbeat,
    current_task_id = excluded.current_task_id, metadata = excluded.metadata,
    -- a worker id that registers again (a restarted pod with a fixed id) starts a new life
    started_at = CASE WHEN excluded.status = 'starting' THEN excluded.started_at ELSE workers.started_at END

-- name: list_workers
SELECT id, status, last_heartbeat, current_task_id, metadata, started_at FROM workers ORDER BY started_at, id
