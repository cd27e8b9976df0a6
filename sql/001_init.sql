-- jobservice schema, version 1: jobs, parameters, transactional outbox, tenant turns.

CREATE TABLE t_job_info (
    id                uuid PRIMARY KEY,
    tenant            text        NOT NULL,
    job_class         text        NOT NULL,
    status            text        NOT NULL CHECK (status IN
                          ('PENDING', 'QUEUED', 'TO_BE_RUN', 'RUNNING',
                           'SUCCEEDED', 'FAILED', 'ABORTED')),
    priority          integer     NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 1000),
    description       text,
    owner             text,
    percent_completed smallint    NOT NULL DEFAULT 0 CHECK (percent_completed BETWEEN 0 AND 100),
    expiration_date   timestamptz,
    -- attempt and instance_id own the current run: every later write of the run is guarded
    -- by both, so an instance that lost a job cannot overwrite the next attempt.
    attempt           integer     NOT NULL DEFAULT 0,
    instance_id       text,
    stop_requested    boolean     NOT NULL DEFAULT false,
    -- transition counter: the n-th status change of this job (events carry it in the outbox)
    transition_seq    integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    queued_at         timestamptz,
    started_at        timestamptz,
    ended_at          timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    error_type        text,
    error_message     text,
    stack_trace       text,
    result            jsonb
);

-- The claim walks this index only: tenants with queued work (loose index scan), then each
-- tenant's best job. Its size is the queued set, not the table.
CREATE INDEX t_job_info_queued_idx
    ON t_job_info (tenant, priority DESC, queued_at, id) WHERE status = 'QUEUED';
CREATE INDEX t_job_info_claimed_idx
    ON t_job_info (instance_id) WHERE status IN ('TO_BE_RUN', 'RUNNING');
CREATE INDEX t_job_info_tenant_status_idx ON t_job_info (tenant, status);

CREATE TABLE t_job_parameters (
    job_id uuid  NOT NULL REFERENCES t_job_info (id) ON DELETE CASCADE,
    name   text  NOT NULL,
    value  jsonb NOT NULL,
    PRIMARY KEY (job_id, name)
);

-- One row per finished attempt that was sent back to QUEUED (retry): the old error stays here.
CREATE TABLE t_job_run (
    job_id        uuid        NOT NULL REFERENCES t_job_info (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    instance_id   text,
    status        text        NOT NULL,
    started_at    timestamptz,
    ended_at      timestamptz,
    error_type    text,
    error_message text,
    stack_trace   text,
    PRIMARY KEY (job_id, attempt)
);

-- Transactional outbox: written by the trigger below in the transaction of the change,
-- published by the relay (publisher confirms), deleted once confirmed.
CREATE TABLE t_job_event_outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL,
    job_id      uuid        NOT NULL,
    seq         integer     NOT NULL,
    routing_key text        NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Round robin over tenants: the tenant served longest ago goes first.
CREATE SEQUENCE t_tenant_turn_seq;
CREATE TABLE t_tenant_turn (
    tenant    text   PRIMARY KEY,
    last_turn bigint NOT NULL
);

CREATE FUNCTION jobservice_transition_allowed(old_status text, new_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE new_status
        WHEN 'QUEUED'    THEN old_status IN ('PENDING', 'TO_BE_RUN', 'RUNNING', 'FAILED', 'ABORTED')
        WHEN 'TO_BE_RUN' THEN old_status = 'QUEUED'
        WHEN 'RUNNING'   THEN old_status = 'TO_BE_RUN'
        WHEN 'SUCCEEDED' THEN old_status = 'RUNNING'
        WHEN 'FAILED'    THEN old_status IN ('QUEUED', 'TO_BE_RUN', 'RUNNING')
        WHEN 'ABORTED'   THEN old_status IN ('PENDING', 'QUEUED', 'TO_BE_RUN', 'RUNNING')
        ELSE false
    END
$$;

-- Every status change (and every completion write) of a job goes through these triggers:
-- the BEFORE trigger refuses transitions outside the table and keeps the bookkeeping
-- (timestamps, transition number, history of retried attempts); the AFTER trigger writes
-- exactly one event into the outbox in the same transaction. AFTER, because a BEFORE INSERT
-- trigger also fires for rows that ON CONFLICT DO NOTHING then drops (a resubmitted id).
-- No code path can change a status without its event.
CREATE FUNCTION jobservice_before_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
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
        IF NEW.percent_completed IS DISTINCT FROM OLD.percent_completed THEN
            NEW.transition_seq := OLD.transition_seq + 1;  -- progress events are numbered too
        END IF;
        RETURN NEW;
    END IF;
    IF NOT jobservice_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'jobservice: transition % -> % of job % is not allowed',
            OLD.status, NEW.status, OLD.id USING ERRCODE = 'check_violation';
    END IF;
    NEW.transition_seq := OLD.transition_seq + 1;
    CASE NEW.status
        WHEN 'QUEUED' THEN
            NEW.queued_at := v_now;
            IF OLD.status IN ('SUCCEEDED', 'FAILED', 'ABORTED') THEN
                INSERT INTO t_job_run (job_id, attempt, instance_id, status, started_at,
                                       ended_at, error_type, error_message, stack_trace)
                VALUES (OLD.id, OLD.attempt, OLD.instance_id, OLD.status, OLD.started_at,
                        OLD.ended_at, OLD.error_type, OLD.error_message, OLD.stack_trace)
                ON CONFLICT (job_id, attempt) DO NOTHING;
                NEW.error_type := NULL; NEW.error_message := NULL; NEW.stack_trace := NULL;
                NEW.result := NULL; NEW.ended_at := NULL; NEW.started_at := NULL;
                NEW.percent_completed := 0;
            END IF;
            NEW.instance_id := NULL;
            NEW.stop_requested := false;
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

CREATE FUNCTION jobservice_after_job_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_prev     text;
    v_kind     text;
    v_event_id uuid := gen_random_uuid();
    v_error    jsonb;
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
    INSERT INTO t_job_event_outbox (event_id, job_id, seq, routing_key, body)
    VALUES (v_event_id, NEW.id, NEW.transition_seq, NEW.tenant || '.' || v_kind,
            jsonb_build_object(
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
                'result', NEW.result));
    RETURN NULL;
END
$$;

CREATE TRIGGER t_job_info_before_write
    BEFORE INSERT OR UPDATE ON t_job_info
    FOR EACH ROW EXECUTE FUNCTION jobservice_before_job_write();

CREATE TRIGGER t_job_info_event_on_insert
    AFTER INSERT ON t_job_info
    FOR EACH ROW EXECUTE FUNCTION jobservice_after_job_write();

CREATE TRIGGER t_job_info_event_on_change
    AFTER UPDATE ON t_job_info
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.percent_completed IS DISTINCT FROM NEW.percent_completed)
    EXECUTE FUNCTION jobservice_after_job_write();

-- Whether an instance may claim now (redefined by 002 to require a live lease).
CREATE FUNCTION jobservice_may_claim(p_instance text) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT true $$;

-- Claim up to p_limit queued jobs for p_instance: round robin over the tenants that have
-- work (least recently served first), priority then age within a tenant. Expired jobs met
-- on the way end FAILED (error type `expired`); they are returned too, with that status.
-- The parameters are read inside the function: its statements see rows committed after the
-- calling statement's snapshot, which a subquery in the caller would not.
CREATE FUNCTION jobservice_claim_jobs(p_instance text, p_limit integer)
RETURNS TABLE (id uuid, status text, tenant text, job_class text, priority integer,
               owner text, attempt integer, created_at timestamptz, queued_at timestamptz,
               parameters jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids     uuid[] := '{}';
    v_expired uuid[] := '{}';
    v_active  text[];
    v_next    text[];
    v_served  text[] := '{}';
    v_tenant  text;
    v_job     t_job_info;
    v_claimed integer := 0;
BEGIN
    IF p_limit <= 0 OR NOT jobservice_may_claim(p_instance) THEN
        RETURN;
    END IF;
    -- One claimer at a time across instances, so the round robin is global. Held for the
    -- (short) claim transaction only.
    PERFORM pg_advisory_xact_lock(7310001);

    WITH RECURSIVE queued_tenants AS (
        (SELECT j.tenant FROM t_job_info j WHERE j.status = 'QUEUED' ORDER BY j.tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant FROM t_job_info j
                 WHERE j.status = 'QUEUED' AND j.tenant > q.tenant
                 ORDER BY j.tenant LIMIT 1)
          FROM queued_tenants q WHERE q.tenant IS NOT NULL
    )
    SELECT array_agg(q.tenant ORDER BY t.last_turn NULLS FIRST, q.tenant)
      INTO v_active
      FROM queued_tenants q LEFT JOIN t_tenant_turn t ON t.tenant = q.tenant
     WHERE q.tenant IS NOT NULL;

    WHILE v_claimed < p_limit AND coalesce(cardinality(v_active), 0) > 0 LOOP
        v_next := '{}';
        FOREACH v_tenant IN ARRAY v_active LOOP
            EXIT WHEN v_claimed >= p_limit;
            LOOP
                SELECT * INTO v_job FROM t_job_info j
                 WHERE j.status = 'QUEUED' AND j.tenant = v_tenant
                 ORDER BY j.priority DESC, j.queued_at, j.id
                 LIMIT 1 FOR UPDATE SKIP LOCKED;
                EXIT WHEN NOT FOUND;
                IF v_job.expiration_date IS NOT NULL AND v_job.expiration_date <= clock_timestamp() THEN
                    UPDATE t_job_info SET status = 'FAILED', error_type = 'expired',
                           error_message = 'expired at ' || v_job.expiration_date || ' before it could run'
                     WHERE id = v_job.id;
                    v_expired := array_append(v_expired, v_job.id);
                    CONTINUE;
                END IF;
                UPDATE t_job_info SET status = 'TO_BE_RUN', instance_id = p_instance,
                       attempt = attempt + 1
                 WHERE id = v_job.id;
                v_ids := array_append(v_ids, v_job.id);
                v_claimed := v_claimed + 1;
                v_next := array_append(v_next, v_tenant);
                v_served := array_append(v_served, v_tenant);
                EXIT;
            END LOOP;
        END LOOP;
        v_active := v_next;
    END LOOP;

    INSERT INTO t_tenant_turn (tenant, last_turn)
    SELECT s.tenant, nextval('t_tenant_turn_seq')
      FROM (SELECT u.tenant, max(u.ord) AS ord
              FROM unnest(v_served) WITH ORDINALITY AS u(tenant, ord)
             GROUP BY u.tenant) s
     ORDER BY s.ord
    ON CONFLICT (tenant) DO UPDATE SET last_turn = EXCLUDED.last_turn;

    RETURN QUERY
        SELECT j.id, j.status, j.tenant, j.job_class, j.priority, j.owner, j.attempt,
               j.created_at, j.queued_at,
               (SELECT jsonb_object_agg(p.name, p.value) FROM t_job_parameters p
                 WHERE p.job_id = j.id)
          FROM unnest(v_ids || v_expired) WITH ORDINALITY AS c(id, ord)
          JOIN t_job_info j ON j.id = c.id
         ORDER BY c.ord;
END
$$;

-- stop: a job not yet running ends ABORTED here; a running one is flagged and its instance
-- told through NOTIFY, which cancels it and writes ABORTED itself.
CREATE FUNCTION jobservice_stop_job(p_id uuid)
RETURNS TABLE (status text, instance_id text, tenant text, job_class text, changed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_job t_job_info;
BEGIN
    SELECT * INTO v_job FROM t_job_info j WHERE j.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_job.status IN ('PENDING', 'QUEUED', 'TO_BE_RUN') THEN
        UPDATE t_job_info SET status = 'ABORTED', error_type = 'stopped',
               error_message = 'stopped before it ran'
         WHERE id = p_id RETURNING * INTO v_job;
    ELSIF v_job.status = 'RUNNING' THEN
        UPDATE t_job_info SET stop_requested = true WHERE id = p_id;
        PERFORM pg_notify('jobservice_stop', p_id::text);
    END IF;
    status := v_job.status;
    instance_id := v_job.instance_id;
    tenant := v_job.tenant;
    job_class := v_job.job_class;
    changed := v_job.status = 'ABORTED' AND v_job.error_type = 'stopped'
               AND v_job.ended_at >= now();  -- aborted by this very call
    RETURN NEXT;
END
$$;
