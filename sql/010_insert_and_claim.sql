-- Latency (issue 7): an intake batch that finds free slots in its instance's pool claims in
-- the same round trip that stores it.
--
-- Until now a submission reached RUNNING in two transactions: the intake's insert committed,
-- the instance's scheduler woke, and its claim ran as a second statement. On an idle
-- instance the time from the job's QUEUED stamp to its RUNNING stamp was 1.6-2.0 ms here
-- (bench/lat: insert result, event loop, wake-up, claim round trip), of ~4 ms from publish
-- to RUNNING. Here the batch is inserted and then, in the same transaction, up to p_limit
-- jobs are claimed and started exactly as jobservice_claim_and_start does (the same fair
-- pick over every queued job of every tenant, not only over the batch: fairness is the
-- claim's, whoever calls it). Every transition still writes its event (QUEUED, TO_BE_RUN,
-- RUNNING, numbered in order); other instances are still woken when queued work was created.
--
-- Rows: the claimed (and expired) jobs with created = false, as jobservice_claim_and_start
-- returns them, then the ids created by this call with created = true (and their status).
CREATE FUNCTION jobservice_insert_and_claim(
    p_ids uuid[], p_tenants_of text[], p_job_classes text[], p_statuses text[],
    p_priorities integer[], p_descriptions text[], p_owners text[],
    p_expiration_dates timestamptz[], p_param_ids uuid[], p_param_names text[],
    p_param_values text[], p_at_most_once boolean[], p_max_retries integer[],
    p_retry_backoffs double precision[], p_run_afters timestamptz[], p_contexts text[],
    p_instance text, p_limit integer, p_tenants text[], p_exclude_tenants text[],
    p_job_types text[], p_runnable text[])
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_created uuid[];
    v_created_statuses text[];
    v_queued boolean;
BEGIN
    -- the batch: jobs not known yet, and their parameters (with p_limit 0 this function is
    -- the intake's plain insert)
    WITH inserted AS (
        INSERT INTO t_job_info (id, tenant, job_class, status, priority, description, owner,
                                expiration_date, at_most_once, max_retries, retry_backoff_s,
                                run_after, context)
        SELECT i.id, i.tenant, i.job_class, i.status, i.priority, i.description, i.owner,
               i.expiration_date, i.at_most_once, i.max_retries, i.retry_backoff_s,
               i.run_after, i.context
          FROM unnest(p_ids, p_tenants_of, p_job_classes, p_statuses, p_priorities,
                      p_descriptions, p_owners, p_expiration_dates, p_at_most_once,
                      p_max_retries, p_retry_backoffs, p_run_afters, p_contexts)
               AS i(id, tenant, job_class, status, priority, description, owner,
                    expiration_date, at_most_once, max_retries, retry_backoff_s, run_after,
                    context)
        ON CONFLICT (id) DO NOTHING
        RETURNING t_job_info.id, t_job_info.status
    ), parameters AS (
        INSERT INTO t_job_parameters (job_id, name, value)
        SELECT p.job_id, p.name, p.value::jsonb
          FROM unnest(p_param_ids, p_param_names, p_param_values) AS p(job_id, name, value)
          JOIN inserted ON inserted.id = p.job_id
    )
    SELECT coalesce(array_agg(inserted.id), '{}'), coalesce(array_agg(inserted.status), '{}'),
           coalesce(bool_or(inserted.status = 'QUEUED'), false)
      INTO v_created, v_created_statuses, v_queued
      FROM inserted;
    IF v_queued THEN
        PERFORM pg_notify('jobservice_work', '');
        IF p_limit > 0 THEN
            RETURN QUERY
                SELECT c.id, c.status, c.tenant, c.job_class, c.priority, c.owner, c.attempt,
                       c.created_at, c.queued_at, c.parameters, c.max_retries,
                       c.retry_backoff_s, c.failures, c.reschedules, c.context,
                       c.selected_elements, c.environment, false
                  FROM jobservice_claim_and_start(p_instance, p_limit, p_tenants,
                                                  p_exclude_tenants, p_job_types,
                                                  p_runnable) AS c;
        END IF;
    END IF;
    RETURN QUERY
        SELECT c.id, c.status, NULL::text, NULL::text, NULL::integer, NULL::text,
               NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
               NULL::integer, NULL::double precision, NULL::integer, NULL::integer,
               NULL::text, NULL::jsonb, NULL::jsonb, true
          FROM unnest(v_created, v_created_statuses) AS c(id, status);
END
$$;

-- As the other claim functions (006): custom plans, no sequential scans, for everything the
-- function runs.
ALTER FUNCTION jobservice_insert_and_claim(uuid[], text[], text[], text[], integer[], text[],
                                           text[], timestamptz[], uuid[], text[], text[],
                                           boolean[], integer[], double precision[],
                                           timestamptz[], text[], text, integer, text[],
                                           text[], text[], text[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET enable_sort = off SET jit = off;
