-- Throughput (issue 7): a pool cycle's commit no longer waits for its WAL flush.
--
-- Each pool cycle (jobservice_finish_and_claim: final statuses and the next claim) waited for
-- its commit's flush before its jobs could start; with one cycle in flight per instance, the
-- cores idled through those waits (drain of 2 instances: 0.16-0.26 of the 2 cores idle, the
-- cycle backends waiting for the WAL 0.59 of the time, docs/benchmarks.md). Now, when the
-- instance sets `jobservice.cycle_commit = async` on its connections (JOBSERVICE_CYCLE_COMMIT,
-- the default), the cycle commits with `synchronous_commit = off`: `jobservice bench
-- --instances 2`, alternated: 3,120-3,422 -> 3,584-3,780 jobs/s.
--
-- What a crash of the database server can then undo, and why nothing is lost:
-- - The last cycles (up to about three times wal_writer_delay, 200 ms by default) may be
--   rolled back by crash recovery: their jobs are QUEUED, or RUNNING here, again.
-- - No event of a rolled-back transition was published: the relay publishes only events that
--   are flushed (t_outbox_flush below, and the relay's statement in queries.sql).
-- - No submission is lost: the intake's inserts still commit with a flush before their
--   messages are acknowledged; so do controls, leases and rescues.
-- - Jobs recorded as claimed by an instance that no longer holds them are taken back by it
--   (t_server_mark below: an unlogged table, emptied by crash recovery, tells it).
-- - A job that had finished runs again: execution is at least once, as after the loss of an
--   instance. A cycle with a job that must not run twice (`at_most_once`) waits for its flush.

-- The relay's barrier: its statement writes here when it deletes nothing, so that its commit
-- flushes the WAL up to it, and with it every commit whose events it read.
CREATE TABLE t_outbox_flush (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    flushes bigint  NOT NULL DEFAULT 0
);
INSERT INTO t_outbox_flush DEFAULT VALUES;

-- One row per live instance, written at its start and checked at each heartbeat: crash
-- recovery empties unlogged tables, so a missing row means the server crashed since, and the
-- last cycles of this instance may have been rolled back.
CREATE UNLOGGED TABLE t_server_mark (
    instance_id text PRIMARY KEY
);

-- Complete new definition (013's): the same cycle, its commit as said above.
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
    v_sync     boolean;
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
        RETURNING j.id, j.status, f.next_attempt = 1 AS claim, j.at_most_once
    )
    SELECT coalesce(array_agg(c.id) FILTER (WHERE NOT c.claim), '{}'),
           coalesce(bool_or(c.status = 'QUEUED') FILTER (WHERE NOT c.claim), false),
           coalesce(array_agg(c.id ORDER BY array_position(v_picked, c.id))
                        FILTER (WHERE c.claim), '{}'),
           coalesce(bool_or(c.at_most_once), false)
      INTO v_finished, v_requeued, v_claimed, v_sync
      FROM changed c;
    -- 015: the commit does not wait for its WAL flush, unless a job that must not run twice
    -- is in it (its claim must be durable before it runs) or the instance asks for flushes
    IF NOT v_sync AND current_setting('jobservice.cycle_commit', true) = 'async' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
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

