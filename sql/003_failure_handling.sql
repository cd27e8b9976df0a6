-- Failure handling and worker control (issue 5): retries with backoff, reschedule, delayed
-- start, claim filters per instance, a run-history row per attempt and the jobs' own logs.

-- Retry policy (from the job type, overridable per submission) and the counters it uses.
-- `run_after` is the not-before time: a submission's delayed start, a retry's backoff or a
-- reschedule's delay; the claim skips QUEUED jobs whose time has not come.
ALTER TABLE t_job_info
    ADD COLUMN max_retries     integer          NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    ADD COLUMN retry_backoff_s double precision NOT NULL DEFAULT 1 CHECK (retry_backoff_s >= 0),
    ADD COLUMN run_after       timestamptz,
    -- failed attempts retried automatically since the job was submitted or last kicked
    ADD COLUMN failures        integer          NOT NULL DEFAULT 0,
    -- Reschedule(delay) raised since the job was submitted or last kicked
    ADD COLUMN reschedules     integer          NOT NULL DEFAULT 0,
    -- when the current attempt was claimed (copied to its t_job_run row when it ends)
    ADD COLUMN claimed_at      timestamptz;

-- The scheduler sleeps until the earliest not-before time among queued jobs (instead of
-- its fallback poll): this index answers that question without a scan.
CREATE INDEX t_job_info_waiting_idx ON t_job_info (run_after)
    WHERE status = 'QUEUED' AND run_after IS NOT NULL;
-- Instances limited to some job types (`jobservice run --job-types`) find each tenant's best
-- job of those types here instead of walking the tenant's whole queue.
CREATE INDEX t_job_info_queued_class_idx
    ON t_job_info (tenant, job_class, priority DESC, queued_at, id) WHERE status = 'QUEUED';
-- Failures are found (and kicked in bulk) by error type.
CREATE INDEX t_job_info_failed_idx ON t_job_info (error_type, tenant)
    WHERE status IN ('FAILED', 'ABORTED');

-- Run history: one row per attempt, written by the trigger below in the transaction of the
-- transition that ends the attempt (final status, or QUEUED when it was retried or handed
-- back): one insert per attempt. The attempt in progress is the t_job_info row itself.
ALTER TABLE t_job_run
    ADD COLUMN claimed_at timestamptz,
    ADD COLUMN duration_s double precision;
CREATE INDEX t_job_run_error_type_idx ON t_job_run (error_type, ended_at)
    WHERE error_type IS NOT NULL;

-- Lines a job writes with ctx.log(level, message); bounded per attempt, written in batches.
CREATE TABLE t_job_log (
    id      bigserial   PRIMARY KEY,
    job_id  uuid        NOT NULL REFERENCES t_job_info (id) ON DELETE CASCADE,
    attempt integer     NOT NULL,
    at      timestamptz NOT NULL,
    level   text        NOT NULL,
    message text        NOT NULL
);
CREATE INDEX t_job_log_job_idx ON t_job_log (job_id, id);

-- The before-write trigger of 001, plus the run history (a row per attempt) and the retry
-- bookkeeping: a new attempt starts clean (error, result, not-before time), a kick (retry
-- control) also resets the retry and reschedule counters.
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
        IF NEW.percent_completed IS DISTINCT FROM OLD.percent_completed THEN
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
            END IF;
            NEW.instance_id := NULL;
            NEW.stop_requested := false;
        WHEN 'TO_BE_RUN' THEN
            NEW.claimed_at := v_now;
            -- the previous attempt's outcome (kept in t_job_run) is not this attempt's
            NEW.error_type := NULL; NEW.error_message := NULL; NEW.stack_trace := NULL;
            NEW.result := NULL; NEW.run_after := NULL; NEW.percent_completed := 0;
            NEW.started_at := NULL; NEW.ended_at := NULL;
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

-- The claim of 001 with two changes (the rest is unchanged):
--  1. a QUEUED job whose `run_after` lies in the future is skipped (not-before time);
--  2. optional filters of the claiming instance (`jobservice run --tenants/--exclude-tenants/
--     --job-types`): tenants are filtered on the list of tenants with work (still a loose
--     index scan), job types in the per-tenant lookup, which then uses
--     t_job_info_queued_class_idx.
-- It also returns the retry policy and counters of each claimed job. The signature changes,
-- so the old function is dropped.
DROP FUNCTION jobservice_claim_jobs(text, integer);
CREATE FUNCTION jobservice_claim_jobs(p_instance text, p_limit integer,
                                      p_tenants text[] DEFAULT NULL,
                                      p_exclude_tenants text[] DEFAULT NULL,
                                      p_job_types text[] DEFAULT NULL)
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer)
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
               j.max_retries, j.retry_backoff_s, j.failures, j.reschedules
          FROM unnest(v_ids || v_expired) WITH ORDINALITY AS c(id, ord)
          JOIN t_job_info j ON j.id = c.id
         ORDER BY c.ord;
END
$$;
