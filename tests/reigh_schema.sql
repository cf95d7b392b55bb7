-- Reigh's tables as its migrations leave them (banodoco/reigh-app, supabase/migrations, read at commit 3a6fd3d8),
-- written by us from those facts for tests: the columns, types, defaults and constraints of the tables the worker
-- touches, and the timing trigger. Cited per table. Supabase's `auth` schema is reduced to the function the trigger
-- calls (Supabase defines auth.role() from the request's JWT claims; a plain connection has none).

CREATE SCHEMA auth;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

-- 20250100000000_create_base_schema.sql
CREATE TYPE public.task_status AS ENUM ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled');

CREATE TABLE public.users (
    id uuid PRIMARY KEY NOT NULL,
    name text,
    email text,
    api_keys jsonb,
    settings jsonb,
    credits integer NOT NULL DEFAULT 0  -- 20250113000000_add_credits_system.sql
);

CREATE TABLE public.projects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    user_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    aspect_ratio text,
    created_at timestamptz DEFAULT now() NOT NULL,
    settings jsonb
);

-- 20250203200000_create_task_types_with_run_type.sql (+ later display columns, left out)
CREATE TABLE public.task_types (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE,
    run_type text NOT NULL DEFAULT 'gpu' CHECK (run_type IN ('gpu', 'api')),
    category text NOT NULL,
    display_name text NOT NULL,
    description text,
    base_cost_per_second numeric(10, 6) NOT NULL,
    cost_factors jsonb DEFAULT '{}',
    is_active boolean DEFAULT true,
    created_at timestamptz DEFAULT now() NOT NULL,
    updated_at timestamptz DEFAULT now() NOT NULL
);
INSERT INTO public.task_types (name, run_type, category, display_name, base_cost_per_second) VALUES
    ('travel_orchestrator', 'gpu', 'orchestration', 'Travel Between Images', 0),
    ('travel_segment', 'gpu', 'generation', 'Travel Segment', 0.01),
    ('travel_stitch', 'gpu', 'processing', 'Video Stitch', 0.01),
    ('individual_travel_segment', 'gpu', 'generation', 'Individual Travel Segment', 0.01),
    ('wan_2_2_i2v', 'gpu', 'generation', 'Wan 2.2 Image to Video', 0.01),
    ('single_image', 'gpu', 'generation', 'Image Generation', 0.01),
    ('image_edit', 'gpu', 'generation', 'Image Edit', 0.01),
    ('join_clips_orchestrator', 'gpu', 'orchestration', 'Join Clips', 0);

-- 20250705000001_create_workers_table.sql, 20251222000000_add_worker_model_affinity.sql,
-- 20260121210000_make_worker_heartbeat_nullable.sql
CREATE TABLE public.workers (
    id text PRIMARY KEY,
    instance_type text NOT NULL,
    created_at timestamptz DEFAULT now() NOT NULL,
    last_heartbeat timestamptz DEFAULT NULL,
    status text DEFAULT 'active' NOT NULL CHECK (status IN ('active', 'inactive', 'terminated')),
    metadata jsonb DEFAULT '{}',
    current_model text
);
CREATE INDEX idx_workers_status ON public.workers (status);
CREATE INDEX idx_workers_last_heartbeat ON public.workers (last_heartbeat);
ALTER TABLE public.workers ENABLE ROW LEVEL SECURITY;

-- 20250100000000 (table), 20250131000100 + 20250705000001 (worker_id), 20250202000000 (attempts, error_message,
-- result_data), 20250712000001 (generation_started_at), 20250713000001 (generation_created), 20251016000000
-- (copied_from_share), 20260121000000 (dependant_on uuid[], GIN index), 20260213000000 (task_type foreign key),
-- 20260213200001 (idempotency_key)
CREATE TABLE public.tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
    task_type text NOT NULL,
    params jsonb NOT NULL,
    status public.task_status DEFAULT 'Queued' NOT NULL,
    dependant_on uuid[],
    output_location text,
    created_at timestamptz DEFAULT now() NOT NULL,
    updated_at timestamptz,
    project_id uuid NOT NULL,
    generation_processed_at timestamptz,
    worker_id text REFERENCES public.workers (id) ON DELETE SET NULL,
    attempts integer NOT NULL DEFAULT 0,
    error_message text,
    result_data jsonb DEFAULT '{}'::jsonb,
    generation_started_at timestamptz,
    generation_created boolean DEFAULT false NOT NULL,
    copied_from_share text,
    idempotency_key text
);
ALTER TABLE public.tasks ADD CONSTRAINT tasks_project_id_projects_id_fk
    FOREIGN KEY (project_id) REFERENCES public.projects (id) ON DELETE CASCADE;
ALTER TABLE public.tasks ADD CONSTRAINT tasks_task_type_fkey
    FOREIGN KEY (task_type) REFERENCES public.task_types (name);
CREATE INDEX idx_status_created ON public.tasks (status, created_at);
CREATE INDEX idx_project_status ON public.tasks (project_id, status);
CREATE INDEX idx_tasks_worker_id ON public.tasks (worker_id);
CREATE INDEX idx_tasks_queued_created ON public.tasks (created_at) WHERE status = 'Queued';
CREATE INDEX idx_tasks_dependant_on ON public.tasks USING gin (dependant_on) WHERE dependant_on IS NOT NULL;
CREATE UNIQUE INDEX idx_tasks_idempotency_key ON public.tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;

-- 20260121000000_support_multiple_dependencies.sql: Reigh's own readiness rule (the worker's claim matches it)
CREATE FUNCTION public.all_dependencies_complete(p_dependant_on uuid[]) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT p_dependant_on IS NULL
      OR cardinality(p_dependant_on) = 0
      OR NOT EXISTS (
          SELECT 1 FROM unnest(p_dependant_on) AS dep_id
          WHERE NOT EXISTS (SELECT 1 FROM public.tasks dep WHERE dep.id = dep_id AND dep.status = 'Complete'))
$$;

-- 20250113000003_protect_timing_fields.sql, redefined in 20250910220011_remove_all_remaining_security_definers.sql
CREATE FUNCTION public.prevent_timing_manipulation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF auth.role() = 'service_role' THEN
    RETURN NEW;
  END IF;
  IF current_setting('application_name', true) IN ('claim_task', 'complete_task') THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'UPDATE' AND (
    OLD.generation_started_at IS DISTINCT FROM NEW.generation_started_at OR
    OLD.generation_processed_at IS DISTINCT FROM NEW.generation_processed_at
  ) THEN
    RAISE EXCEPTION 'Timing fields can only be modified by system functions';
  END IF;
  RETURN NEW;
END;
$$;
CREATE TRIGGER prevent_timing_manipulation_trigger
    BEFORE UPDATE ON public.tasks FOR EACH ROW EXECUTE FUNCTION public.prevent_timing_manipulation();
