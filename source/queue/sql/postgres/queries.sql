-- The queue's statements for PostgreSQL (psycopg 3, `%(named)s` parameters). Times come from the server's clock
-- (now()), so workers on many machines agree on lease expiry. The statements that decide time (claim readiness,
-- lease expiry and renewal, back-off, worker staleness) take `%(now)s`, the queue's injected clock, and use
-- COALESCE(%(now)s::timestamptz, now()) for every time they write or compare: NULL (the default) is the server's
-- now(). Every task query returns the columns of `tasks` plus `depends_on_list` (text[], link-table order). The link
-- table holds ids as text; `t.id::text` keeps the joins valid on a Reigh table whose id column is uuid (and is a
-- no-op on ours).

-- name: create_schema_version
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    title text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: schema_version_exists
-- Whether this database has a queue schema at all (read-only commands never create one).
SELECT to_regclass('schema_version')::text AS name WHERE to_regclass('schema_version') IS NOT NULL

-- name: applied_versions
SELECT version FROM schema_version ORDER BY version

-- name: record_migration
INSERT INTO schema_version (version, title, applied_at) VALUES (%(version)s, %(title)s, now())

-- name: lock_for_migration
-- Many workers start at once: one migrates, the others wait and then find nothing to do.
SELECT pg_advisory_xact_lock(7242511001)

-- name: table_columns
SELECT column_name AS name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %(table_name)s

-- name: insert_task
INSERT INTO tasks (
    id, task_type, params, status, dependant_on, project_id, priority, max_attempts, attempts,
    parent_id, role, segment_index, completes_parent, blocked, created_at, updated_at
) VALUES (
    %(task_id)s, %(task_type)s, %(params)s, 'Queued', %(dependant_on)s, %(project_id)s, %(priority)s,
    %(max_attempts)s, 0, %(parent_id)s, %(role)s, %(segment_index)s, %(completes_parent)s, %(blocked)s, now(), now()
)

-- name: insert_dependency
INSERT INTO task_dependencies (task_id, depends_on_id, position) VALUES (%(task_id)s, %(depends_on_id)s, %(position)s)
ON CONFLICT DO NOTHING

-- name: ids_with_prefix
-- Ids that start with %(prefix)s (what `list` shows, shortened): at most 3, to tell one from many.
SELECT t.id::text AS id FROM tasks t WHERE left(t.id::text, length(%(prefix)s)) = %(prefix)s ORDER BY 1 LIMIT 3

-- name: get_task
SELECT t.*, ARRAY(
    SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id::text ORDER BY l.position
) AS depends_on_list
FROM tasks t WHERE t.id = %(task_id)s

-- name: lock_task
SELECT t.*, ARRAY(
    SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id::text ORDER BY l.position
) AS depends_on_list
FROM tasks t WHERE t.id = %(task_id)s
FOR UPDATE OF t

-- name: children_of
SELECT t.*, ARRAY(
    SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id::text ORDER BY l.position
) AS depends_on_list
FROM tasks t WHERE t.parent_id = %(parent_id)s
ORDER BY t.created_at, t.seq

-- name: dependents_of
-- Tasks that wait for %(task_id)s, through Reigh's single column or the link table.
SELECT t.id, t.status, t.parent_id, t.role, t.segment_index FROM tasks t
WHERE t.dependant_on::text = %(task_id)s::text
   OR t.id::text IN (SELECT l.task_id FROM task_dependencies l WHERE l.depends_on_id = %(task_id)s::text)
ORDER BY t.created_at, t.seq

-- name: list_tasks
SELECT t.*, ARRAY(
    SELECT l.depends_on_id FROM task_dependencies l WHERE l.task_id = t.id::text ORDER BY l.position
) AS depends_on_list
FROM tasks t
WHERE (%(status)s::text IS NULL OR t.status::text = %(status)s::text)
  AND (%(task_type)s::text IS NULL OR t.task_type = %(task_type)s::text)
ORDER BY t.created_at DESC, t.seq DESC
LIMIT %(limit)s

-- name: claim_next
-- One statement: the oldest claimable task (highest priority first). Readiness comes from `blocked` (kept by the
-- classify_* statements below), so the claim reads one partial index however many tasks wait for others. SKIP LOCKED
-- makes a concurrent claimer move on to the next candidate instead of waiting or returning nothing.
UPDATE tasks
SET status = 'In Progress', worker_id = %(worker_id)s,
    lease_expires_at
        = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s::double precision),
    heartbeat_at = COALESCE(%(now)s::timestamptz, now()), generation_started_at = COALESCE(%(now)s::timestamptz, now()),
    updated_at = COALESCE(%(now)s::timestamptz, now()), progress = NULL
WHERE id = (
    SELECT t.id FROM tasks t
    WHERE t.status = 'Queued' AND t.blocked = false
      AND (t.available_at IS NULL OR t.available_at <= COALESCE(%(now)s::timestamptz, now()))
      AND (%(task_types)s::text[] IS NULL OR t.task_type = ANY(%(task_types)s::text[]))
    ORDER BY t.priority DESC, t.created_at ASC, t.seq ASC
    LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
) AND status = 'Queued'
RETURNING id

-- name: any_ready
-- Whether a claim that found nothing lost a race (something is ready) or the queue is idle.
SELECT t.id FROM tasks t
WHERE t.status = 'Queued' AND t.blocked = false
  AND (t.available_at IS NULL OR t.available_at <= COALESCE(%(now)s::timestamptz, now()))
  AND (%(task_types)s::text[] IS NULL OR t.task_type = ANY(%(task_types)s::text[]))
ORDER BY t.priority DESC, t.created_at ASC, t.seq ASC
LIMIT 1

-- name: count_ready
SELECT COUNT(*) AS n FROM tasks t
WHERE t.status = 'Queued' AND t.blocked = false
  AND (t.available_at IS NULL OR t.available_at <= COALESCE(%(now)s::timestamptz, now()))
  AND (%(task_types)s::text[] IS NULL OR t.task_type = ANY(%(task_types)s::text[]))

-- name: classify_unclassified
-- Queued rows nobody has classified yet (inserted by another app, or before schema version 3): decide whether they
-- wait for a dependency that is not Complete (a dependency that does not exist keeps a task waiting). The index
-- holds only such rows, so this is free when there are none. Batches of 1000 (core.CLASSIFY_BATCH), taken in index
-- order so the plan stays an index scan whatever the table statistics say; the caller repeats a full batch.
UPDATE tasks AS t SET blocked = NOT (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id::text = l.depends_on_id
        WHERE l.task_id = t.id::text AND (d.status IS NULL OR d.status <> 'Complete')))
WHERE t.id IN (
    SELECT u.id FROM tasks u WHERE u.status = 'Queued' AND u.blocked IS NULL
    ORDER BY u.created_at LIMIT 1000
    FOR UPDATE SKIP LOCKED)
RETURNING id

-- name: unblock_task
-- A task just inserted (or retried) as waiting, whose dependencies may all be Complete already (a child of a re-run
-- orchestrator depending on a finished sibling). Writes nothing in the usual case.
UPDATE tasks AS t SET blocked = false
WHERE t.id = %(task_id)s AND t.status = 'Queued' AND t.blocked = true
  AND (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id::text = l.depends_on_id
        WHERE l.task_id = t.id::text AND (d.status IS NULL OR d.status <> 'Complete')))

-- name: classify_dependents_of
-- %(task_id)s has just completed: those of its waiting dependents whose every dependency is Complete now become
-- claimable.
UPDATE tasks AS t SET blocked = false
WHERE t.id::text IN (
    SELECT w.id::text FROM tasks w WHERE w.dependant_on = %(task_id)s
    UNION
    SELECT l.task_id FROM task_dependencies l WHERE l.depends_on_id = %(task_id)s)
  AND t.status = 'Queued' AND t.blocked = true
  AND (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id::text = l.depends_on_id
        WHERE l.task_id = t.id::text AND (d.status IS NULL OR d.status <> 'Complete')))

-- name: classify_blocked
-- The safety net, run at worker start-up and now and then: waiting rows whose dependencies were completed by
-- something other than this queue (an app writing the table directly). Only rows that became ready are written.
UPDATE tasks AS t SET blocked = false
WHERE t.status = 'Queued' AND t.blocked = true
  AND (
    (t.dependant_on IS NULL
     OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
    AND NOT EXISTS (
        SELECT 1 FROM task_dependencies l LEFT JOIN tasks d ON d.id::text = l.depends_on_id
        WHERE l.task_id = t.id::text AND (d.status IS NULL OR d.status <> 'Complete')))

-- name: renew_lease
UPDATE tasks
SET lease_expires_at
        = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s::double precision),
    heartbeat_at = COALESCE(%(now)s::timestamptz, now()), updated_at = COALESCE(%(now)s::timestamptz, now())
WHERE id = %(task_id)s AND worker_id = %(worker_id)s AND status = 'In Progress' AND NOT awaiting_children
RETURNING id

-- name: set_progress
UPDATE tasks SET progress = %(progress)s, updated_at = now()
WHERE id = %(task_id)s AND worker_id = %(worker_id)s AND status = 'In Progress'

-- name: mark_complete
-- A finished task's progress says how it ended (its last step and total stay).
-- The attempt that succeeded counts, as a failed one does: a task done at the first try shows 1 of 3, as its log said.
UPDATE tasks
SET status = 'Complete', attempts = attempts + 1, output_location = %(output_location)s, result = %(result)s, error_message = NULL,
    lease_expires_at = NULL, available_at = NULL, awaiting_children = false,
    generation_processed_at = now(),
    progress = COALESCE(progress, '{}'::jsonb) || jsonb_build_object('message', 'Complete'::text), updated_at = now()
WHERE id = %(task_id)s AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: requeue_after_failure
UPDATE tasks
SET status = 'Queued', attempts = attempts + 1, error_message = %(error_message)s, worker_id = NULL,
    lease_expires_at = NULL, heartbeat_at = NULL, generation_started_at = NULL,
    available_at = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(delay_seconds)s::double precision),
    updated_at = COALESCE(%(now)s::timestamptz, now())
WHERE id = %(task_id)s AND status = 'In Progress'
RETURNING id

-- name: mark_failed
UPDATE tasks
SET status = 'Failed', attempts = attempts + 1, error_message = %(error_message)s, lease_expires_at = NULL,
    available_at = NULL, generation_processed_at = now(),
    progress = COALESCE(progress, '{}'::jsonb) || jsonb_build_object('message', 'Failed'::text), updated_at = now()
WHERE id = %(task_id)s AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: terminate_task
-- A cascade: Failed or Cancelled, for tasks that have not finished yet.
UPDATE tasks
SET status = %(status)s, error_message = %(error_message)s, lease_expires_at = NULL, available_at = NULL,
    generation_processed_at = now(),
    progress = COALESCE(progress, '{}'::jsonb) || jsonb_build_object('message', %(status)s::text), updated_at = now()
WHERE id = %(task_id)s AND status IN ('Queued', 'In Progress')
RETURNING id

-- name: release_task
-- Graceful shutdown: back to Queued with no attempt penalty.
UPDATE tasks
SET status = 'Queued', worker_id = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    generation_started_at = NULL, progress = NULL, updated_at = now()
WHERE id = %(task_id)s AND worker_id = %(worker_id)s AND status = 'In Progress' AND NOT awaiting_children
RETURNING id

-- name: mark_awaiting_children
-- The handler's attempt ended well (it enqueued the children), so it counts, as mark_complete's does.
UPDATE tasks
SET attempts = attempts + 1, awaiting_children = true, worker_id = NULL, lease_expires_at = NULL, heartbeat_at = NULL,
    progress = %(progress)s, updated_at = now()
WHERE id = %(task_id)s AND worker_id = %(worker_id)s AND status = 'In Progress'
RETURNING id

-- name: complete_parent
UPDATE tasks
SET status = 'Complete', output_location = %(output_location)s, result = %(result)s, error_message = NULL,
    awaiting_children = false, generation_processed_at = now(),
    progress = COALESCE(progress, '{}'::jsonb) || jsonb_build_object('message', 'Complete'::text), updated_at = now()
WHERE id = %(task_id)s AND status = 'In Progress' AND awaiting_children
RETURNING id

-- name: reclaim_expired
-- Expired leases (or every task of %(of_worker)s, a worker that restarted): one more attempt used; Failed past the
-- cap. SKIP LOCKED: rows another transaction is finishing right now are not expired for long. Two UPDATEs with
-- literal statuses rather than one CASE: a CASE is typed text, which a Reigh table's enum `status` column rejects.
WITH expired AS (
    SELECT t.id FROM tasks t
    WHERE t.status = 'In Progress' AND NOT t.awaiting_children
      AND ((%(of_worker)s::text IS NULL AND t.lease_expires_at IS NOT NULL
            AND t.lease_expires_at < COALESCE(%(now)s::timestamptz, now()))
           OR (%(of_worker)s::text IS NOT NULL AND t.worker_id = %(of_worker)s::text))
    FOR UPDATE OF t SKIP LOCKED
), gave_up AS (
    UPDATE tasks
    SET attempts = attempts + 1, status = 'Failed',
        error_message = 'lease expired on worker ' || COALESCE(worker_id, '?') || '; gave up after '
            || (attempts + 1) || ' attempts',
        lease_expires_at = NULL, heartbeat_at = NULL, available_at = NULL,
        updated_at = COALESCE(%(now)s::timestamptz, now())
    WHERE id IN (SELECT id FROM expired) AND status = 'In Progress' AND attempts + 1 >= max_attempts
    RETURNING id, status::text AS status, error_message
), requeued AS (
    UPDATE tasks
    SET attempts = attempts + 1, status = 'Queued',
        error_message = 'lease expired on worker ' || COALESCE(worker_id, '?') || ' (attempt '
            || (attempts + 1) || ' of ' || max_attempts || ')',
        lease_expires_at = NULL, heartbeat_at = NULL, available_at = NULL, generation_started_at = NULL,
        worker_id = NULL, updated_at = COALESCE(%(now)s::timestamptz, now())
    WHERE id IN (SELECT id FROM expired) AND status = 'In Progress' AND attempts + 1 < max_attempts
    RETURNING id, status::text AS status, error_message
)
SELECT id, status, error_message FROM gave_up
UNION ALL
SELECT id, status, error_message FROM requeued

-- name: reset_task
-- retry: a Failed or Cancelled task starts over (awaiting orchestrators go back to waiting for their children).
UPDATE tasks
SET status = %(status)s, attempts = 0, blocked = true, error_message = NULL, worker_id = NULL, lease_expires_at = NULL,
    heartbeat_at = NULL, available_at = NULL, progress = NULL, output_location = NULL, result = NULL,
    generation_started_at = NULL, generation_processed_at = NULL, updated_at = now()
WHERE id = %(task_id)s AND status IN ('Failed', 'Cancelled')
RETURNING id

-- name: count_by_type_and_status
SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status ORDER BY task_type, status

-- name: oldest_queued
SELECT MIN(created_at) AS created_at FROM tasks WHERE status = 'Queued'

-- name: register_worker
-- Takes a worker id for one process (%(session_id)s): when the id is new, its last holder stopped, or the holder's
-- heartbeat is older than %(stale_seconds)s (a crashed process: its leases have expired too). A live holder keeps
-- it: nothing is returned, and the caller must not run (it would reclaim the live holder's tasks as its own).
INSERT INTO workers (id, status, last_heartbeat, current_task_id, metadata, started_at, session_id)
VALUES (
    %(worker_id)s, 'starting', COALESCE(%(now)s::timestamptz, now()), NULL, %(metadata)s,
    COALESCE(%(now)s::timestamptz, now()), %(session_id)s
)
ON CONFLICT (id) DO UPDATE SET
    status = 'starting', last_heartbeat = excluded.last_heartbeat, current_task_id = NULL,
    metadata = excluded.metadata, started_at = excluded.started_at, session_id = excluded.session_id
WHERE workers.status IN ('stopped', 'error') OR workers.last_heartbeat IS NULL
   OR workers.last_heartbeat
      < COALESCE(%(now)s::timestamptz, now()) - make_interval(secs => %(stale_seconds)s::double precision)
   OR workers.session_id = excluded.session_id
RETURNING id

-- name: beat_worker
-- A heartbeat, only while this process still holds the id.
UPDATE workers
SET status = %(status)s, last_heartbeat = COALESCE(%(now)s::timestamptz, now()),
    current_task_id = %(current_task_id)s, metadata = %(metadata)s
WHERE id = %(worker_id)s AND session_id = %(session_id)s
RETURNING id

-- name: get_worker
SELECT id, status, last_heartbeat, current_task_id, metadata, started_at FROM workers WHERE id = %(worker_id)s

-- name: list_workers
SELECT id, status, last_heartbeat, current_task_id, metadata, started_at FROM workers ORDER BY started_at, id
