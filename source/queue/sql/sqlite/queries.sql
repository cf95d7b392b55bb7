-- The queue's statements for SQLite. Parameters are `:named`; `utc_now()` and `utc_after(seconds)` are Python
-- functions registered on every connection (ISO-8601 UTC with microseconds, so text order is time order).
-- The statements that decide time (claim readiness, lease expiry and renewal, back-off, worker staleness) take
-- `:now`, the queue's injected clock: `utc_now(:now)` and `utc_after(seconds, :now)` count from it, and from the real
-- clock when it is NULL (the default). Every time such a statement writes or compares comes from that one instant.
-- Every task query returns the columns of `tasks` plus `depends_on_list` (JSON array, link-table order) and `seq`
-- (insertion order, the tie-breaker after created_at).

-- name: create_schema_version
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    applied_at TEXT NOT NULL
)

-- name: schema_version_exists
-- Whether this database has a queue schema at all (read-only commands never create one).
SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'

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
    parent_id, role, segment_index, completes_parent, blocked, created_at, updated_at
) VALUES (
    :task_id, :task_type, :params, 'Queued', :dependant_on, :project_id, :priority, :max_attempts, 0,
    :parent_id, :role, :segment_index, :completes_parent, :blocked, utc_now(), utc_now()
)

-- name: insert_dependency
INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (:task_id, :depends_on_id, :position)
ON CONFLICT DO NOTHING

-- name: ids_with_prefix
-- Ids that start with %s (what `list` shows, shortened): at most 3, to tell one from many.
SELECT id FROM tasks WHERE substr(id, 1, length(:prefix)) = :prefix ORDER BY id LIMIT 3

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
-- One statement: the oldest claimable task (highest priority first). Readiness comes from `blocked` (kept by the
-- classify_* statements below), so the claim reads one partial index however many tasks wait for others.
-- BEGIN IMMEDIATE makes it atomic across processes.
UPDATE tasks
SET status = 'In Progress', worker_id = :worker_id, lease_expires_at = utc_after(:lease_seconds, :now),
    heartbeat_at = utc_now(:now), generation_started_at = utc_now(:now), updated_at = utc_now(:now), progress = NULL
WHERE id = (
    SELECT t.id FROM tasks t
    WHERE t.status = 'Queued' AND t.blocked = 0
      AND (t.available_at IS NULL OR t.available_at <= utc_now(:now))
      AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
    ORDER BY t.priority DESC, t.created_at ASC, t.rowid ASC
    LIMIT 1
) AND status = 'Queued'
RETURNING id

-- name: any_ready
-- Whether a claim that found nothing lost a race (something is ready) or the queue is idle.
SELECT t.id FROM tasks t
WHERE t.status = 'Queued' AND t.blocked = 0
  AND (t.available_at IS NULL OR t.available_at <= utc_now(:now))
  AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))
ORDER BY t.priority DESC, t.created_at ASC, t.rowid ASC
LIMIT 1

-- name: count_ready
SELECT COUNT(*) AS n FROM tasks t
WHERE t.status = 'Queued' AND t.blocked = 0
  AND (t.available_at IS NULL OR t.available_at <= utc_now(:now))
  AND (:task_types IS NULL OR t.task_type IN (SELECT value FROM json_each(:task_types)))

-- name: classify_unclassified
-- Queued rows nobody has classified yet (inserted by another app, or before schema version 3): decide whether they
-- wait for a dependency that is not Complete (a dependency that does not exist keeps a task waiting). The index
-- holds only such rows, so this is free when there are none. Batches of 1000 (core.CLASSIFY_BATCH), taken in index
-- order; the caller repeats a full batch.
UPDATE tasks AS t SET blocked = NOT (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id = l.depends_on_id
        WHERE l.task_id = t.id AND (d.status IS NULL OR d.status <> 'Complete')))
WHERE t.id IN (
    -- INDEXED BY: the planner would otherwise walk idx_status_created over every Queued row
    SELECT u.id FROM tasks u INDEXED BY idx_tasks_unclassified WHERE u.status = 'Queued' AND u.blocked IS NULL
    ORDER BY u.created_at LIMIT 1000)
RETURNING id

-- name: unblock_task
-- A task just inserted (or retried) as waiting, whose dependencies may all be Complete already (a child of a re-run
-- orchestrator depending on a finished sibling). Writes nothing in the usual case.
UPDATE tasks AS t SET blocked = 0
WHERE t.id = :task_id AND t.status = 'Queued' AND t.blocked = 1
  AND (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id = l.depends_on_id
        WHERE l.task_id = t.id AND (d.status IS NULL OR d.status <> 'Complete')))

-- name: classify_dependents_of
-- :task_id has just completed: those of its waiting dependents whose every dependency is Complete now become
-- claimable.
UPDATE tasks AS t SET blocked = 0
WHERE t.id IN (
    SELECT w.id FROM tasks w WHERE w.dependant_on = :task_id
    UNION
    SELECT l.task_id FROM task_dependencies l WHERE l.depends_on_id = :task_id)
  AND t.status = 'Queued' AND t.blocked = 1
  AND (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id = l.depends_on_id
        WHERE l.task_id = t.id AND (d.status IS NULL OR d.status <> 'Complete')))

-- name: classify_blocked
-- The safety net, run at worker start-up and now and then: waiting rows whose dependencies were completed by
-- something other than this queue (an app writing the table directly). Only rows that became ready are written.
UPDATE tasks AS t SET blocked = 0
WHERE t.status = 'Queued' AND t.blocked = 1
  AND (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id = l.depends_on_id
        WHERE l.task_id = t.id AND (d.status IS NULL OR d.status <> 'Complete')))

-- name: renew_lease
UPDATE tasks
SET lease_expires_at = utc_after(:lease_seconds, :now), heartbeat_at = utc_now(:now), updated_at = utc_now(:now)
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress' AND awaiting_children = 0
RETURNING id

-- name: set_progress
UPDATE tasks SET progress = :progress, updated_at = utc_now()
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress'

-- name: mark_complete
-- A finished task's progress says how it ended (its last step and total stay).
-- The attempt that succeeded counts, as a failed one does: a task done at the first try shows 1 of 3, as its log said.
UPDATE tasks
SET status = 'Complete', attempts = attempts + 1, output_location = :output_location, result = :result, error_message = NULL,
    lease_expires_at = NULL, available_at = NULL, awaiting_children = 0,
    generation_processed_at = utc_now(),
    progress = json_set(CASE WHEN json_valid(progress) THEN progress ELSE '{}' END, '$.message', 'Complete'), updated_at = utc_now()
WHERE id = :task_id AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: requeue_after_failure
UPDATE tasks
SET status = 'Queued', attempts = attempts + 1, error_message = :error_message, worker_id = NULL,
    lease_expires_at = NULL, heartbeat_at = NULL, generation_started_at = NULL,
    available_at = utc_after(:delay_seconds, :now), updated_at = utc_now(:now)
WHERE id = :task_id AND status = 'In Progress'
RETURNING id

-- name: mark_failed
UPDATE tasks
SET status = 'Failed', attempts = attempts + 1, error_message = :error_message, lease_expires_at = NULL,
    available_at = NULL, generation_processed_at = utc_now(),
    progress = json_set(CASE WHEN json_valid(progress) THEN progress ELSE '{}' END, '$.message', 'Failed'), updated_at = utc_now()
WHERE id = :task_id AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: terminate_task
-- A cascade: Failed or Cancelled, for tasks that have not finished yet.
UPDATE tasks
SET status = :status, error_message = :error_message, lease_expires_at = NULL, available_at = NULL,
    generation_processed_at = utc_now(),
    progress = json_set(CASE WHEN json_valid(progress) THEN progress ELSE '{}' END, '$.message', :status), updated_at = utc_now()
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
-- The handler's attempt ended well (it enqueued the children), so it counts, as mark_complete's does.
UPDATE tasks
SET attempts = attempts + 1, awaiting_children = 1, worker_id = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    progress = :progress, updated_at = utc_now()
WHERE id = :task_id AND worker_id = :worker_id AND status = 'In Progress'
RETURNING id

-- name: complete_parent
UPDATE tasks
SET status = 'Complete', output_location = :output_location, result = :result, error_message = NULL,
    awaiting_children = 0, generation_processed_at = utc_now(),
    progress = json_set(CASE WHEN json_valid(progress) THEN progress ELSE '{}' END, '$.message', 'Complete'), updated_at = utc_now()
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
    updated_at = utc_now(:now)
WHERE status = 'In Progress' AND awaiting_children = 0
  AND ((:of_worker IS NULL AND lease_expires_at IS NOT NULL AND lease_expires_at < utc_now(:now))
       OR (:of_worker IS NOT NULL AND worker_id = :of_worker))
RETURNING id, status, error_message

-- name: reset_task
-- retry: a Failed or Cancelled task starts over (awaiting orchestrators go back to waiting for their children).
UPDATE tasks
SET status = :status, attempts = 0, blocked = 1, error_message = NULL, worker_id = NULL, lease_expires_at = NULL,
    heartbeat_at = NULL, available_at = NULL, progress = NULL, output_location = NULL, result = NULL,
    generation_started_at = NULL, generation_processed_at = NULL, updated_at = utc_now()
WHERE id = :task_id AND status IN ('Failed', 'Cancelled')
RETURNING id

-- name: count_by_type_and_status
SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status ORDER BY task_type, status

-- name: oldest_queued
SELECT MIN(created_at) AS created_at FROM tasks WHERE status = 'Queued'

-- name: register_worker
-- Takes a worker id for one process (:session_id): when the id is new, its last holder stopped, or the holder's
-- heartbeat is older than :stale_seconds (a crashed process: its leases have expired too). A live holder keeps
-- it: nothing is returned, and the caller must not run (it would reclaim the live holder's tasks as its own).
INSERT INTO workers (id, status, last_heartbeat, current_task_id, metadata, started_at, session_id)
VALUES (:worker_id, 'starting', utc_now(:now), NULL, :metadata, utc_now(:now), :session_id)
ON CONFLICT (id) DO UPDATE SET
    status = 'starting', last_heartbeat = excluded.last_heartbeat, current_task_id = NULL,
    metadata = excluded.metadata, started_at = excluded.started_at, session_id = excluded.session_id
WHERE workers.status IN ('stopped', 'error') OR workers.last_heartbeat IS NULL
   OR workers.last_heartbeat < utc_after(-:stale_seconds, :now)
   OR workers.session_id = excluded.session_id
RETURNING id

-- name: beat_worker
-- A heartbeat, only while this process still holds the id.
UPDATE workers
SET status = :status, last_heartbeat = utc_now(:now), current_task_id = :current_task_id, metadata = :metadata
WHERE id = :worker_id AND session_id = :session_id
RETURNING id

-- name: get_worker
SELECT id, status, last_heartbeat, current_task_id, metadata, started_at FROM workers WHERE id = :worker_id

-- name: list_workers
SELECT id, status, last_heartbeat, current_task_id, metadata, started_at FROM workers ORDER BY started_at, id
