-- Every statement the store runs, by name. Loaded once at import by jobservice.store;
-- a test prepares each of them against a migrated database.

-- name: insert_jobs
-- One statement for a whole intake batch: jobs and their parameters; existing ids are left
-- alone (idempotent resubmission) and the ids actually created are returned.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::integer[],
                         $6::text[], $7::text[], $8::timestamptz[], $12::boolean[],
                         $13::integer[], $14::float8[], $15::timestamptz[])
        AS i(id, tenant, job_class, status, priority, description, owner, expiration_date,
             at_most_once, max_retries, retry_backoff_s, run_after)
), inserted AS (
    INSERT INTO t_job_info (id, tenant, job_class, status, priority, description, owner,
                            expiration_date, at_most_once, max_retries, retry_backoff_s,
                            run_after)
    SELECT id, tenant, job_class, status, priority, description, owner, expiration_date,
           at_most_once, max_retries, retry_backoff_s, run_after
      FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), parameters AS (
    INSERT INTO t_job_parameters (job_id, name, value)
    SELECT p.job_id, p.name, p.value::jsonb
      FROM unnest($9::uuid[], $10::text[], $11::text[]) AS p(job_id, name, value)
      JOIN inserted ON inserted.id = p.job_id
)
SELECT id FROM inserted;

-- name: notify_work
SELECT pg_notify('jobservice_work', '');

-- name: notify_outbox
SELECT pg_notify('jobservice_outbox', '');

-- name: claim_jobs
-- $3-$5: this instance's claim filters (tenants, excluded tenants, job types; NULL: all)
SELECT id, status, tenant, job_class, priority, owner, attempt, created_at, queued_at,
       parameters, max_retries, retry_backoff_s, failures, reschedules
  FROM jobservice_claim_jobs($1, $2, $3::text[], $4::text[], $5::text[]);

-- name: next_run_after
-- Seconds until the earliest future not-before time of a queued job (NULL: none waits),
-- measured by the database clock; the scheduler sleeps that long at most
-- (t_job_info_waiting_idx).
-- (statement_timestamp, not clock_timestamp: a stable bound the index scan can start from)
SELECT extract(epoch FROM min(run_after) - clock_timestamp())::float8
  FROM t_job_info
 WHERE status = 'QUEUED' AND run_after IS NOT NULL AND run_after > statement_timestamp();

-- name: mark_running
UPDATE t_job_info SET status = 'RUNNING'
 WHERE id = ANY($1::uuid[]) AND status = 'TO_BE_RUN' AND instance_id = $2
RETURNING id, stop_requested, started_at;

-- name: finish_jobs
-- Final writes of many runs in one statement, each guarded by (instance, attempt). A run
-- may also end back in QUEUED (automatic retry, reschedule, worker abort) with a delay
-- before its next attempt and its retry/reschedule counters increased.
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
       reschedules = j.reschedules + f.rescheduled
  FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::integer[], $5::text[], $6::text[],
              $7::text[], $8::text[], $10::float8[], $11::integer[], $12::integer[])
       AS f(id, attempt, status, percent, error_type, error_message, stack_trace, result,
            delay_s, failed, rescheduled)
 WHERE j.id = f.id AND j.attempt = f.attempt AND j.instance_id = $9 AND j.status = 'RUNNING'
RETURNING j.id, j.ended_at, j.status;

-- name: write_completion
UPDATE t_job_info AS j SET percent_completed = c.percent
  FROM unnest($1::uuid[], $2::integer[], $3::integer[]) AS c(id, attempt, percent)
 WHERE j.id = c.id AND j.attempt = c.attempt AND j.instance_id = $4 AND j.status = 'RUNNING'
   AND j.percent_completed <> c.percent;

-- name: hand_back
UPDATE t_job_info SET status = 'QUEUED'
 WHERE id = ANY($1::uuid[]) AND instance_id = $2 AND status IN ('TO_BE_RUN', 'RUNNING')
RETURNING id;

-- name: stop_job
SELECT status, instance_id, tenant, job_class, changed FROM jobservice_stop_job($1);

-- name: enqueue_job
UPDATE t_job_info SET status = 'QUEUED' WHERE id = $1 AND status = 'PENDING'
RETURNING status, tenant, job_class;

-- name: retry_job
UPDATE t_job_info SET status = 'QUEUED'
 WHERE id = $1 AND status IN ('FAILED', 'ABORTED') RETURNING status, tenant, job_class;

-- name: retry_jobs
-- Kick in bulk (`jobservice jobs retry`): FAILED/ABORTED jobs matching every given filter
-- (NULL: any) go back to QUEUED as a new attempt. Uses t_job_info_failed_idx.
UPDATE t_job_info SET status = 'QUEUED'
 WHERE status IN ('FAILED', 'ABORTED')
   AND ($1::uuid IS NULL OR id = $1)
   AND ($2::text IS NULL OR tenant = $2)
   AND ($3::text IS NULL OR job_class = $3)
   AND ($4::text IS NULL OR error_type = $4)
RETURNING id, tenant, job_class;

-- name: insert_job_logs
INSERT INTO t_job_log (job_id, attempt, at, level, message)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::timestamptz[], $4::text[], $5::text[]);

-- name: job_runs
SELECT attempt, instance_id, status, claimed_at, started_at, ended_at, duration_s,
       error_type, error_message, stack_trace
  FROM t_job_run WHERE job_id = $1 ORDER BY attempt;

-- name: job_log_tail
SELECT attempt, at, level, message
  FROM (SELECT * FROM t_job_log WHERE job_id = $1 ORDER BY id DESC LIMIT $2) tail
 ORDER BY id;

-- name: job_status
SELECT status FROM t_job_info WHERE id = $1;

-- name: job_tenant
SELECT tenant FROM t_job_info WHERE id = $1;

-- name: job_statuses
SELECT id, status FROM t_job_info WHERE id = ANY($1::uuid[]);

-- name: get_job
SELECT * FROM t_job_info WHERE id = $1;

-- name: get_parameters
SELECT name, value FROM t_job_parameters WHERE job_id = $1 ORDER BY name;

-- name: stop_requested_jobs
SELECT id FROM t_job_info WHERE instance_id = $1 AND status = 'RUNNING' AND stop_requested;

-- name: fetch_outbox
SELECT id, event_id, seq, routing_key, body::text AS body
  FROM t_job_event_outbox ORDER BY id LIMIT $1;

-- name: delete_outbox
DELETE FROM t_job_event_outbox WHERE id = ANY($1::bigint[]);

-- name: count_jobs
SELECT tenant, status, count(*) AS jobs FROM t_job_info GROUP BY tenant, status;

-- name: outbox_backlog
SELECT count(*) AS events,
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS lag_s
  FROM t_job_event_outbox;

-- name: fail_claimed
UPDATE t_job_info SET status = 'FAILED', error_type = $3, error_message = $4
 WHERE id = $1 AND instance_id = $2 AND status = 'TO_BE_RUN';

-- name: renew_lease
SELECT jobservice_renew_lease($1, $2);

-- name: lease_lapsed
SELECT coalesce((SELECT lease_expires_at <= clock_timestamp() FROM t_instance
                  WHERE instance_id = $1), true);

-- name: release_lease
DELETE FROM t_instance WHERE instance_id = $1;

-- name: rescue_orphans
SELECT id, status, instance_id, tenant, job_class FROM jobservice_rescue_orphans($1);
