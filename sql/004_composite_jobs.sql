-- Composite jobs: owner and context on jobs and runs, localized messages, selected elements
-- and environment, dependencies (depends_on) and on_success submissions.

ALTER TABLE t_job_info
    ADD COLUMN context           text  NOT NULL DEFAULT 'admin',
    ADD COLUMN selected_elements jsonb,
    ADD COLUMN environment       jsonb,
    -- NULL: no dependencies; waiting: PENDING until every dependency SUCCEEDED; satisfied:
    -- they all did; failed: one ended FAILED/ABORTED, so this job ended ABORTED.
    ADD COLUMN dependency_state  text CHECK (dependency_state IN ('waiting', 'satisfied', 'failed')),
    -- The job's current message (ctx.message): a catalog key and its parameters, untranslated.
    ADD COLUMN message_key       text,
    ADD COLUMN message_params    jsonb;

-- `jobservice jobs list` pages through the newest jobs first.
CREATE INDEX t_job_info_created_idx ON t_job_info (created_at DESC, id DESC);

-- Owner and context are kept on each run too (they never change on a job).
ALTER TABLE t_job_run ADD COLUMN owner text, ADD COLUMN context text;

CREATE FUNCTION jobservice_fill_run_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.owner IS NULL OR NEW.context IS NULL THEN
        SELECT coalesce(NEW.owner, j.owner), coalesce(NEW.context, j.context)
          INTO NEW.owner, NEW.context
          FROM t_job_info j WHERE j.id = NEW.job_id;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER t_job_run_fill_owner
    BEFORE INSERT ON t_job_run
    FOR EACH ROW EXECUTE FUNCTION jobservice_fill_run_owner();

-- Lines written by ctx.message keep their key and parameters (t_job_log is from 003), so
-- that they can be rendered again in another locale.
ALTER TABLE t_job_log
    ADD COLUMN message_key    text,
    ADD COLUMN message_params jsonb;

-- job_id waits for depends_on.
CREATE TABLE t_job_dependency (
    job_id     uuid NOT NULL REFERENCES t_job_info (id) ON DELETE CASCADE,
    depends_on uuid NOT NULL REFERENCES t_job_info (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX t_job_dependency_depends_on_idx ON t_job_dependency (depends_on);

-- Submissions (validated and normalized at submission, ids assigned) created when job_id
-- SUCCEEDED, in position order.
CREATE TABLE t_job_on_success (
    job_id     uuid    NOT NULL REFERENCES t_job_info (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    submission jsonb   NOT NULL,
    PRIMARY KEY (job_id, position)
);

-- Store one normalized submission (see jobservice.submission: id, tenant, job_class, status,
-- priority, description, owner, expiration_date, at_most_once, max_retries, retry_backoff_s,
-- run_after, context, parameters,
-- selected_elements, environment, depends_on, on_success), with p_parent as an extra
-- dependency (an on_success submission of p_parent). Resubmitting an id changes nothing.
--
-- The dependencies are locked FOR SHARE before their status is read: a concurrent final
-- transition of one of them either committed before (and is seen here) or waits for this
-- transaction (and its trigger then sees this job's dependency rows). So no dependent is
-- left waiting for a dependency that already ended.
CREATE FUNCTION jobservice_submit_job(p_spec jsonb, p_parent uuid DEFAULT NULL)
RETURNS TABLE (id uuid, status text, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id        uuid := (p_spec ->> 'id')::uuid;
    v_deps      uuid[];
    v_found     integer;
    v_unfinished integer;
    v_failed    t_job_info;
    v_status    text := coalesce(p_spec ->> 'status', 'QUEUED');
    v_dep_state text;
    v_existing  text;
BEGIN
    SELECT j.status INTO v_existing FROM t_job_info j WHERE j.id = v_id;
    IF FOUND THEN
        id := v_id; status := v_existing; created := false;
        RETURN NEXT;
        RETURN;
    END IF;
    v_deps := ARRAY(
        SELECT DISTINCT d.value::uuid
          FROM jsonb_array_elements_text(coalesce(p_spec -> 'depends_on', '[]'::jsonb)) AS d(value)
        UNION
        SELECT p_parent WHERE p_parent IS NOT NULL);
    IF cardinality(v_deps) > 0 THEN
        PERFORM 1 FROM t_job_info j WHERE j.id = ANY (v_deps) ORDER BY j.id FOR SHARE;
        SELECT count(*), count(*) FILTER (WHERE j.status <> 'SUCCEEDED')
          INTO v_found, v_unfinished
          FROM t_job_info j WHERE j.id = ANY (v_deps);
        IF v_found < cardinality(v_deps) THEN
            RAISE EXCEPTION 'jobservice: job % depends on a job that does not exist', v_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        SELECT * INTO v_failed FROM t_job_info j
         WHERE j.id = ANY (v_deps) AND j.status IN ('FAILED', 'ABORTED')
         ORDER BY j.id LIMIT 1;
        IF v_failed.id IS NOT NULL THEN
            v_status := 'PENDING';  -- then ABORTED below, an event each
            v_dep_state := 'waiting';
        ELSIF v_unfinished = 0 THEN
            v_status := 'QUEUED';
            v_dep_state := 'satisfied';
        ELSE
            v_status := 'PENDING';
            v_dep_state := 'waiting';
        END IF;
    END IF;

    INSERT INTO t_job_info (id, tenant, job_class, status, priority, description, owner,
                            expiration_date, at_most_once, max_retries, retry_backoff_s,
                            run_after, context, selected_elements, environment,
                            dependency_state)
    VALUES (v_id, p_spec ->> 'tenant', p_spec ->> 'job_class', v_status,
            coalesce((p_spec ->> 'priority')::integer, 0), p_spec ->> 'description',
            p_spec ->> 'owner', (p_spec ->> 'expiration_date')::timestamptz,
            coalesce((p_spec ->> 'at_most_once')::boolean, false),
            coalesce((p_spec ->> 'max_retries')::integer, 0),
            coalesce((p_spec ->> 'retry_backoff_s')::double precision, 1),
            (p_spec ->> 'run_after')::timestamptz,
            coalesce(p_spec ->> 'context', 'admin'), p_spec -> 'selected_elements',
            p_spec -> 'environment', v_dep_state);
    INSERT INTO t_job_parameters (job_id, name, value)
    SELECT v_id, p.key, p.value
      FROM jsonb_each(coalesce(p_spec -> 'parameters', '{}'::jsonb)) AS p(key, value);
    INSERT INTO t_job_dependency (job_id, depends_on) SELECT v_id, d FROM unnest(v_deps) AS d;
    INSERT INTO t_job_on_success (job_id, position, submission)
    SELECT v_id, s.ord, s.value
      FROM jsonb_array_elements(coalesce(p_spec -> 'on_success', '[]'::jsonb))
           WITH ORDINALITY AS s(value, ord);

    IF v_failed.id IS NOT NULL THEN
        UPDATE t_job_info SET status = 'ABORTED', dependency_state = 'failed',
               error_type = 'dependency_failed',
               error_message = format('dependency %s ended %s', v_failed.id, v_failed.status)
         WHERE t_job_info.id = v_id;
        v_status := 'ABORTED';
    ELSIF v_status = 'QUEUED' THEN
        PERFORM pg_notify('jobservice_work', '');
    END IF;
    id := v_id; status := v_status; created := true;
    RETURN NEXT;
END
$$;

-- A job reached a final status: resolve what waits for it, in the same transaction.
-- SUCCEEDED: create its on_success submissions; dependents whose dependencies all SUCCEEDED
-- become QUEUED (also dependents that had ended ABORTED `dependency_failed` and whose failed
-- dependency was retried and has now succeeded). FAILED/ABORTED: waiting dependents end
-- ABORTED `dependency_failed`, and through this same trigger their own dependents, down the
-- chain. Each dependent is locked before its dependencies are read, so two dependencies
-- succeeding at once in two transactions cannot both miss the other's success.
CREATE FUNCTION jobservice_resolve_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_dependent uuid;
    v_child     jsonb;
    v_queued    boolean := false;
BEGIN
    IF NEW.status = 'SUCCEEDED' THEN
        FOR v_child IN SELECT s.submission FROM t_job_on_success s
                        WHERE s.job_id = NEW.id ORDER BY s.position LOOP
            PERFORM jobservice_submit_job(v_child, NEW.id);
        END LOOP;
        FOR v_dependent IN SELECT d.job_id FROM t_job_dependency d
                            WHERE d.depends_on = NEW.id ORDER BY d.job_id LOOP
            PERFORM 1 FROM t_job_info j WHERE j.id = v_dependent FOR UPDATE;
            UPDATE t_job_info j SET status = 'QUEUED', dependency_state = 'satisfied'
             WHERE j.id = v_dependent
               AND ((j.status = 'PENDING' AND j.dependency_state = 'waiting')
                    OR (j.status = 'ABORTED' AND j.error_type = 'dependency_failed'))
               AND NOT EXISTS (SELECT 1 FROM t_job_dependency o
                                 JOIN t_job_info oj ON oj.id = o.depends_on
                                WHERE o.job_id = v_dependent AND oj.status <> 'SUCCEEDED');
            v_queued := v_queued OR FOUND;
        END LOOP;
        IF v_queued THEN
            PERFORM pg_notify('jobservice_work', '');
        END IF;
    ELSE
        UPDATE t_job_info j
           SET status = 'ABORTED', dependency_state = 'failed', error_type = 'dependency_failed',
               error_message = format('dependency %s ended %s', NEW.id, NEW.status)
         WHERE j.id IN (SELECT d.job_id FROM t_job_dependency d WHERE d.depends_on = NEW.id)
           AND j.status = 'PENDING' AND j.dependency_state = 'waiting';
    END IF;
    RETURN NULL;
END
$$;

-- Named after the event triggers (alphabetically): a job's own event is in the outbox before
-- the events of the dependents it releases.
CREATE TRIGGER t_job_info_resolve_dependents
    AFTER UPDATE ON t_job_info
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('SUCCEEDED', 'FAILED', 'ABORTED'))
    EXECUTE FUNCTION jobservice_resolve_dependents();

-- Complete new definition (003's, with two additions): a change of the current message is
-- numbered like a progress change; a new attempt and a kick clear the message.
CREATE OR REPLACE FUNCTION jobservice_before_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    NEW.updated_at := v_now;
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := v_now;
        NEW.transition_seq := 1;
        IF NEW.status = 'QUEUED' THEN NEW.queued_at := v_now; END IF;
        RETURN NEW;
    END IF;
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        IF NEW.percent_completed IS DISTINCT FROM OLD.percent_completed
           OR NEW.message_key IS DISTINCT FROM OLD.message_key
           OR NEW.message_params IS DISTINCT FROM OLD.message_params THEN
            NEW.transition_seq := OLD.transition_seq + 1;  -- progress events are numbered too
        END IF;
        RETURN NEW;
    END IF;
    IF NOT jobservice_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'jobservice: transition % -> % of job % is not allowed',
            OLD.status, NEW.status, OLD.id USING ERRCODE = 'check_violation';
    END IF;
    NEW.transition_seq := OLD.transition_seq + 1;
    -- The attempt in hand ends: its history row. Going back to QUEUED with an error is an
    -- automatic retry (the attempt FAILED); without one it was handed back (reschedule,
    -- worker abort, shutdown, rescue) and the attempt's status is QUEUED.
    IF OLD.status IN ('TO_BE_RUN', 'RUNNING') AND NEW.status NOT IN ('TO_BE_RUN', 'RUNNING') THEN
        INSERT INTO t_job_run (job_id, attempt, instance_id, status, claimed_at,
                               started_at, ended_at, duration_s, error_type,
                               error_message, stack_trace)
        VALUES (OLD.id, OLD.attempt, OLD.instance_id,
                CASE WHEN NEW.status = 'QUEUED' AND NEW.error_type IS NOT NULL
                     THEN 'FAILED' ELSE NEW.status END,
                OLD.claimed_at, OLD.started_at, v_now,
                extract(epoch FROM v_now - coalesce(OLD.started_at, OLD.claimed_at)),
                NEW.error_type, NEW.error_message, NEW.stack_trace)
        ON CONFLICT (job_id, attempt) DO UPDATE
            SET instance_id = EXCLUDED.instance_id, status = EXCLUDED.status,
                claimed_at = EXCLUDED.claimed_at, started_at = EXCLUDED.started_at,
                ended_at = EXCLUDED.ended_at, duration_s = EXCLUDED.duration_s,
                error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message,
                stack_trace = EXCLUDED.stack_trace;
    END IF;
    CASE NEW.status
        WHEN 'QUEUED' THEN
            NEW.queued_at := v_now;
            IF OLD.status IN ('SUCCEEDED', 'FAILED', 'ABORTED') THEN
                -- attempts that ended before the history existed (or never ran) keep a row
                IF OLD.attempt > 0 THEN
                    INSERT INTO t_job_run (job_id, attempt, instance_id, status, started_at,
                                           ended_at, error_type, error_message, stack_trace)
                    VALUES (OLD.id, OLD.attempt, OLD.instance_id, OLD.status, OLD.started_at,
                            OLD.ended_at, OLD.error_type, OLD.error_message, OLD.stack_trace)
                    ON CONFLICT (job_id, attempt) DO NOTHING;
                END IF;
                NEW.error_type := NULL; NEW.error_message := NULL; NEW.stack_trace := NULL;
                NEW.result := NULL; NEW.ended_at := NULL; NEW.started_at := NULL;
                NEW.percent_completed := 0;
                NEW.failures := 0; NEW.reschedules := 0;  -- a kick gives a fresh budget
                NEW.message_key := NULL; NEW.message_params := NULL;
            END IF;
            NEW.instance_id := NULL;
            NEW.stop_requested := false;
        WHEN 'TO_BE_RUN' THEN
            NEW.claimed_at := v_now;
            -- the previous attempt's outcome (kept in t_job_run) is not this attempt's
            NEW.error_type := NULL; NEW.error_message := NULL; NEW.stack_trace := NULL;
            NEW.result := NULL; NEW.run_after := NULL; NEW.percent_completed := 0;
            NEW.started_at := NULL; NEW.ended_at := NULL;
            NEW.message_key := NULL; NEW.message_params := NULL;
        WHEN 'RUNNING' THEN
            NEW.started_at := v_now;
        WHEN 'SUCCEEDED' THEN
            NEW.ended_at := v_now;
            NEW.percent_completed := 100;
        WHEN 'FAILED', 'ABORTED' THEN
            NEW.ended_at := v_now;
        ELSE NULL;
    END CASE;
    RETURN NEW;
END
$$;

-- Complete new definition (from 001): events also carry the job's context and its current
-- message (untranslated key and parameters). The fields of CONTRACT section 5 are unchanged.
CREATE OR REPLACE FUNCTION jobservice_after_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_prev     text;
    v_kind     text;
    v_event_id uuid := gen_random_uuid();
    v_error    jsonb;
    v_message  jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_kind := lower(NEW.status);
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        v_prev := OLD.status;
        v_kind := lower(NEW.status);
    ELSE
        v_prev := OLD.status;
        v_kind := 'progress';
    END IF;
    IF NEW.error_type IS NOT NULL THEN
        v_error := jsonb_build_object('type', NEW.error_type, 'message', NEW.error_message,
                                      'stack_trace', NEW.stack_trace);
    END IF;
    IF NEW.message_key IS NOT NULL THEN
        v_message := jsonb_build_object('key', NEW.message_key,
                                        'params', coalesce(NEW.message_params, '{}'::jsonb));
    END IF;
    INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
    VALUES (v_event_id, NEW.id, NEW.transition_seq, NEW.tenant || '.' || v_kind,
            jsonb_build_object(
                'event_id', v_event_id,
                'job_id', NEW.id,
                'tenant', NEW.tenant,
                'job_class', NEW.job_class,
                'status', NEW.status,
                'previous_status', v_prev,
                'percent_completed', NEW.percent_completed,
                'at', to_char(NEW.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'owner', NEW.owner,
                'error', v_error,
                'result', NEW.result,
                'context', NEW.context,
                'message', v_message));
    RETURN NULL;
END
$$;

DROP TRIGGER t_job_info_event_on_change ON t_job_info;
CREATE TRIGGER t_job_info_event_on_change
    AFTER UPDATE ON t_job_info
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.percent_completed IS DISTINCT FROM NEW.percent_completed
          OR OLD.message_key IS DISTINCT FROM NEW.message_key
          OR OLD.message_params IS DISTINCT FROM NEW.message_params)
    EXECUTE FUNCTION jobservice_after_job_write();

-- Complete new definition (003's, whose body is unchanged but for the returned columns):
-- the claim also returns what a run needs of a composite job.
DROP FUNCTION jobservice_claim_jobs(text, integer, text[], text[], text[]);
CREATE FUNCTION jobservice_claim_jobs(p_instance text, p_limit integer,
                                      p_tenants text[] DEFAULT NULL,
                                      p_exclude_tenants text[] DEFAULT NULL,
                                      p_job_types text[] DEFAULT NULL)
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids     uuid[] := '{}';
    v_expired uuid[] := '{}';
    v_active  text[];
    v_next    text[];
    v_served  text[] := '{}';
    v_tenant  text;
    v_job     t_job_info;
    v_claimed integer := 0;
BEGIN
    IF p_limit <= 0 OR NOT jobservice_may_claim(p_instance) THEN
        RETURN;
    END IF;
    -- One claimer at a time across instances, so the round robin is global. Held for the
    -- (short) claim transaction only.
    PERFORM pg_advisory_xact_lock(7310001);

    WITH RECURSIVE queued_tenants AS (
        (SELECT j.tenant FROM t_job_info j WHERE j.status = 'QUEUED' ORDER BY j.tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant FROM t_job_info j
                 WHERE j.status = 'QUEUED' AND j.tenant > q.tenant
                 ORDER BY j.tenant LIMIT 1)
          FROM queued_tenants q WHERE q.tenant IS NOT NULL
    )
    SELECT array_agg(q.tenant ORDER BY t.last_turn NULLS FIRST, q.tenant)
      INTO v_active
      FROM queued_tenants q LEFT JOIN t_tenant_turn t ON t.tenant = q.tenant
     WHERE q.tenant IS NOT NULL
       -- [issue 5] this instance's tenant filters
       AND (p_tenants IS NULL OR q.tenant = ANY (p_tenants))
       AND (p_exclude_tenants IS NULL OR q.tenant <> ALL (p_exclude_tenants));

    WHILE v_claimed < p_limit AND coalesce(cardinality(v_active), 0) > 0 LOOP
        v_next := '{}';
        FOREACH v_tenant IN ARRAY v_active LOOP
            EXIT WHEN v_claimed >= p_limit;
            LOOP
                -- [issue 5] not before run_after; only the instance's job types, if any
                -- (two statements so that each gets the plan of its own index)
                IF p_job_types IS NULL THEN
                    SELECT * INTO v_job FROM t_job_info j
                     WHERE j.status = 'QUEUED' AND j.tenant = v_tenant
                       AND (j.run_after IS NULL OR j.run_after <= clock_timestamp())
                     ORDER BY j.priority DESC, j.queued_at, j.id
                     LIMIT 1 FOR UPDATE SKIP LOCKED;
                ELSE
                    SELECT * INTO v_job FROM t_job_info j
                     WHERE j.status = 'QUEUED' AND j.tenant = v_tenant
                       AND j.job_class = ANY (p_job_types)
                       AND (j.run_after IS NULL OR j.run_after <= clock_timestamp())
                     ORDER BY j.priority DESC, j.queued_at, j.id
                     LIMIT 1 FOR UPDATE SKIP LOCKED;
                END IF;
                EXIT WHEN NOT FOUND;
                IF v_job.expiration_date IS NOT NULL AND v_job.expiration_date <= clock_timestamp() THEN
                    UPDATE t_job_info SET status = 'FAILED', error_type = 'expired',
                           error_message = 'expired at ' || v_job.expiration_date || ' before it could run'
                     WHERE id = v_job.id;
                    v_expired := array_append(v_expired, v_job.id);
                    CONTINUE;
                END IF;
                UPDATE t_job_info SET status = 'TO_BE_RUN', instance_id = p_instance,
                       attempt = attempt + 1
                 WHERE id = v_job.id;
                v_ids := array_append(v_ids, v_job.id);
                v_claimed := v_claimed + 1;
                v_next := array_append(v_next, v_tenant);
                v_served := array_append(v_served, v_tenant);
                EXIT;
            END LOOP;
        END LOOP;
        v_active := v_next;
    END LOOP;

    INSERT INTO t_tenant_turn (tenant, last_turn)
    SELECT s.tenant, nextval('t_tenant_turn_seq')
      FROM (SELECT u.tenant, max(u.ord) AS ord
              FROM unnest(v_served) WITH ORDINALITY AS u(tenant, ord)
             GROUP BY u.tenant) s
     ORDER BY s.ord
    ON CONFLICT (tenant) DO UPDATE SET last_turn = EXCLUDED.last_turn;

    RETURN QUERY
        SELECT j.id, j.status, j.tenant, j.job_class, j.priority, j.owner, j.attempt,
               j.created_at, j.queued_at,
               (SELECT jsonb_object_agg(p.name, p.value) FROM t_job_parameters p
                 WHERE p.job_id = j.id),
               j.max_retries, j.retry_backoff_s, j.failures, j.reschedules,
               j.context, j.selected_elements, j.environment
          FROM unnest(v_ids || v_expired) WITH ORDINALITY AS c(id, ord)
          JOIN t_job_info j ON j.id = c.id
         ORDER BY c.ord;
END
$$;
