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

-- Final writes of many runs and the next claim in one round trip: the runs end (each guarded
-- by (instance, attempt); as the finish_jobs query, a run may also go back to QUEUED for a
-- retry or reschedule, with its delay and counters, and then other instances are woken; its
-- last message is kept),
-- then the slots they held (and any other free ones, p_limit in all) are claimed and started
-- as by jobservice_claim_and_start, in the same transaction, so no commit ever shows the
-- instance with more jobs than its pool. Rows: the claimed (and expired) jobs with
-- finished = false, then the ids of the runs whose write applied with finished = true.
CREATE FUNCTION jobservice_finish_and_claim(
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
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_finished uuid[];
    v_requeued boolean;
BEGIN
    WITH ended AS (
        UPDATE t_job_info AS j
           SET status = f.status,
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
          FROM unnest(p_ids, p_attempts, p_statuses, p_percents, p_error_types,
                      p_error_messages, p_stack_traces, p_results, p_delays, p_failed,
                      p_rescheduled, p_message_keys, p_message_params)
               AS f(id, attempt, status, percent, error_type, error_message, stack_trace,
                    result, delay_s, failed, rescheduled, message_key, message_params)
         WHERE j.id = f.id AND j.attempt = f.attempt AND j.instance_id = p_instance
           AND j.status = 'RUNNING'
        RETURNING j.id, j.status
    )
    SELECT coalesce(array_agg(ended.id), '{}'), coalesce(bool_or(ended.status = 'QUEUED'), false)
      INTO v_finished, v_requeued
      FROM ended;
    IF v_requeued THEN
        PERFORM pg_notify('jobservice_work', '');
    END IF;
    IF p_limit > 0 THEN
        RETURN QUERY
            SELECT c.id, c.status, c.tenant, c.job_class, c.priority, c.owner, c.attempt,
                   c.created_at, c.queued_at, c.parameters, c.max_retries, c.retry_backoff_s,
                   c.failures, c.reschedules, c.context, c.selected_elements, c.environment,
                   false
              FROM jobservice_claim_and_start(p_instance, p_limit, p_tenants,
                                              p_exclude_tenants, p_job_types, p_runnable) AS c;
    END IF;
    RETURN QUERY
        SELECT f.id, NULL::text, NULL::text, NULL::text, NULL::integer, NULL::text,
               NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
               NULL::integer, NULL::double precision, NULL::integer, NULL::integer,
               NULL::text, NULL::jsonb, NULL::jsonb, true
          FROM unnest(v_finished) AS f(id);
END
$$;
