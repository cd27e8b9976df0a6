-- Instance leases and rescue of the jobs of dead instances.

-- A job type that must not run twice says so at submission (Job.run_at_most_once); a lost
-- run of such a job ends FAILED (`lost`) instead of going back to QUEUED.
ALTER TABLE t_job_info ADD COLUMN at_most_once boolean NOT NULL DEFAULT false;

CREATE TABLE t_instance (
    instance_id      text        PRIMARY KEY,
    started_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_expires_at timestamptz NOT NULL
);

-- Claims need a live lease: jobs claimed under it cannot be rescued while it lives, and an
-- instance whose lease lapsed claims nothing until it has handed its jobs back.
CREATE OR REPLACE FUNCTION jobservice_may_claim(p_instance text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM t_instance
                    WHERE instance_id = p_instance AND lease_expires_at > clock_timestamp())
$$;

-- Renew (or take) this instance's lease; returns false when the lease had already expired,
-- i.e. other instances may have rescued its jobs: the caller must drop them.
CREATE FUNCTION jobservice_renew_lease(p_instance text, p_timeout_s double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := clock_timestamp();
    v_expired boolean;
BEGIN
    SELECT lease_expires_at < v_now INTO v_expired FROM t_instance
     WHERE instance_id = p_instance FOR UPDATE;
    INSERT INTO t_instance (instance_id, heartbeat_at, lease_expires_at)
    VALUES (p_instance, v_now, v_now + make_interval(secs => p_timeout_s))
    ON CONFLICT (instance_id) DO UPDATE
        SET heartbeat_at = EXCLUDED.heartbeat_at, lease_expires_at = EXCLUDED.lease_expires_at;
    RETURN NOT coalesce(v_expired, false);
END
$$;

-- Jobs claimed or running under an instance without a live lease go back to QUEUED (a new
-- attempt), or end FAILED (`lost`) when they ran and must not run twice. Each is a normal
-- transition with its event. Runs in any live instance; SKIP LOCKED keeps them apart.
CREATE FUNCTION jobservice_rescue_orphans(p_limit integer)
RETURNS TABLE (id uuid, status text, instance_id text, tenant text, job_class text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH orphans AS (
        SELECT j.id, j.instance_id AS lost_instance,
               (j.at_most_once AND j.status = 'RUNNING') AS fail_it
          FROM t_job_info j
         WHERE j.status IN ('TO_BE_RUN', 'RUNNING')
           AND NOT EXISTS (SELECT 1 FROM t_instance i
                            WHERE i.instance_id = j.instance_id
                              AND i.lease_expires_at > clock_timestamp())
         LIMIT p_limit
           FOR UPDATE OF j SKIP LOCKED
    )
    UPDATE t_job_info j
       SET status = CASE WHEN o.fail_it THEN 'FAILED' ELSE 'QUEUED' END,
           error_type = CASE WHEN o.fail_it THEN 'lost' ELSE j.error_type END,
           error_message = CASE WHEN o.fail_it
                                THEN 'instance ' || o.lost_instance || ' was lost while it ran this job'
                                ELSE j.error_message END
      FROM orphans o
     WHERE j.id = o.id
    RETURNING j.id, j.status, o.lost_instance, j.tenant, j.job_class;
    IF FOUND THEN
        PERFORM pg_notify('jobservice_work', '');
    END IF;
    -- forget instances dead for a day
    DELETE FROM t_instance WHERE lease_expires_at < clock_timestamp() - interval '1 day';
END
$$;
