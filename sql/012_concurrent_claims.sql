-- Throughput with several instances (issue 7): claims no longer wait for each other.
--
-- Until now every claim took one advisory lock, held until its transaction committed, so
-- that the round robin over tenants was global and no two claims picked the same job. With
-- two instances a claim waited 1.26 ms on average for the other's to commit (3.1 s of 12 s
-- of a 20,000-job run, pg_stat_statements), and a pool's slots wait with it: an instance's
-- rate is its pool over the time of a claim round trip.
--
-- Now a claim locks what it picks (FOR UPDATE SKIP LOCKED: a job another claim holds is
-- passed over, not waited for), and moves the turns of the tenants it served unless another
-- claim holds them (SKIP LOCKED again; that claim moves them). Two instances claiming at
-- once still take different jobs; the order of tenants is still the one of t_tenant_turn,
-- read as committed when the claim starts, so two simultaneous claims may both start with
-- the same tenant (each takes a different job of it). The one wait left: the first turn of a
-- tenant is an insert, and a claim adding the same tenant at once waits for it. Complete new
-- definition of 007's jobservice_claim_jobs; the rest is unchanged.

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
-- index plans only, whatever the table's size when a plan was cached (006)
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_sort = off SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_picked     uuid[] := '{}';
    v_expired    uuid[] := '{}';
    v_ids        uuid[] := '{}';
    v_active     text[];
    v_next       text[];
    v_served     text[] := '{}';
    v_tenant     text;
    v_id         uuid;
    v_expiration timestamptz;
    v_now        timestamptz;
BEGIN
    IF p_limit <= 0 OR NOT jobservice_may_claim(p_instance) THEN
        RETURN;
    END IF;
    v_now := clock_timestamp();

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
                -- the tenant's best job not picked yet: not before run_after; only the
                -- instance's job types, if any (two statements, each with its own index)
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
             WHERE j.id = ANY (v_expired) AND j.status || '' = 'QUEUED'  -- see below
            RETURNING j.id
        )
        SELECT coalesce(array_agg(f.id ORDER BY array_position(v_expired, f.id)), '{}')
          INTO v_expired FROM failed f;
    END IF;
    IF cardinality(v_picked) > 0 THEN
        WITH claimed AS (
            UPDATE t_job_info j SET status = 'TO_BE_RUN', instance_id = p_instance,
                   attempt = j.attempt + 1
             -- `status || ''`: a plain `status = 'QUEUED'` lets the planner read the picked
             -- rows through the partial index on queued jobs (a scan of the whole queue,
             -- measured 4.7 ms per claim) instead of the primary key
             WHERE j.id = ANY (v_picked) AND j.status || '' = 'QUEUED'
            RETURNING j.id
        )
        SELECT coalesce(array_agg(c.id ORDER BY array_position(v_picked, c.id)), '{}')
          INTO v_ids FROM claimed c;
    END IF;

    -- the served tenants' turns, in the order they were last served: those another claim
    -- holds are left to it, new tenants are added (ON CONFLICT: one added meanwhile)
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
