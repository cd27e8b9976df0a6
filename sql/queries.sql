-- Every statement the store runs, by name. Loaded once at import by jobservice.store;
-- a test prepares each of them against a migrated database.

-- name: insert_jobs
-- One statement for a whole intake batch: jobs and their parameters; existing ids are left
-- alone (idempotent resubmission) and the ids actually created are returned.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::integer[],
                         $6::text[], $7::text[], $8::timestamptz[], $12::boolean[])
        AS i(id, tenant, job_class, status, priority, description, owner, expiration_date,
             at_most_once)
), inserted AS (
    INSERT INTO t_job_info (id, tenant, job_class, status, priority, description, owner,
                            expiration_date, at_most_once)
    SELECT id, tenant, job_class, status, priority, description, owner, expiration_date,
           at_most_once
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
SELECT id, status, tenant, job_class, priority, owner, attempt, created_at, queued_at,
       parameters
  FROM jobservice_claim_jobs($1, $2);

-- name: mark_running
UPDATE t_job_info SET status = 'RUNNING'
 WHERE id = ANY($1::uuid[]) AND status = 'TO_BE_RUN' AND instance_id = $2
RETURNING id, stop_requested, started_at;

-- name: finish_jobs
-- Final writes of many runs in one statement, each guarded by (instance, attempt).
UPDATE t_job_info AS j
   SET status = f.status,
       percent_completed = coalesce(f.percent, j.percent_completed),
       error_type = f.error_type,
       error_message = f.error_message,
       stack_trace = f.stack_trace,
       result = f.result::jsonb
  FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::integer[], $5::text[], $6::text[],
              $7::text[], $8::text[])
       AS f(id, attempt, status, percent, error_type, error_message, stack_trace, result)
 WHERE j.id = f.id AND j.attempt = f.attempt AND j.instance_id = $9 AND j.status = 'RUNNING'
RETURNING j.id, j.ended_at;

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
