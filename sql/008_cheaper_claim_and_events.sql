-- Performance (issue 7): three costs of every job cut, each measured in a database-only loop
-- (docs/benchmarks.md, "2026-11-28, second session").
--
-- 1. A claimed job of a class the instance runs goes QUEUED -> RUNNING in one row update, with
--    both events (to_be_run, then running) written as before. Since 005 the claim and the start
--    were already one transaction (no other transaction could ever see such a job TO_BE_RUN),
--    but each claimed job was still updated twice, each a new row version with its index
--    entries and trigger calls. jobservice_finish_and_claim with 8 jobs a call:
--    9.9-10.3 -> 8.2-8.8 ms per call.
--    How: jobservice_claim_and_start names the classes to start in a transaction-local
--    setting (`jobservice.start_classes`) for the duration of the claim; a BEFORE trigger that
--    fires after the bookkeeping trigger (names sort so) moves a row being claimed (QUEUED ->
--    TO_BE_RUN) on to RUNNING when its class is named: started_at = claimed_at, and the
--    transition number counts both steps. The event trigger writes the TO_BE_RUN event (number
--    n-1, previous QUEUED), then the RUNNING event (number n, previous TO_BE_RUN): the outbox
--    holds exactly what the two updates wrote. The transition table is unchanged: the
--    bookkeeping trigger still checks QUEUED -> TO_BE_RUN, and TO_BE_RUN -> RUNNING is allowed.
-- 2. The lease check is PL/pgSQL instead of SQL: a SQL function whose body has a sub-select,
--    called from PL/pgSQL, is planned anew on each call (0.24 ms); a PL/pgSQL one keeps its
--    plan (0.04 ms), measured with track_functions.
-- 3. The events of an INSERT (intake stores up to 200 jobs per statement) are written by one
--    statement-level trigger, one INSERT ... SELECT over the inserted rows, instead of one
--    PL/pgSQL call and one INSERT per row: 200 jobs 18.2 -> 11.3-13.0 ms. Updates keep their
--    row trigger: they change a few rows each (a pool's batch), where a statement trigger's
--    transition tables cost as much as they save (measured). Both build the body with the
--    same function. A statement's events are in the outbox at its end, as with row-level
--    AFTER triggers.

-- The event body (CONTRACT section 5, plus context and message since 004) of one change.
-- Columns one by one: a transition table's whole row is an anonymous record. A plain
-- expression, so the planner inlines it where it is called.
CREATE FUNCTION jobservice_event_body(
    p_event_id uuid, p_id uuid, p_tenant text, p_job_class text, p_status text,
    p_previous text, p_percent smallint, p_at timestamptz, p_owner text, p_error_type text,
    p_error_message text, p_stack_trace text, p_result jsonb, p_context text,
    p_message_key text, p_message_params jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'event_id', p_event_id,
        'job_id', p_id,
        'tenant', p_tenant,
        'job_class', p_job_class,
        'status', p_status,
        'previous_status', p_previous,
        'percent_completed', p_percent,
        'at', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'owner', p_owner,
        'error', CASE WHEN p_error_type IS NOT NULL THEN
                     jsonb_build_object('type', p_error_type, 'message', p_error_message,
                                        'stack_trace', p_stack_trace) END,
        'result', p_result,
        'context', p_context,
        'message', CASE WHEN p_message_key IS NOT NULL THEN
                       jsonb_build_object('key', p_message_key,
                                          'params', coalesce(p_message_params, '{}'::jsonb)) END)
$$;

-- 1.
CREATE FUNCTION jobservice_start_on_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- unset, or reset to '' after a transaction that set it: nothing to start
    IF NEW.job_class = ANY (nullif(current_setting('jobservice.start_classes', true), '')::text[])
    THEN
        NEW.status := 'RUNNING';
        NEW.started_at := NEW.claimed_at;
        NEW.transition_seq := NEW.transition_seq + 1;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER t_job_info_before_write_start
    BEFORE UPDATE ON t_job_info
    FOR EACH ROW
    WHEN (OLD.status = 'QUEUED' AND NEW.status = 'TO_BE_RUN')
    EXECUTE FUNCTION jobservice_start_on_claim();

-- Complete new definition (004's): the row trigger of updates (inserts: 3. below), with the
-- claimed-and-started case. The fields of CONTRACT section 5 are unchanged.
CREATE OR REPLACE FUNCTION jobservice_after_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_event_id uuid := gen_random_uuid();
    v_kind     text := CASE WHEN NEW.status = OLD.status THEN 'progress'
                            ELSE lower(NEW.status) END;
    v_previous text := OLD.status;
    v_claim_id uuid;
BEGIN
    IF OLD.status = 'QUEUED' AND NEW.status = 'RUNNING' THEN
        -- claimed and started by one update (jobservice_start_on_claim): the claim's event
        v_claim_id := gen_random_uuid();
        INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
        VALUES (v_claim_id, NEW.id, NEW.transition_seq - 1, NEW.tenant || '.to_be_run',
                jobservice_event_body(v_claim_id, NEW.id, NEW.tenant, NEW.job_class,
                                      'TO_BE_RUN', 'QUEUED', NEW.percent_completed,
                                      NEW.updated_at, NEW.owner, NEW.error_type,
                                      NEW.error_message, NEW.stack_trace, NEW.result,
                                      NEW.context, NEW.message_key, NEW.message_params));
        v_previous := 'TO_BE_RUN';
    END IF;
    INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
    VALUES (v_event_id, NEW.id, NEW.transition_seq, NEW.tenant || '.' || v_kind,
            jobservice_event_body(v_event_id, NEW.id, NEW.tenant, NEW.job_class, NEW.status,
                                  v_previous, NEW.percent_completed, NEW.updated_at,
                                  NEW.owner, NEW.error_type, NEW.error_message,
                                  NEW.stack_trace, NEW.result, NEW.context, NEW.message_key,
                                  NEW.message_params));
    RETURN NULL;
END
$$;

-- Complete new definition (005's): the start happens inside the claim's own update, so the
-- claimed rows come back from jobservice_claim_jobs as they end (RUNNING, or TO_BE_RUN for a
-- class this instance does not run) and are returned as they are.
CREATE OR REPLACE FUNCTION jobservice_claim_and_start(p_instance text, p_limit integer,
                                                      p_tenants text[],
                                                      p_exclude_tenants text[],
                                                      p_job_types text[], p_runnable text[])
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb, max_retries integer, retry_backoff_s double precision,
               failures integer, reschedules integer, context text,
               selected_elements jsonb, environment jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('jobservice.start_classes', coalesce(p_runnable, '{}')::text, true);
    RETURN QUERY SELECT * FROM jobservice_claim_jobs(p_instance, p_limit, p_tenants,
                                                     p_exclude_tenants, p_job_types);
    PERFORM set_config('jobservice.start_classes', '', true);
END
$$;

-- 2. Complete new definition (002's, same query).
CREATE OR REPLACE FUNCTION jobservice_may_claim(p_instance text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM t_instance
                    WHERE instance_id = p_instance AND lease_expires_at > clock_timestamp());
END
$$;

-- 3.
CREATE FUNCTION jobservice_events_of_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
    SELECT e.event_id, e.id, e.transition_seq, e.tenant || '.' || lower(e.status),
           jobservice_event_body(e.event_id, e.id, e.tenant, e.job_class, e.status, NULL,
                                 e.percent_completed, e.updated_at, e.owner, e.error_type,
                                 e.error_message, e.stack_trace, e.result, e.context,
                                 e.message_key, e.message_params)
      FROM (SELECT n.*, gen_random_uuid() AS event_id FROM new_rows n) e;
    RETURN NULL;
END
$$;

DROP TRIGGER t_job_info_event_on_insert ON t_job_info;
CREATE TRIGGER t_job_info_events_of_insert
    AFTER INSERT ON t_job_info
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobservice_events_of_insert();
