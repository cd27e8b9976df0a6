-- Every statement the store runs, by name. Loaded once at import by jobservice.store;
-- a test prepares each of them against a migrated database.

-- name: insert_and_claim
-- One statement (so one round trip, atomic without an explicit transaction) for a whole
-- intake batch ($1-$16): jobs, their parameters, and one NOTIFY when queued work was
-- created; existing ids are left alone (idempotent resubmission), the ids created come back
-- with created = true. Then, when it created queued work and $18 > 0, the claim of up to $18
-- jobs for instance $17 with its filters ($19-$21) and started classes ($22), in the same
-- transaction; claimed (and expired) rows have created = false. See
-- sql/010_insert_and_claim.sql.
SELECT id, status, tenant, job_class, priority, owner, attempt, created_at, queued_at,
       parameters, max_retries, retry_backoff_s, failures, reschedules, context,
       selected_elements, environment, created
  FROM jobservice_insert_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                   $14, $15, $16, $17, $18, $19::text[], $20::text[],
                                   $21::text[], $22::text[]);

-- name: submit_job
-- One composite submission (dependencies, on_success, steps, elements, environment): see
-- jobservice_submit_job in sql/004_composite_jobs.sql.
SELECT id, status, created FROM jobservice_submit_job($1::jsonb);

-- name: existing_job_ids
SELECT id FROM t_job_info WHERE id = ANY($1::uuid[]);

-- name: notify_work
SELECT pg_notify('jobservice_work', '');

-- name: notify_outbox
SELECT pg_notify('jobservice_outbox', '');

-- name: claim_jobs
-- $3-$5: this instance's claim filters (tenants, excluded tenants, job types; NULL: all);
-- $6: the job classes it runs: those claimed are also started (TO_BE_RUN -> RUNNING) in the
-- same round trip (sql/005_performance.sql).
SELECT id, status, tenant, job_class, priority, owner, attempt, created_at, queued_at,
       parameters, max_retries, retry_backoff_s, failures, reschedules, context,
       selected_elements, environment
  FROM jobservice_claim_and_start($1, $2, $3::text[], $4::text[], $5::text[], $6::text[]);

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

-- name: finish_and_claim
-- Final writes of many runs (each guarded by instance and attempt; a run may also go back to
-- QUEUED with a delay) and the next claim in one round trip; see sql/005_performance.sql.
SELECT id, status, tenant, job_class, priority, owner, attempt, created_at, queued_at,
       parameters, max_retries, retry_backoff_s, failures, reschedules, context,
       selected_elements, environment, finished
  FROM jobservice_finish_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                   $14, $15, $16::text[], $17::text[], $18::text[],
                                   $19::text[]);

-- name: write_completion
-- Completion and the current message (ctx.message) of many running jobs.
UPDATE t_job_info AS j
   SET percent_completed = c.percent,
       message_key = coalesce(c.message_key, j.message_key),
       message_params = CASE WHEN c.message_key IS NULL THEN j.message_params
                             ELSE c.message_params::jsonb END
  FROM unnest($1::uuid[], $2::integer[], $3::integer[], $5::text[], $6::text[])
       AS c(id, attempt, percent, message_key, message_params)
 WHERE j.id = c.id AND j.attempt = c.attempt AND j.instance_id = $4 AND j.status = 'RUNNING'
   AND (j.percent_completed <> c.percent
        OR j.message_key IS DISTINCT FROM coalesce(c.message_key, j.message_key)
        OR (c.message_key IS NOT NULL
            AND j.message_params IS DISTINCT FROM c.message_params::jsonb));

-- name: insert_job_logs
-- Lines of ctx.log and ctx.message (the latter with their key and parameters).
INSERT INTO t_job_log (job_id, attempt, at, level, message, message_key, message_params)
SELECT l.job_id, l.attempt, l.at, l.level, l.message, l.message_key, l.message_params::jsonb
  FROM unnest($1::uuid[], $2::integer[], $3::timestamptz[], $4::text[], $5::text[],
              $6::text[], $7::text[])
       AS l(job_id, attempt, at, level, message, message_key, message_params);

-- name: hand_back
UPDATE t_job_info SET status = 'QUEUED'
 WHERE id = ANY($1::uuid[]) AND instance_id = $2 AND status IN ('TO_BE_RUN', 'RUNNING')
RETURNING id;

-- name: stop_job
SELECT status, instance_id, tenant, job_class, changed FROM jobservice_stop_job($1);

-- name: enqueue_job
-- A job waiting for its dependencies is queued by them, not by `enqueue`.
UPDATE t_job_info SET status = 'QUEUED'
 WHERE id = $1 AND status = 'PENDING' AND dependency_state IS NULL
RETURNING status, tenant, job_class;

-- name: retry_job
-- A job with dependencies can be retried once they all SUCCEEDED (a job ABORTED
-- `dependency_failed` is re-queued by itself when its retried dependency succeeds).
UPDATE t_job_info j SET status = 'QUEUED'
 WHERE j.id = $1 AND j.status IN ('FAILED', 'ABORTED')
   AND NOT EXISTS (SELECT 1 FROM t_job_dependency d JOIN t_job_info o ON o.id = d.depends_on
                    WHERE d.job_id = j.id AND o.status <> 'SUCCEEDED')
RETURNING j.status, j.tenant, j.job_class;

-- name: unfinished_dependencies
SELECT o.id, o.status FROM t_job_dependency d JOIN t_job_info o ON o.id = d.depends_on
 WHERE d.job_id = $1 AND o.status <> 'SUCCEEDED' ORDER BY o.id;

-- name: retry_jobs
-- Kick in bulk (`jobservice jobs retry`): FAILED/ABORTED jobs matching every given filter
-- (NULL: any) go back to QUEUED as a new attempt. Uses t_job_info_failed_idx.
-- Jobs whose dependencies have not all SUCCEEDED are left alone (like the retry control).
UPDATE t_job_info j SET status = 'QUEUED'
 WHERE j.status IN ('FAILED', 'ABORTED')
   AND ($1::uuid IS NULL OR j.id = $1)
   AND ($2::text IS NULL OR j.tenant = $2)
   AND ($3::text IS NULL OR j.job_class = $3)
   AND ($4::text IS NULL OR j.error_type = $4)
   AND NOT EXISTS (SELECT 1 FROM t_job_dependency d JOIN t_job_info o ON o.id = d.depends_on
                    WHERE d.job_id = j.id AND o.status <> 'SUCCEEDED')
RETURNING j.id, j.tenant, j.job_class;

-- name: job_runs
SELECT attempt, instance_id, status, claimed_at, started_at, ended_at, duration_s,
       error_type, error_message, stack_trace
  FROM t_job_run WHERE job_id = $1 ORDER BY attempt;

-- name: job_status
SELECT status FROM t_job_info WHERE id = $1;

-- name: job_tenant
SELECT tenant FROM t_job_info WHERE id = $1;

-- name: job_statuses
SELECT id, status FROM t_job_info WHERE id = ANY($1::uuid[]);

-- name: get_job
SELECT * FROM t_job_info WHERE id = $1;

-- name: list_jobs
-- `jobservice jobs list`: optional filters (NULL: any), newest first, one page (limit, offset).
SELECT id, tenant, job_class, status, priority, owner, context,
       coalesce(dependency_state, 'none') AS dependency_state, percent_completed, created_at,
       updated_at, error_type, message_key, message_params
  FROM t_job_info
 WHERE ($1::text IS NULL OR tenant = $1)
   AND ($2::text[] IS NULL OR status = ANY($2::text[]))
   AND ($3::text IS NULL OR job_class = $3)
   AND ($4::text IS NULL OR owner = $4)
   AND ($5::text IS NULL OR context = $5)
   AND ($6::text IS NULL OR coalesce(dependency_state, 'none') = $6)
 ORDER BY created_at DESC, id DESC
 LIMIT $7 OFFSET $8;

-- name: job_dependencies
SELECT o.id, o.status, o.job_class FROM t_job_dependency d
  JOIN t_job_info o ON o.id = d.depends_on WHERE d.job_id = $1 ORDER BY o.created_at, o.id;

-- name: job_dependents
SELECT j.id, j.status, j.job_class FROM t_job_dependency d
  JOIN t_job_info j ON j.id = d.job_id WHERE d.depends_on = $1 ORDER BY j.created_at, j.id;

-- name: job_on_success
SELECT position, submission FROM t_job_on_success WHERE job_id = $1 ORDER BY position;

-- name: job_log_tail
SELECT attempt, at, level, message, message_key, message_params
  FROM (SELECT * FROM t_job_log WHERE job_id = $1 ORDER BY id DESC LIMIT $2) tail
 ORDER BY id;

-- name: get_parameters
SELECT name, value FROM t_job_parameters WHERE job_id = $1 ORDER BY name;

-- name: stop_requested_jobs
SELECT id FROM t_job_info WHERE instance_id = $1 AND status = 'RUNNING' AND stop_requested;

-- name: fetch_outbox
-- The relay's one statement per round: delete the batches the broker confirmed ($2), read
-- the oldest others (the SELECT sees the rows as before the DELETE, hence the exclusion):
-- whole batches, in order, until $1 events or more (at least one batch), one row per event.
-- Events of pool cycles may be committed without a flush (sql/015): the statement writes
-- (the DELETE, or else the barrier row when it reads events), so its commit flushes the WAL
-- up to it, every commit it saw included, before the rows reach the relay.
WITH confirmed AS (
    DELETE FROM t_job_event_batch WHERE id = ANY($2::bigint[]) RETURNING id
), oldest AS (
    SELECT id, sum(event_count) OVER (ORDER BY id) - event_count AS before
      FROM (SELECT id, event_count FROM t_job_event_batch
             WHERE id <> ALL($2::bigint[]) ORDER BY id LIMIT $1) head
), flushed AS (
    UPDATE t_outbox_flush SET flushes = flushes + 1
     WHERE NOT EXISTS (SELECT 1 FROM confirmed) AND EXISTS (SELECT 1 FROM oldest)
)
SELECT b.id, e.event_id, e.seq, e.routing_key, e.body
  FROM oldest
  JOIN t_job_event_batch b ON b.id = oldest.id
 CROSS JOIN LATERAL unnest(b.events) WITH ORDINALITY
       AS e(event_id, job_id, seq, routing_key, body, position)
 WHERE oldest.before < $1
 ORDER BY b.id, e.position;

-- name: count_jobs
SELECT tenant, status, count(*) AS jobs FROM t_job_info GROUP BY tenant, status;

-- name: outbox_backlog
SELECT coalesce(sum(event_count), 0)::bigint AS events,
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS lag_s
  FROM t_job_event_batch;

-- name: fail_claimed
UPDATE t_job_info SET status = 'FAILED', error_type = $3, error_message = $4
 WHERE id = $1 AND instance_id = $2 AND status = 'TO_BE_RUN';

-- name: renew_lease
SELECT jobservice_renew_lease($1, $2);

-- name: lease_lapsed
SELECT coalesce((SELECT lease_expires_at <= clock_timestamp() FROM t_instance
                  WHERE instance_id = $1), true);

-- name: release_lease
WITH unmarked AS (DELETE FROM t_server_mark WHERE instance_id = $1)
DELETE FROM t_instance WHERE instance_id = $1;

-- name: server_crashed
-- Whether the database server crashed since this instance last looked ($1's row of the
-- unlogged t_server_mark is gone: crash recovery empties it); marks it again. True at the
-- first look of an instance.
WITH seen AS (
    SELECT 1 FROM t_server_mark WHERE instance_id = $1
), marked AS (
    INSERT INTO t_server_mark (instance_id) VALUES ($1) ON CONFLICT DO NOTHING
)
SELECT NOT EXISTS (SELECT 1 FROM seen);

-- name: take_back_unheld
-- Jobs recorded as claimed or running by instance $1 that it does not hold ($2): a cycle
-- rolled back by a crash of the server (sql/015), or a claim whose reply was lost. Back to
-- QUEUED, or FAILED `lost` for a job that must not run twice, as a rescue does.
UPDATE t_job_info j
   SET status = CASE WHEN j.at_most_once AND j.status = 'RUNNING' THEN 'FAILED'
                     ELSE 'QUEUED' END,
       error_type = CASE WHEN j.at_most_once AND j.status = 'RUNNING' THEN 'lost'
                         ELSE j.error_type END,
       error_message = CASE WHEN j.at_most_once AND j.status = 'RUNNING'
                            THEN 'instance ' || $1 || ' lost track of this job while it ran'
                            ELSE j.error_message END
 WHERE j.instance_id = $1 AND j.status IN ('TO_BE_RUN', 'RUNNING')
   AND j.id <> ALL ($2::uuid[])
RETURNING j.id, j.status, j.tenant, j.job_class;

-- name: rescue_orphans
-- Also forgets the server marks of instances no longer registered: a killed instance never
-- releases its mark, and the function forgets instances dead for a day.
WITH forgotten_marks AS (
    DELETE FROM t_server_mark m
     WHERE NOT EXISTS (SELECT 1 FROM t_instance i WHERE i.instance_id = m.instance_id)
)
SELECT id, status, instance_id, tenant, job_class FROM jobservice_rescue_orphans($1);
