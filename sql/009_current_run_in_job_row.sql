-- Performance (issue 7): a job's last attempt is read from its own row; only attempts that
-- are no longer a job's current one are copied into a table.
--
-- Until 008 the bookkeeping trigger inserted a run-history row whenever an attempt ended,
-- also when it ended the job (SUCCEEDED, FAILED, ABORTED): one more row, two index entries, a
-- foreign-key check and the run-owner trigger per job, all inside the pool's final write.
-- But the job row already holds everything that row held (instance, claimed/started/ended
-- times, error, owner, context) until the job is queued again, and only then is that attempt
-- superseded. Database-only loop, finish_and_claim with 8 jobs a call: 7.52 / 7.75 / 8.05 ->
-- 6.50 / 7.05 / 7.22 ms per call (docs/benchmarks.md).
--
-- What readers see does not change: `t_job_run` is now a view with exactly the rows the table
-- had (one per ended attempt, same columns, same values): the copied attempts
-- (`t_job_past_run`, the former table) and the last attempt of each job in a final status,
-- read from `t_job_info`, unless that attempt was copied already (a job that ran, was
-- handed back, and then expired or was stopped while queued; and rows written before this
-- migration). The copy is made when the job leaves its final status (kick, retry), as it
-- already was for attempts older than the history itself.
ALTER TABLE t_job_run RENAME TO t_job_past_run;
ALTER TABLE t_job_past_run RENAME CONSTRAINT t_job_run_pkey TO t_job_past_run_pkey;
ALTER INDEX t_job_run_error_type_idx RENAME TO t_job_past_run_error_type_idx;
ALTER TABLE t_job_past_run RENAME CONSTRAINT t_job_run_job_id_fkey TO t_job_past_run_job_id_fkey;
-- the trigger below fills owner and context from the job row it has in hand
DROP TRIGGER t_job_run_fill_owner ON t_job_past_run;
DROP FUNCTION jobservice_fill_run_owner();

-- Every ended attempt. A SUCCEEDED attempt carries no error (the claim clears it, a success
-- writes none): naming that lets a query by error type skip that branch, while the FAILED and
-- ABORTED one is read through t_job_info_failed_idx.
CREATE VIEW t_job_run AS
SELECT r.job_id, r.attempt, r.instance_id, r.status, r.started_at, r.ended_at, r.error_type,
       r.error_message, r.stack_trace, r.claimed_at, r.duration_s, r.owner, r.context
  FROM t_job_past_run r
UNION ALL
SELECT j.id, j.attempt, j.instance_id, j.status, j.started_at, j.ended_at, j.error_type,
       j.error_message, j.stack_trace, j.claimed_at,
       extract(epoch FROM j.ended_at - coalesce(j.started_at, j.claimed_at))::double precision,
       j.owner, j.context
  FROM t_job_info j
 WHERE j.status IN ('FAILED', 'ABORTED') AND j.attempt > 0
   AND NOT EXISTS (SELECT 1 FROM t_job_past_run p WHERE p.job_id = j.id AND p.attempt = j.attempt)
UNION ALL
SELECT j.id, j.attempt, j.instance_id, j.status, j.started_at, j.ended_at, NULL::text,
       NULL::text, NULL::text, j.claimed_at,
       extract(epoch FROM j.ended_at - coalesce(j.started_at, j.claimed_at))::double precision,
       j.owner, j.context
  FROM t_job_info j
 WHERE j.status = 'SUCCEEDED' AND j.attempt > 0
   AND NOT EXISTS (SELECT 1 FROM t_job_past_run p WHERE p.job_id = j.id AND p.attempt = j.attempt);

-- Complete new definition (004's): an attempt that ends the job is not copied; an attempt
-- that goes back to QUEUED is, with what it ended with; a job queued again from a final
-- status has its last attempt copied before its row is reset.
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
    -- The attempt in hand goes back to the queue: it is superseded now. With an error it was
    -- an automatic retry (the attempt FAILED); without one it was handed back (reschedule,
    -- worker abort, shutdown, rescue) and the attempt's status is QUEUED.
    IF OLD.status IN ('TO_BE_RUN', 'RUNNING') AND NEW.status = 'QUEUED' THEN
        INSERT INTO t_job_past_run (job_id, attempt, instance_id, status, claimed_at,
                                    started_at, ended_at, duration_s, error_type,
                                    error_message, stack_trace, owner, context)
        VALUES (OLD.id, OLD.attempt, OLD.instance_id,
                CASE WHEN NEW.error_type IS NOT NULL THEN 'FAILED' ELSE 'QUEUED' END,
                OLD.claimed_at, OLD.started_at, v_now,
                extract(epoch FROM v_now - coalesce(OLD.started_at, OLD.claimed_at)),
                NEW.error_type, NEW.error_message, NEW.stack_trace, OLD.owner, OLD.context)
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
                -- the job's last attempt, kept in its row until now (none if it never ran;
                -- already copied if it was handed back before the job ended while queued)
                IF OLD.attempt > 0 THEN
                    INSERT INTO t_job_past_run (job_id, attempt, instance_id, status,
                                                claimed_at, started_at, ended_at, duration_s,
                                                error_type, error_message, stack_trace,
                                                owner, context)
                    VALUES (OLD.id, OLD.attempt, OLD.instance_id, OLD.status, OLD.claimed_at,
                            OLD.started_at, OLD.ended_at,
                            extract(epoch FROM OLD.ended_at
                                               - coalesce(OLD.started_at, OLD.claimed_at)),
                            CASE WHEN OLD.status <> 'SUCCEEDED' THEN OLD.error_type END,
                            CASE WHEN OLD.status <> 'SUCCEEDED' THEN OLD.error_message END,
                            CASE WHEN OLD.status <> 'SUCCEEDED' THEN OLD.stack_trace END,
                            OLD.owner, OLD.context)
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
            -- the previous attempt's outcome (in t_job_run) is not this attempt's
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
