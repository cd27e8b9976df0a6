-- Performance (issue 7): claim and start in one round trip. Complete definitions, on top of
-- the claim of 004 (issue 6).
--
-- jobservice_claim_and_start claims like jobservice_claim_jobs (same fair pick, same
-- QUEUED -> TO_BE_RUN transition and event per job), then, in the same transaction, moves the
-- claimed jobs whose job class the claiming instance can run to RUNNING (TO_BE_RUN -> RUNNING,
-- one more event each, in that order). Both transitions stay separate row updates with their
-- own events; only the round trip between them is gone. Jobs of a class the instance does not
-- know stay TO_BE_RUN (the instance fails them, `unknown_job_class`); expired jobs come back
-- FAILED, as from jobservice_claim_jobs.
CREATE FUNCTION jobservice_claim_and_start(p_instance text, p_limit integer,
                                           p_tenants text[], p_exclude_tenants text[],
                                           p_job_types text[], p_runnable text[])
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_all   uuid[];
    v_start uuid[];
BEGIN
    SELECT coalesce(array_agg(c.c_id ORDER BY c.ord), '{}'),
           coalesce(array_agg(c.c_id ORDER BY c.ord)
                    FILTER (WHERE c.c_status = 'TO_BE_RUN' AND c.c_class = ANY(p_runnable)),
                    '{}')
      INTO v_all, v_start
      FROM jobservice_claim_jobs(p_instance, p_limit, p_tenants, p_exclude_tenants,
                                 p_job_types)
           WITH ORDINALITY AS c(c_id, c_status, c_tenant, c_class, c_priority, c_owner,
                                c_attempt, c_created_at, c_queued_at, c_parameters,
                                c_max_retries, c_retry_backoff_s, c_failures, c_reschedules,
                                c_context, c_selected_elements, c_environment, ord);
    IF cardinality(v_start) > 0 THEN
        UPDATE t_job_info j SET status = 'RUNNING'
         WHERE j.id = ANY(v_start) AND j.status = 'TO_BE_RUN' AND j.instance_id = p_instance;
    END IF;
    RETURN QUERY
        SELECT j.id, j.status, j.tenant, j.job_class, j.priority, j.owner, j.attempt,
               j.created_at, j.queued_at,
               (SELECT jsonb_object_agg(p.name, p.value) FROM t_job_parameters p
                 WHERE p.job_id = j.id),
               j.max_retries, j.retry_backoff_s, j.failures, j.reschedules,
               j.context, j.selected_elements, j.environment
          FROM unnest(v_all) WITH ORDINALITY AS c(id, ord)
          JOIN t_job_info j ON j.id = c.id
         ORDER BY c.ord;
END
$$;
