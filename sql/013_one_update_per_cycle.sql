-- Throughput (issue 7): a pool's cycle (final writes + next claim) is one UPDATE.
--
-- With the default pool of 8, each `jobservice_finish_and_claim` call carries ~8 jobs, and a
-- fixed cost per call dominated its database time: a database-only loop measured 1.5-1.9 ms
-- of backend CPU per call plus 0.12-0.17 ms per job (2-core Xeon, 2026-11-29). Most of the
-- fixed part was paid twice per call: the final writes and the claim were two UPDATEs, so the
-- statement-level event trigger fired twice (~0.45 ms a firing: disabling it cut the call
-- from 2.9 to 2.1 ms), the dependents trigger twice, and the call went through three nested
-- PL/pgSQL layers (finish_and_claim -> claim_and_start -> claim_jobs), each materializing
-- its rows; two of the statements were also planned anew on every call (custom plans).
--
-- Now:
-- - jobservice_pick_jobs is the fair pick of 012's claim (tenant walk, per-tenant pick with
--   SKIP LOCKED, expired jobs failed, tenant turns moved), without the claim's UPDATE;
--   jobservice_claim_jobs is the lease check, the pick, its UPDATE and its rows, as before.
-- - jobservice_finish_and_claim picks first, then writes the final states of its runs and
--   claims the picked jobs in one UPDATE (one firing of each statement trigger, one event
--   batch), and returns the rows itself. A run that goes back to the queue (retry,
--   reschedule) is no longer claimable by the same call; its NOTIFY wakes the claimers.
-- - Both run with generic plans only (their statements' plans are alike for any argument).
-- - A statement's events put the ends of runs before the claims (last function below).

CREATE FUNCTION jobservice_pick_jobs(p_limit integer, p_tenants text[],
                                     p_exclude_tenants text[], p_job_types text[],
                                     OUT o_picked uuid[], OUT o_expired uuid[])
LANGUAGE plpgsql
-- no SET clauses: it runs with its callers' (claim_jobs, finish_and_claim: index plans only,
-- generic plans), which spares a settings frame per call
AS $$
#variable_conflict use_column
DECLARE
    v_picked     uuid[] := '{}';
    v_expired    uuid[] := '{}';
    v_active     text[];
    v_next       text[];
    v_served     text[] := '{}';
    v_tenant     text;
    v_id         uuid;
    v_expiration timestamptz;
    v_now        timestamptz := clock_timestamp();
BEGIN
    -- 012's claim, up to its UPDATE: the tenants with queued work, least recently served
    -- first, then one job per tenant per round (FOR UPDATE SKIP LOCKED: a job another claim
    -- holds is passed over), expired jobs failed on the way, the served tenants' turns moved
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
       AND (p_tenants IS NULL OR q.tenant = ANY (p_tenants))
       AND (p_exclude_tenants IS NULL OR q.tenant <> ALL (p_exclude_tenants));

    WHILE cardinality(v_picked) < p_limit AND coalesce(cardinality(v_active), 0) > 0 LOOP
        v_next := '{}';
        FOREACH v_tenant IN ARRAY v_active LOOP
            EXIT WHEN cardinality(v_picked) >= p_limit;
            LOOP
                IF p_job_types IS NULL THEN
                    SELECT j.id, j.expiration_date INTO v_id, v_expiration FROM t_job_info j
                     WHERE j.status = 'QUEUED' AND j.tenant = v_tenant
                       AND (j.run_after IS NULL OR j.run_after <= v_now)
                       AND j.id <> ALL (v_picked) AND j.id <> ALL (v_expired)
                     ORDER BY j.priority DESC, j.queued_at, j.id
                     LIMIT 1
                       FOR UPDATE OF j SKIP LOCKED;
                ELSE
                    SELECT j.id, j.expiration_date INTO v_id, v_expiration FROM t_job_info j
                     WHERE j.status = 'QUEUED' AND j.tenant = v_tenant
                       AND j.job_class = ANY (p_job_types)
                       AND (j.run_after IS NULL OR j.run_after <= v_now)
                       AND j.id <> ALL (v_picked) AND j.id <> ALL (v_expired)
                     ORDER BY j.priority DESC, j.queued_at, j.id
                     LIMIT 1
                       FOR UPDATE OF j SKIP LOCKED;
                END IF;
                EXIT WHEN NOT FOUND;
                IF v_expiration IS NOT NULL AND v_expiration <= v_now THEN
                    v_expired := v_expired || v_id;
                    CONTINUE;
                END IF;
                v_picked := v_picked || v_id;
                v_next := v_next || v_tenant;
                v_served := v_served || v_tenant;
                EXIT;
            END LOOP;
        END LOOP;
        v_active := v_next;
    END LOOP;

    IF cardinality(v_expired) > 0 THEN
        WITH failed AS (
            UPDATE t_job_info j SET status = 'FAILED', error_type = 'expired',
                   error_message = 'expired at ' || j.expiration_date || ' before it could run'
             WHERE j.id = ANY (v_expired) AND j.status || '' = 'QUEUED'  -- 012: the pkey
            RETURNING j.id
        )
        SELECT coalesce(array_agg(f.id ORDER BY array_position(v_expired, f.id)), '{}')
          INTO v_expired FROM failed f;
    END IF;

    IF cardinality(v_served) > 0 THEN
        WITH served AS (
            SELECT s.tenant, nextval('t_tenant_turn_seq') AS turn
              FROM (SELECT u.tenant, max(u.ord) AS ord
                      FROM unnest(v_served) WITH ORDINALITY AS u(tenant, ord)
                     GROUP BY u.tenant) s
             ORDER BY s.ord
        ), free AS (
            SELECT t.tenant FROM t_tenant_turn t
             WHERE t.tenant IN (SELECT served.tenant FROM served)
               FOR UPDATE SKIP LOCKED
        ), moved AS (
            UPDATE t_tenant_turn t SET last_turn = served.turn
              FROM served
             WHERE t.tenant = served.tenant AND t.tenant IN (SELECT free.tenant FROM free)
            RETURNING t.tenant
        )
        INSERT INTO t_tenant_turn (tenant, last_turn)
        SELECT served.tenant, served.turn FROM served
         WHERE NOT EXISTS (SELECT 1 FROM t_tenant_turn t WHERE t.tenant = served.tenant)
         ORDER BY served.tenant  -- two claims adding the same new tenants wait in one order
        ON CONFLICT (tenant) DO NOTHING;
    END IF;

    o_picked := v_picked;
    o_expired := v_expired;
END
$$;

-- The rows a claim returns: its claimed jobs, then the expired ones, in that order.
CREATE FUNCTION jobservice_claimed_rows(p_ids uuid[])
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb)
LANGUAGE sql STABLE AS $$
    SELECT j.id, j.status, j.tenant, j.job_class, j.priority, j.owner, j.attempt,
           j.created_at, j.queued_at,
           (SELECT jsonb_object_agg(p.name, p.value) FROM t_job_parameters p
             WHERE p.job_id = j.id),
           j.max_retries, j.retry_backoff_s, j.failures, j.reschedules,
           j.context, j.selected_elements, j.environment
      FROM unnest(p_ids) WITH ORDINALITY AS c(id, ord)
      JOIN t_job_info j ON j.id = c.id
     ORDER BY c.ord
$$;

-- Complete new definition (012's): the same claim, its pick in jobservice_pick_jobs.
CREATE OR REPLACE FUNCTION jobservice_claim_jobs(p_instance text, p_limit integer,
                                                 p_tenants text[] DEFAULT NULL,
                                                 p_exclude_tenants text[] DEFAULT NULL,
                                                 p_job_types text[] DEFAULT NULL)
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_sort = off SET jit = off SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_picked  uuid[];
    v_expired uuid[];
    v_ids     uuid[] := '{}';
BEGIN
    IF p_limit <= 0 OR NOT jobservice_may_claim(p_instance) THEN
        RETURN;
    END IF;
    SELECT k.o_picked, k.o_expired INTO v_picked, v_expired
      FROM jobservice_pick_jobs(p_limit, p_tenants, p_exclude_tenants, p_job_types) k;
    IF cardinality(v_picked) > 0 THEN
        WITH claimed AS (
            UPDATE t_job_info j SET status = 'TO_BE_RUN', instance_id = p_instance,
                   attempt = j.attempt + 1
             WHERE j.id = ANY (v_picked) AND j.status || '' = 'QUEUED'  -- 012: the pkey
            RETURNING j.id
        )
        SELECT coalesce(array_agg(c.id ORDER BY array_position(v_picked, c.id)), '{}')
          INTO v_ids FROM claimed c;
    END IF;
    RETURN QUERY SELECT * FROM jobservice_claimed_rows(v_ids || v_expired);
END
$$;

-- Complete new definition (005's): pick, then the final writes and the claim in one UPDATE.
-- Rows: the claimed jobs (finished = false; RUNNING when their class is in p_runnable,
-- TO_BE_RUN otherwise), the expired ones met (FAILED), then the runs whose final write
-- applied (finished = true, id only).
CREATE OR REPLACE FUNCTION jobservice_finish_and_claim(
    p_instance text, p_ids uuid[], p_attempts integer[], p_statuses text[],
    p_percents integer[], p_error_types text[], p_error_messages text[],
    p_stack_traces text[], p_results text[], p_delays double precision[],
    p_failed integer[], p_rescheduled integer[], p_message_keys text[],
    p_message_params text[], p_limit integer, p_tenants text[], p_exclude_tenants text[],
    p_job_types text[], p_runnable text[])
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb, finished boolean)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_sort = off SET jit = off SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_picked   uuid[] := '{}';
    v_expired  uuid[] := '{}';
    v_claims   integer;
    v_claimed  uuid[];
    v_finished uuid[];
    v_requeued boolean;
BEGIN
    IF p_limit > 0 AND jobservice_may_claim(p_instance) THEN
        SELECT k.o_picked, k.o_expired INTO v_picked, v_expired
          FROM jobservice_pick_jobs(p_limit, p_tenants, p_exclude_tenants, p_job_types) k;
    END IF;
    v_claims := cardinality(v_picked);
    IF v_claims > 0 THEN
        -- the picked jobs of these classes start in the same update (008's trigger)
        PERFORM set_config('jobservice.start_classes', coalesce(p_runnable, '{}')::text, true);
    END IF;
    -- A claim row is (id, no attempt, 'TO_BE_RUN', no outcome, next_attempt 1): the SET
    -- list below leaves such a row's fields as they are (the row trigger resets a claimed
    -- job's outcome fields) but for the status, instance and attempt.
    WITH changed AS (
        UPDATE t_job_info AS j
           SET status = f.status,
               instance_id = p_instance,
               attempt = j.attempt + f.next_attempt,
               percent_completed = coalesce(f.percent, j.percent_completed),
               error_type = f.error_type,
               error_message = f.error_message,
               stack_trace = f.stack_trace,
               result = f.result::jsonb,
               run_after = CASE WHEN f.delay_s IS NULL THEN j.run_after
                                ELSE clock_timestamp() + make_interval(secs => f.delay_s) END,
               failures = j.failures + f.failed,
               reschedules = j.reschedules + f.rescheduled,
               message_key = coalesce(f.message_key, j.message_key),
               message_params = CASE WHEN f.message_key IS NULL THEN j.message_params
                                     ELSE f.message_params::jsonb END
          -- one function scan over the runs' arrays with the claims appended (not a UNION
          -- ALL of two: when a row of the join is updated concurrently, a completion write,
          -- Postgres rechecks it against the join's other side, and a UNION ALL there made
          -- that recheck miss, leaving a final write undone; tests/integration)
          FROM unnest(p_ids || v_picked,
                      p_attempts || array_fill(NULL::integer, ARRAY[v_claims]),
                      p_statuses || array_fill('TO_BE_RUN'::text, ARRAY[v_claims]),
                      p_percents || array_fill(NULL::integer, ARRAY[v_claims]),
                      p_error_types || array_fill(NULL::text, ARRAY[v_claims]),
                      p_error_messages || array_fill(NULL::text, ARRAY[v_claims]),
                      p_stack_traces || array_fill(NULL::text, ARRAY[v_claims]),
                      p_results || array_fill(NULL::text, ARRAY[v_claims]),
                      p_delays || array_fill(NULL::double precision, ARRAY[v_claims]),
                      p_failed || array_fill(0, ARRAY[v_claims]),
                      p_rescheduled || array_fill(0, ARRAY[v_claims]),
                      p_message_keys || array_fill(NULL::text, ARRAY[v_claims]),
                      p_message_params || array_fill(NULL::text, ARRAY[v_claims]),
                      array_fill(0, ARRAY[coalesce(cardinality(p_ids), 0)])
                          || array_fill(1, ARRAY[v_claims]))
               AS f(id, attempt, status, percent, error_type, error_message, stack_trace,
                    result, delay_s, failed, rescheduled, message_key, message_params,
                    next_attempt)
         WHERE j.id = f.id
           AND CASE WHEN f.next_attempt = 0  -- a final write: this instance's running attempt
                    THEN j.attempt = f.attempt AND j.instance_id = p_instance
                         AND j.status = 'RUNNING'
                    ELSE j.status = 'QUEUED' END  -- a claim: picked and locked above
        RETURNING j.id, j.status, f.next_attempt = 1 AS claim
    )
    SELECT coalesce(array_agg(c.id) FILTER (WHERE NOT c.claim), '{}'),
           coalesce(bool_or(c.status = 'QUEUED') FILTER (WHERE NOT c.claim), false),
           coalesce(array_agg(c.id ORDER BY array_position(v_picked, c.id))
                        FILTER (WHERE c.claim), '{}')
      INTO v_finished, v_requeued, v_claimed
      FROM changed c;
    IF cardinality(v_picked) > 0 THEN
        PERFORM set_config('jobservice.start_classes', '', true);
    END IF;
    IF v_requeued THEN
        PERFORM pg_notify('jobservice_work', '');
    END IF;
    IF cardinality(v_claimed) + cardinality(v_expired) > 0 THEN
        RETURN QUERY SELECT r.*, false FROM jobservice_claimed_rows(v_claimed || v_expired) r;
    END IF;
    RETURN QUERY
        SELECT f.id, NULL::text, NULL::text, NULL::text, NULL::integer, NULL::text,
               NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
               NULL::integer, NULL::double precision, NULL::integer, NULL::integer,
               NULL::text, NULL::jsonb, NULL::jsonb, true
          FROM unnest(v_finished) AS f(id);
END
$$;

-- Complete new definition (011's): a statement's events in the order of its effects, the
-- ends of runs before the claims. Since the final writes and the claim are one UPDATE, one
-- batch holds both: ordered by job alone, a subscriber counting the jobs in progress from the
-- events (to_be_run up, succeeded down) could see one more than the pool between two of
-- them. Events of one job keep their transition order (a job is claimed or not).
CREATE OR REPLACE FUNCTION jobservice_events_of_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t_job_event_batch (event_count, events)
    SELECT count(*), array_agg(event ORDER BY n)
      FROM (SELECT ROW(e.event_id, e.id, e.seq, e.tenant || '.' || e.kind,
                       jobservice_event_body(e.event_id, e.id, e.tenant, e.job_class, e.status,
                           e.previous, e.percent_completed, e.updated_at, e.owner,
                           e.error_type, e.error_message, e.stack_trace, e.result, e.context,
                           e.message_key, e.message_params))::jobservice_event AS event,
                   row_number() OVER (ORDER BY e.claim, e.id, e.seq) AS n
          FROM (SELECT n.id, n.tenant, n.job_class, n.percent_completed, n.updated_at, n.owner,
                       n.error_type, n.error_message, n.stack_trace, n.result, n.context,
                       n.message_key, n.message_params, v.seq, v.status, v.previous, v.kind,
                       o.status = 'QUEUED' AND n.status IN ('TO_BE_RUN', 'RUNNING') AS claim,
                       gen_random_uuid() AS event_id
                  FROM new_rows n
                  JOIN old_rows o ON o.id = n.id
                 CROSS JOIN LATERAL (
                       SELECT n.transition_seq - 1, 'TO_BE_RUN', 'QUEUED', 'to_be_run'
                        WHERE o.status = 'QUEUED' AND n.status = 'RUNNING'
                       UNION ALL
                       SELECT n.transition_seq, n.status,
                              CASE WHEN o.status = 'QUEUED' AND n.status = 'RUNNING'
                                   THEN 'TO_BE_RUN' ELSE o.status END,
                              CASE WHEN n.status = o.status THEN 'progress'
                                   ELSE lower(n.status) END
                       ) AS v(seq, status, previous, kind)
                 WHERE o.status IS DISTINCT FROM n.status
                    OR o.percent_completed IS DISTINCT FROM n.percent_completed
                    OR o.message_key IS DISTINCT FROM n.message_key
                    OR o.message_params IS DISTINCT FROM n.message_params) e) numbered
     GROUP BY (n - 1) / 500
     ORDER BY (n - 1) / 500;
    RETURN NULL;
END
$$;
