-- Performance (issue 7): two costs of every claim cut.
--
-- 1. A claimed job of a class the instance runs goes QUEUED -> RUNNING in one row update, with
--    both events (to_be_run, then running) written as before (below).
-- 2. The lease check is PL/pgSQL instead of SQL: a SQL function called from PL/pgSQL is
--    planned anew on each call (0.24 ms), a PL/pgSQL one keeps its plan (0.04 ms), measured
--    with track_functions in the same loop.
--
-- Since 005 the claim and the start were already one transaction (no other transaction could
-- ever see such a job TO_BE_RUN), but each claimed job was still updated twice: QUEUED ->
-- TO_BE_RUN, then TO_BE_RUN -> RUNNING, each a new row version with its index entries and its
-- trigger calls. Measured with a database-only loop of jobservice_finish_and_claim (8 jobs a
-- call): 9.9-10.3 ms -> 8.2-8.8 ms per call (docs/benchmarks.md).
--
-- How: jobservice_claim_and_start names the classes to start in a transaction-local setting
-- (`jobservice.start_classes`) for the duration of the claim; a BEFORE trigger that fires after
-- the bookkeeping trigger (names sort so) moves a row that is being claimed (QUEUED ->
-- TO_BE_RUN) on to RUNNING when its class is named: started_at = claimed_at, and the
-- transition number counts both steps. The event trigger writes the TO_BE_RUN event (number n-1,
-- previous QUEUED) and then the RUNNING event (number n, previous TO_BE_RUN): the outbox holds
-- exactly what the two updates wrote. The transition table is unchanged: the bookkeeping
-- trigger still checks QUEUED -> TO_BE_RUN, and TO_BE_RUN -> RUNNING is allowed.

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

-- Complete new definition (004's, plus the claimed-and-started case). The fields of CONTRACT
-- section 5 are unchanged.
CREATE OR REPLACE FUNCTION jobservice_after_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_prev     text;
    v_kind     text;
    v_event_id uuid := gen_random_uuid();
    v_error    jsonb;
    v_message  jsonb;
    v_body     jsonb;
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
    v_body := jsonb_build_object(
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
        'message', v_message);
    IF v_prev = 'QUEUED' AND NEW.status = 'RUNNING' THEN
        -- claimed and started by one update (jobservice_start_on_claim): the claim's event first
        INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
        SELECT e.id, NEW.id, NEW.transition_seq - 1, NEW.tenant || '.to_be_run',
               v_body || jsonb_build_object('event_id', e.id, 'status', 'TO_BE_RUN')
          FROM gen_random_uuid() AS e(id);
        v_body := v_body || '{"previous_status": "TO_BE_RUN"}';
    END IF;
    INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
    VALUES (v_event_id, NEW.id, NEW.transition_seq, NEW.tenant || '.' || v_kind, v_body);
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

-- Complete new definition (002's, same query): see 2. above.
CREATE OR REPLACE FUNCTION jobservice_may_claim(p_instance text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM t_instance
                    WHERE instance_id = p_instance AND lease_expires_at > clock_timestamp());
END
$$;
