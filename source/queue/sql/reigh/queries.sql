-- The queue's statements on Reigh's own schema (banodoco/reigh-app, supabase/migrations): its `tasks` table as it is
-- (uuid ids, the `task_status` enum, `dependant_on uuid[]` of which all must be Complete, `project_id` NOT NULL,
-- `task_type` a row of `task_types`, results in `result_data`) and its `workers` table (`instance_type` NOT NULL,
-- status active|inactive|terminated). What Reigh has no column for lives in `headless.task_state` and
-- `headless.worker_sessions` (migration_0001). Statements that change `generation_started_at` or
-- `generation_processed_at` run under the application_name Reigh's trigger `prevent_timing_manipulation` accepts.
--
-- Readiness is computed at claim time, as Reigh's own claim does (`all_dependencies_complete`): there is no
-- `blocked` cache to keep, so the classify_* statements have nothing to do here. Every task query returns the
-- columns base.QueueBase._task_from_row reads.
--
-- As in sql/postgres, the statements that decide time take `%(now)s` (the queue's injected clock) and use
-- COALESCE(%(now)s::timestamptz, now()) for every time they write or compare; NULL (the default) is the server's
-- now().

-- name: create_schema_version
-- One statement (a DO block) so the schema exists before its first table; runs under lock_for_migration.
DO $$
BEGIN
    CREATE SCHEMA IF NOT EXISTS headless;
    CREATE TABLE IF NOT EXISTS headless.schema_version (
        version integer PRIMARY KEY,
        title text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
END
$$

-- name: schema_version_exists
-- Whether the worker's schema exists at all (read-only commands never create it).
SELECT to_regclass('headless.schema_version')::text AS name WHERE to_regclass('headless.schema_version') IS NOT NULL

-- name: applied_versions
SELECT version FROM headless.schema_version ORDER BY version

-- name: record_migration
INSERT INTO headless.schema_version (version, title, applied_at) VALUES (%(version)s, %(title)s, now())

-- name: lock_for_migration
-- Many workers start at once: one migrates, the others wait and then find nothing to do.
SELECT pg_advisory_xact_lock(7242511002)

-- name: table_columns
SELECT column_name AS name FROM information_schema.columns
WHERE table_schema = 'headless' AND table_name = %(table_name)s

-- name: insert_task
-- Reigh's row (only columns Reigh has, its defaults for the rest) and our state row, in one statement.
WITH inserted AS (
    INSERT INTO tasks (id, task_type, params, status, dependant_on, project_id, attempts, created_at, updated_at)
    VALUES (
        %(task_id)s::uuid, %(task_type)s, %(params)s, 'Queued',
        NULLIF(%(dependencies)s::uuid[], '{}'::uuid[]), %(project_id)s::uuid, 0, now(), now()
    )
    RETURNING id
)
INSERT INTO headless.task_state (task_id, priority, max_attempts, parent_id, role, segment_index, completes_parent)
SELECT id, %(priority)s, %(max_attempts)s, %(parent_id)s::uuid, %(role)s, %(segment_index)s, %(completes_parent)s
FROM inserted

-- name: insert_dependency
-- Nothing to do: Reigh's dependant_on array, written by insert_task, holds every dependency.
SELECT 1 WHERE false

-- name: ids_with_prefix
-- Ids that start with %(prefix)s (what `list` shows, shortened): at most 3, to tell one from many.
SELECT t.id::text AS id FROM tasks t WHERE left(t.id::text, length(%(prefix)s)) = %(prefix)s ORDER BY 1 LIMIT 3

-- name: get_task
SELECT t.id::text AS id, t.task_type, t.params, t.status::text AS status,
       t.dependant_on[1]::text AS dependant_on, t.dependant_on::text[] AS depends_on_list,
       t.output_location, t.project_id::text AS project_id, t.worker_id, t.attempts,
       COALESCE(s.max_attempts, 3) AS max_attempts, COALESCE(s.priority, 0) AS priority, t.error_message,
       s.progress, t.result_data AS result, s.parent_id::text AS parent_id, s.role, s.segment_index,
       t.created_at, t.updated_at, t.generation_started_at, t.generation_processed_at,
       s.lease_expires_at, s.heartbeat_at, COALESCE(s.awaiting_children, false) AS awaiting_children,
       COALESCE(s.completes_parent, false) AS completes_parent, s.available_at
FROM tasks t LEFT JOIN headless.task_state s ON s.task_id = t.id
WHERE t.id = %(task_id)s::uuid

-- name: lock_task
SELECT t.id::text AS id, t.task_type, t.params, t.status::text AS status,
       t.dependant_on[1]::text AS dependant_on, t.dependant_on::text[] AS depends_on_list,
       t.output_location, t.project_id::text AS project_id, t.worker_id, t.attempts,
       COALESCE(s.max_attempts, 3) AS max_attempts, COALESCE(s.priority, 0) AS priority, t.error_message,
       s.progress, t.result_data AS result, s.parent_id::text AS parent_id, s.role, s.segment_index,
       t.created_at, t.updated_at, t.generation_started_at, t.generation_processed_at,
       s.lease_expires_at, s.heartbeat_at, COALESCE(s.awaiting_children, false) AS awaiting_children,
       COALESCE(s.completes_parent, false) AS completes_parent, s.available_at
FROM tasks t LEFT JOIN headless.task_state s ON s.task_id = t.id
WHERE t.id = %(task_id)s::uuid
FOR UPDATE OF t

-- name: children_of
SELECT t.id::text AS id, t.task_type, t.params, t.status::text AS status,
       t.dependant_on[1]::text AS dependant_on, t.dependant_on::text[] AS depends_on_list,
       t.output_location, t.project_id::text AS project_id, t.worker_id, t.attempts,
       s.max_attempts, s.priority, t.error_message,
       s.progress, t.result_data AS result, s.parent_id::text AS parent_id, s.role, s.segment_index,
       t.created_at, t.updated_at, t.generation_started_at, t.generation_processed_at,
       s.lease_expires_at, s.heartbeat_at, s.awaiting_children, s.completes_parent, s.available_at
FROM headless.task_state s JOIN tasks t ON t.id = s.task_id
WHERE s.parent_id = %(parent_id)s::uuid
ORDER BY t.created_at, s.seq

-- name: dependents_of
-- Tasks whose dependant_on array holds %(task_id)s (Reigh's GIN index answers this).
SELECT t.id::text AS id, t.status::text AS status, s.parent_id::text AS parent_id, s.role, s.segment_index
FROM tasks t LEFT JOIN headless.task_state s ON s.task_id = t.id
WHERE t.dependant_on @> ARRAY[%(task_id)s::uuid]
ORDER BY t.created_at, s.seq

-- name: list_tasks
SELECT t.id::text AS id, t.task_type, t.params, t.status::text AS status,
       t.dependant_on[1]::text AS dependant_on, t.dependant_on::text[] AS depends_on_list,
       t.output_location, t.project_id::text AS project_id, t.worker_id, t.attempts,
       COALESCE(s.max_attempts, 3) AS max_attempts, COALESCE(s.priority, 0) AS priority, t.error_message,
       s.progress, t.result_data AS result, s.parent_id::text AS parent_id, s.role, s.segment_index,
       t.created_at, t.updated_at, t.generation_started_at, t.generation_processed_at,
       s.lease_expires_at, s.heartbeat_at, COALESCE(s.awaiting_children, false) AS awaiting_children,
       COALESCE(s.completes_parent, false) AS completes_parent, s.available_at
FROM tasks t LEFT JOIN headless.task_state s ON s.task_id = t.id
WHERE (%(status)s::text IS NULL OR t.status::text = %(status)s::text)
  AND (%(task_type)s::text IS NULL OR t.task_type = %(task_type)s::text)
ORDER BY t.created_at DESC, s.seq DESC NULLS LAST
LIMIT %(limit)s

-- name: claim_next
-- application_name: claim_task
-- One statement: the oldest ready task of the types this worker handles (highest priority first), with every
-- dependency Complete (a dependency that does not exist keeps it waiting, as Reigh's all_dependencies_complete),
-- taken with SKIP LOCKED; Reigh's columns say In Progress and who holds it, our state row holds the lease.
WITH picked AS (
    SELECT t.id FROM tasks t
    LEFT JOIN headless.task_state s ON s.task_id = t.id
    WHERE t.status = 'Queued'
      AND (%(task_types)s::text[] IS NULL OR t.task_type = ANY(%(task_types)s::text[]))
      AND (s.available_at IS NULL OR s.available_at <= COALESCE(%(now)s::timestamptz, now()))
      AND NOT EXISTS (
          SELECT 1 FROM unnest(t.dependant_on) AS dependency(id)
          LEFT JOIN tasks d ON d.id = dependency.id
          WHERE d.status IS DISTINCT FROM 'Complete')
    ORDER BY COALESCE(s.priority, 0) DESC, t.created_at ASC, s.seq ASC NULLS LAST
    LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE tasks t
    SET status = 'In Progress', worker_id = %(worker_id)s, generation_started_at = COALESCE(%(now)s::timestamptz, now()),
        updated_at = COALESCE(%(now)s::timestamptz, now())
    FROM picked WHERE t.id = picked.id AND t.status = 'Queued'
    RETURNING t.id
), leased AS (
    INSERT INTO headless.task_state (task_id, lease_expires_at, heartbeat_at, progress)
    SELECT id, COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s::double precision),
           COALESCE(%(now)s::timestamptz, now()), NULL
    FROM claimed
    ON CONFLICT (task_id) DO UPDATE
    SET lease_expires_at = excluded.lease_expires_at, heartbeat_at = excluded.heartbeat_at, progress = NULL
)
SELECT id::text AS id FROM claimed

-- name: any_ready
-- Whether a claim that found nothing lost a race (something is ready) or the queue is idle.
SELECT t.id::text AS id FROM tasks t
LEFT JOIN headless.task_state s ON s.task_id = t.id
WHERE t.status = 'Queued'
  AND (%(task_types)s::text[] IS NULL OR t.task_type = ANY(%(task_types)s::text[]))
  AND (s.available_at IS NULL OR s.available_at <= COALESCE(%(now)s::timestamptz, now()))
  AND NOT EXISTS (
      SELECT 1 FROM unnest(t.dependant_on) AS dependency(id)
      LEFT JOIN tasks d ON d.id = dependency.id
      WHERE d.status IS DISTINCT FROM 'Complete')
LIMIT 1

-- name: count_ready
SELECT COUNT(*) AS n FROM tasks t
LEFT JOIN headless.task_state s ON s.task_id = t.id
WHERE t.status = 'Queued'
  AND (%(task_types)s::text[] IS NULL OR t.task_type = ANY(%(task_types)s::text[]))
  AND (s.available_at IS NULL OR s.available_at <= COALESCE(%(now)s::timestamptz, now()))
  AND NOT EXISTS (
      SELECT 1 FROM unnest(t.dependant_on) AS dependency(id)
      LEFT JOIN tasks d ON d.id = dependency.id
      WHERE d.status IS DISTINCT FROM 'Complete')

-- name: classify_unclassified
-- Nothing to classify: readiness is computed by the claim itself.
SELECT 1 WHERE false

-- name: unblock_task
SELECT 1 WHERE false

-- name: classify_dependents_of
SELECT 1 WHERE false

-- name: classify_blocked
SELECT 1 WHERE false

-- name: renew_lease
UPDATE headless.task_state s
SET lease_expires_at
        = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s::double precision),
    heartbeat_at = COALESCE(%(now)s::timestamptz, now())
FROM tasks t
WHERE s.task_id = t.id AND t.id = %(task_id)s::uuid AND t.worker_id = %(worker_id)s AND t.status = 'In Progress'
  AND NOT s.awaiting_children
RETURNING s.task_id::text AS id

-- name: set_progress
UPDATE headless.task_state s SET progress = %(progress)s
FROM tasks t
WHERE s.task_id = t.id AND t.id = %(task_id)s::uuid AND t.worker_id = %(worker_id)s AND t.status = 'In Progress'

-- name: mark_complete
-- application_name: complete_task
-- Our result is merged into result_data: Reigh's own keys there (billing, follow-ups) stay.
WITH done AS (
    UPDATE tasks
    SET status = 'Complete', output_location = %(output_location)s,
        result_data = COALESCE(result_data, '{}'::jsonb) || COALESCE(%(result)s::jsonb, '{}'::jsonb),
        error_message = NULL, generation_processed_at = now(), updated_at = now()
    WHERE id = %(task_id)s::uuid AND status IN ('Queued', 'In Progress')
    RETURNING id
), cleared AS (
    UPDATE headless.task_state
    SET lease_expires_at = NULL, available_at = NULL, awaiting_children = false
    WHERE task_id IN (SELECT id FROM done)
)
SELECT id::text AS id FROM done

-- name: requeue_after_failure
-- application_name: claim_task
WITH requeued AS (
    UPDATE tasks
    SET status = 'Queued', attempts = attempts + 1, error_message = %(error_message)s, worker_id = NULL,
        generation_started_at = NULL, updated_at = COALESCE(%(now)s::timestamptz, now())
    WHERE id = %(task_id)s::uuid AND status = 'In Progress'
    RETURNING id
), backed_off AS (
    INSERT INTO headless.task_state (task_id, available_at)
    SELECT id, COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(delay_seconds)s::double precision)
    FROM requeued
    ON CONFLICT (task_id) DO UPDATE
    SET lease_expires_at = NULL, heartbeat_at = NULL, available_at = excluded.available_at
)
SELECT id::text AS id FROM requeued

-- name: mark_failed
-- application_name: complete_task
WITH failed AS (
    UPDATE tasks
    SET status = 'Failed', attempts = attempts + 1, error_message = %(error_message)s,
        generation_processed_at = now(), updated_at = now()
    WHERE id = %(task_id)s::uuid AND status IN ('Queued', 'In Progress')
    RETURNING id
), cleared AS (
    UPDATE headless.task_state SET lease_expires_at = NULL, available_at = NULL
    WHERE task_id IN (SELECT id FROM failed)
)
SELECT id::text AS id FROM failed

-- name: terminate_task
-- application_name: complete_task
-- A cascade: Failed or Cancelled, for tasks that have not finished yet.
WITH ended AS (
    UPDATE tasks
    SET status = %(status)s::task_status, error_message = %(error_message)s,
        generation_processed_at = now(), updated_at = now()
    WHERE id = %(task_id)s::uuid AND status IN ('Queued', 'In Progress')
    RETURNING id
), cleared AS (
    UPDATE headless.task_state SET lease_expires_at = NULL, available_at = NULL
    WHERE task_id IN (SELECT id FROM ended)
)
SELECT id::text AS id FROM ended

-- name: release_task
-- application_name: claim_task
-- Graceful shutdown: back to Queued with no attempt penalty.
WITH released AS (
    UPDATE tasks t
    SET status = 'Queued', worker_id = NULL, generation_started_at = NULL, updated_at = now()
    FROM headless.task_state s
    WHERE t.id = %(task_id)s::uuid AND s.task_id = t.id AND t.worker_id = %(worker_id)s
      AND t.status = 'In Progress' AND NOT s.awaiting_children
    RETURNING t.id
), cleared AS (
    UPDATE headless.task_state SET lease_expires_at = NULL, heartbeat_at = NULL, progress = NULL
    WHERE task_id IN (SELECT id FROM released)
)
SELECT id::text AS id FROM released

-- name: mark_awaiting_children
WITH waiting AS (
    UPDATE tasks SET worker_id = NULL, updated_at = now()
    WHERE id = %(task_id)s::uuid AND worker_id = %(worker_id)s AND status = 'In Progress'
    RETURNING id
), marked AS (
    INSERT INTO headless.task_state (task_id, awaiting_children, progress)
    SELECT id, true, %(progress)s FROM waiting
    ON CONFLICT (task_id) DO UPDATE
    SET awaiting_children = true, lease_expires_at = NULL, heartbeat_at = NULL, progress = excluded.progress
)
SELECT id::text AS id FROM waiting

-- name: complete_parent
-- application_name: complete_task
WITH done AS (
    UPDATE tasks t
    SET status = 'Complete', output_location = %(output_location)s,
        result_data = COALESCE(t.result_data, '{}'::jsonb) || COALESCE(%(result)s::jsonb, '{}'::jsonb),
        error_message = NULL, generation_processed_at = now(), updated_at = now()
    FROM headless.task_state s
    WHERE t.id = %(task_id)s::uuid AND s.task_id = t.id AND t.status = 'In Progress' AND s.awaiting_children
    RETURNING t.id
), cleared AS (
    UPDATE headless.task_state SET awaiting_children = false WHERE task_id IN (SELECT id FROM done)
)
SELECT id::text AS id FROM done

-- name: reclaim_expired
-- application_name: claim_task
-- Expired leases (or every task of %(of_worker)s, a worker that restarted): one more attempt used; Failed past the
-- cap. Only rows this queue leased or this worker id holds: Reigh's other workers' tasks are not ours to judge.
WITH expired AS (
    SELECT t.id FROM tasks t
    LEFT JOIN headless.task_state s ON s.task_id = t.id
    WHERE t.status = 'In Progress' AND NOT COALESCE(s.awaiting_children, false)
      AND ((%(of_worker)s::text IS NULL AND s.lease_expires_at IS NOT NULL
            AND s.lease_expires_at < COALESCE(%(now)s::timestamptz, now()))
           OR (%(of_worker)s::text IS NOT NULL AND t.worker_id = %(of_worker)s::text))
    FOR UPDATE OF t SKIP LOCKED
), gave_up AS (
    UPDATE tasks t
    SET attempts = t.attempts + 1, status = 'Failed',
        error_message = 'lease expired on worker ' || COALESCE(t.worker_id, '?') || '; gave up after '
            || (t.attempts + 1) || ' attempts',
        updated_at = COALESCE(%(now)s::timestamptz, now())
    FROM expired LEFT JOIN headless.task_state s ON s.task_id = expired.id
    WHERE t.id = expired.id AND t.attempts + 1 >= COALESCE(s.max_attempts, 3)
    RETURNING t.id, t.status::text AS status, t.error_message
), requeued AS (
    UPDATE tasks t
    SET attempts = t.attempts + 1, status = 'Queued',
        error_message = 'lease expired on worker ' || COALESCE(t.worker_id, '?') || ' (attempt '
            || (t.attempts + 1) || ' of ' || COALESCE(s.max_attempts, 3) || ')',
        generation_started_at = NULL, worker_id = NULL, updated_at = COALESCE(%(now)s::timestamptz, now())
    FROM expired LEFT JOIN headless.task_state s ON s.task_id = expired.id
    WHERE t.id = expired.id AND t.attempts + 1 < COALESCE(s.max_attempts, 3)
    RETURNING t.id, t.status::text AS status, t.error_message
), cleared AS (
    UPDATE headless.task_state SET lease_expires_at = NULL, heartbeat_at = NULL, available_at = NULL
    WHERE task_id IN (SELECT id FROM expired)
)
SELECT id::text AS id, status, error_message FROM gave_up
UNION ALL
SELECT id::text AS id, status, error_message FROM requeued

-- name: reset_task
-- application_name: complete_task
-- retry: a Failed or Cancelled task starts over (awaiting orchestrators go back to waiting for their children).
WITH reset AS (
    UPDATE tasks
    SET status = %(status)s::task_status, attempts = 0, error_message = NULL, worker_id = NULL,
        output_location = NULL, generation_started_at = NULL, generation_processed_at = NULL, updated_at = now()
    WHERE id = %(task_id)s::uuid AND status IN ('Failed', 'Cancelled')
    RETURNING id
), cleared AS (
    UPDATE headless.task_state
    SET lease_expires_at = NULL, heartbeat_at = NULL, available_at = NULL, progress = NULL
    WHERE task_id IN (SELECT id FROM reset)
)
SELECT id::text AS id FROM reset

-- name: count_by_type_and_status
SELECT task_type, status::text AS status, COUNT(*) AS n FROM tasks GROUP BY task_type, status ORDER BY 1, 2

-- name: oldest_queued
SELECT MIN(created_at) AS created_at FROM tasks WHERE status = 'Queued'

-- name: register_worker
-- Takes a worker id for one process (%(session_id)s): when the id is new, its last holder stopped, or the holder's
-- heartbeat is older than %(stale_seconds)s. A live holder keeps it, and so does a Reigh worker of that id with a
-- fresh heartbeat that is not ours. The Reigh row (which tasks.worker_id references) is created or re-activated
-- with the instance_type Reigh's heartbeat uses for outside workers; Reigh's metadata keys are kept.
WITH taken AS (
    INSERT INTO headless.worker_sessions (worker_id, session_id, status, last_heartbeat, current_task_id, started_at)
    SELECT %(worker_id)s, %(session_id)s, 'starting', COALESCE(%(now)s::timestamptz, now()), NULL,
           COALESCE(%(now)s::timestamptz, now())
    WHERE NOT EXISTS (
        SELECT 1 FROM workers w
        WHERE w.id = %(worker_id)s AND w.status = 'active'
          AND w.last_heartbeat
              > COALESCE(%(now)s::timestamptz, now()) - make_interval(secs => %(stale_seconds)s::double precision)
          AND NOT EXISTS (SELECT 1 FROM headless.worker_sessions o WHERE o.worker_id = w.id))
    ON CONFLICT (worker_id) DO UPDATE SET
        session_id = excluded.session_id, status = 'starting', last_heartbeat = COALESCE(%(now)s::timestamptz, now()),
        current_task_id = NULL, started_at = COALESCE(%(now)s::timestamptz, now())
    WHERE worker_sessions.status IN ('stopped', 'error')
       OR worker_sessions.last_heartbeat
          < COALESCE(%(now)s::timestamptz, now()) - make_interval(secs => %(stale_seconds)s::double precision)
       OR worker_sessions.session_id = excluded.session_id
    RETURNING worker_id
), registered AS (
    INSERT INTO workers (id, instance_type, status, last_heartbeat, metadata, created_at)
    SELECT worker_id, 'external', 'active', COALESCE(%(now)s::timestamptz, now()), %(metadata)s,
           COALESCE(%(now)s::timestamptz, now())
    FROM taken
    ON CONFLICT (id) DO UPDATE SET
        status = 'active', last_heartbeat = COALESCE(%(now)s::timestamptz, now()),
        metadata = COALESCE(workers.metadata, '{}'::jsonb) || excluded.metadata
)
SELECT worker_id AS id FROM taken

-- name: beat_worker
-- A heartbeat, only while this process still holds the id; Reigh's row says active until the worker stops, and
-- names the loaded model (workers.current_model, which Reigh's claim uses for model affinity).
WITH beat AS (
    UPDATE headless.worker_sessions
    SET status = %(status)s, last_heartbeat = COALESCE(%(now)s::timestamptz, now()),
        current_task_id = %(current_task_id)s
    WHERE worker_id = %(worker_id)s AND session_id = %(session_id)s
    RETURNING worker_id
), reigh AS (
    UPDATE workers w
    SET last_heartbeat = COALESCE(%(now)s::timestamptz, now()),
        status = CASE WHEN %(status)s::text IN ('stopped', 'error') THEN 'inactive' ELSE 'active' END,
        metadata = COALESCE(w.metadata, '{}'::jsonb) || %(metadata)s,
        current_model = COALESCE(%(metadata)s->>'current_model', w.current_model)
    FROM beat WHERE w.id = beat.worker_id
)
SELECT worker_id AS id FROM beat

-- name: get_worker
SELECT w.id, COALESCE(s.status, w.status) AS status, COALESCE(s.last_heartbeat, w.last_heartbeat) AS last_heartbeat,
       s.current_task_id, w.metadata, COALESCE(s.started_at, w.created_at) AS started_at
FROM workers w LEFT JOIN headless.worker_sessions s ON s.worker_id = w.id
WHERE w.id = %(worker_id)s

-- name: list_workers
SELECT w.id, COALESCE(s.status, w.status) AS status, COALESCE(s.last_heartbeat, w.last_heartbeat) AS last_heartbeat,
       s.current_task_id, w.metadata, COALESCE(s.started_at, w.created_at) AS started_at
FROM workers w LEFT JOIN headless.worker_sessions s ON s.worker_id = w.id
ORDER BY 6, 1
