"""The batched paths of issue 7 keep their guarantees: claim-and-start keeps both
transitions and their events in order; a job the instance cannot prepare still fails with
its reason; the relay leaves nothing behind once caught up; one multiple ack per intake
batch, only after the commit."""

from __future__ import annotations

import json
import uuid

import asyncpg

from jobservice.client import JobClient
from tests.conftest import ServiceFactory, wait_for_all, wait_for_status, wait_until
from tests.integration.test_scheduling import insert_queued
from tests.support.amqp import queue_depth


async def test_claim_and_start_writes_both_transitions_each_with_its_event(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(pool_size=8)
    async with client.subscribe("#") as events:
        replies = [await client.submit(f"t{n % 3}", "jobservice.noop") for n in range(30)]
        ids = [r.id for r in replies if r is not None and r.id is not None]
        seen = await wait_for_all(events, ids, "SUCCEEDED")
    for job_events in seen.values():
        assert [(e.previous_status, e.status) for e in job_events] == [
            (None, "QUEUED"), ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING"),
            ("RUNNING", "SUCCEEDED")]
    rows = await db.fetch("SELECT attempt, started_at, ended_at FROM t_job_info")
    assert all(r["attempt"] == 1 and r["started_at"] <= r["ended_at"] for r in rows)


async def test_a_claim_starts_its_jobs_in_one_row_update_with_both_events(
    db: asyncpg.Connection,
) -> None:
    """sql/008: QUEUED -> RUNNING in one update, the outbox as if there had been two; a class
    the instance does not run stays TO_BE_RUN; the start list holds for the claim only."""
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    [runnable] = await insert_queued(db, "alpha", 1)
    [foreign] = await insert_queued(db, "beta", 1, job_class="elsewhere.only")
    [later] = await insert_queued(db, "gamma", 1)
    async with db.transaction():
        claimed = await db.fetch("SELECT id, status FROM jobservice_claim_and_start("
                                 "'i1', 2, ARRAY['alpha', 'beta'], NULL, NULL, "
                                 "ARRAY['jobservice.noop'])")
        # the same transaction claims on by hand, as an older claimer would: no start
        await db.execute("UPDATE t_job_info SET status = 'TO_BE_RUN', instance_id = 'i1' "
                         "WHERE id = $1", later)
    assert {(r["id"], r["status"]) for r in claimed} == {(runnable, "RUNNING"),
                                                         (foreign, "TO_BE_RUN")}
    rows = {r["id"]: r for r in await db.fetch(
        "SELECT id, status, transition_seq, claimed_at, started_at FROM t_job_info")}
    assert rows[runnable]["started_at"] == rows[runnable]["claimed_at"] is not None
    assert rows[runnable]["transition_seq"] == 3
    assert (rows[later]["status"], rows[later]["started_at"]) == ("TO_BE_RUN", None)
    events = await db.fetch(
        "SELECT job_id, seq, routing_key, event_id, body FROM t_job_event_outbox "
        "ORDER BY id, position")
    mine = [e for e in events if e["job_id"] == runnable]
    assert [(e["seq"], e["routing_key"]) for e in mine] == [
        (1, "alpha.queued"), (2, "alpha.to_be_run"), (3, "alpha.running")]
    bodies = [json.loads(e["body"]) for e in mine]
    assert [(b["previous_status"], b["status"]) for b in bodies] == [
        (None, "QUEUED"), ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING")]
    assert len({e["event_id"] for e in mine}) == 3
    assert all(str(e["event_id"]) == json.loads(e["body"])["event_id"] for e in events)
    assert [e["routing_key"] for e in events if e["job_id"] == foreign] == [
        "beta.queued", "beta.to_be_run"]
    # a claim that names no classes starts nothing
    [other] = await insert_queued(db, "delta", 1)
    await db.fetch("SELECT * FROM jobservice_claim_and_start('i1', 1, ARRAY['delta'], NULL, "
                   "NULL, '{}')")
    assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1", other) == "TO_BE_RUN"


async def test_a_claimed_job_of_a_class_unknown_here_fails_from_to_be_run(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service()
    async with client.subscribe("#") as events:
        [job_id] = await insert_queued(db, "alpha", 1, job_class="elsewhere.only")
        await db.execute("SELECT pg_notify('jobservice_work', '')")
        seen = await wait_for_status(events, job_id, "FAILED")
    assert [(e.previous_status, e.status) for e in seen] == [
        (None, "QUEUED"), ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "FAILED")]
    assert seen[-1].error is not None and seen[-1].error.type == "unknown_job_class"


async def test_a_started_job_whose_parameters_no_longer_fit_fails_with_the_reason(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    service = await start_service(pool_size=2)
    async with client.subscribe("#") as events:
        [job_id] = await insert_queued(db, "alpha", 1, job_class="jobservice.sleep")
        await db.execute("INSERT INTO t_job_parameters (job_id, name, value) "
                         "VALUES ($1, 'seconds', '\"soon\"')", job_id)
        await db.execute("SELECT pg_notify('jobservice_work', '')")
        seen = await wait_for_status(events, job_id, "FAILED")
        ok = await client.submit("alpha", "jobservice.noop")  # the slot came back
        assert ok is not None and ok.id is not None
        await wait_for_status(events, ok.id, "SUCCEEDED")
    assert [(e.previous_status, e.status) for e in seen] == [
        (None, "QUEUED"), ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING"),
        ("RUNNING", "FAILED")]
    assert seen[-1].error is not None and seen[-1].error.type == "invalid_parameters"
    pool = service.pool
    assert pool is not None

    async def slot_freed() -> bool:  # a final write's event may come before the bookkeeping
        return pool.busy == 0

    await wait_until(slot_freed, timeout=10)


async def test_the_relay_deletes_every_confirmed_event_once_caught_up(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service()
    async with client.subscribe("#") as events:
        ids = [str(uuid.uuid4()) for _ in range(120)]
        await client.submit_many([{"id": i, "tenant": "alpha", "job_class": "jobservice.noop"}
                                  for i in ids])
        await wait_for_all(events, ids, "SUCCEEDED", timeout=60)

    async def outbox_empty() -> bool:
        return await db.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0

    await wait_until(outbox_empty, timeout=10)
    per_job = await db.fetch("SELECT transition_seq FROM t_job_info")
    assert {r["transition_seq"] for r in per_job} == {4}


async def test_every_submission_of_a_batch_is_acknowledged_after_its_commit(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    service = await start_service(intake_batch_size=50)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    async with client.subscribe("*.queued") as events:
        await client.submit_many([{"id": i, "tenant": "alpha", "job_class": "tests.wait_forever"}
                                  for i in ids])
        await wait_for_all(events, ids, "QUEUED", timeout=30)
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 200
    service.request_stop()
    broker = service.broker
    assert broker is not None

    async def closed() -> bool:
        return not broker.connected

    await wait_until(closed, timeout=30)
    # unacknowledged messages would be back in the queue once the instance let go of them
    assert await queue_depth(service.settings.submit_queue) == 0


async def test_final_writes_that_claim_never_run_more_jobs_than_the_pool(
    start_service: ServiceFactory, db: asyncpg.Connection
) -> None:
    await insert_queued(db, "a", 60)
    await insert_queued(db, "b", 60)
    service = await start_service(pool_size=3)

    async def all_succeeded() -> bool:
        return await db.fetchval(
            "SELECT count(*) FROM t_job_info WHERE status = 'SUCCEEDED'") == 120

    await wait_until(all_succeeded, timeout=60)
    rows = await db.fetch("SELECT started_at, ended_at FROM t_job_info")
    moments = sorted([(r["started_at"], 1) for r in rows] + [(r["ended_at"], -1) for r in rows])
    running, most = 0, 0
    for _, step in moments:  # an end before a start at the same instant
        running += step
        most = max(most, running)
    assert most <= 3
    assert service.scheduler is not None and service.pool is not None
    pool = service.pool

    async def idle() -> bool:  # the last commit lands before the pool's bookkeeping
        return pool.busy == 0

    await wait_until(idle, timeout=10)
    # most of the work was claimed by final writes, not by separate claims
    assert service.scheduler.claims < 120 / 3


async def test_a_stop_notice_during_a_claim_stops_the_job_it_starts(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    """A claim starts jobs (RUNNING) in the database before they run here: a stop notice that
    arrives meanwhile (the job is not in the pool yet) must still stop the job once it runs."""
    service = await start_service(pool_size=2)
    pool = service.pool
    assert pool is not None
    async with client.subscribe("#") as events:
        pool.claim_begins()  # as if a claim were in flight
        try:
            [job_id] = await insert_queued(db, "alpha", 1, job_class="tests.wait_forever")
            assert pool.cancel(job_id, "stop") is False  # not here yet: kept for the launch
            await db.execute("SELECT pg_notify('jobservice_work', '')")
            seen = await wait_for_status(events, job_id, "ABORTED")
        finally:
            pool.claim_ends()
    assert [e.status for e in seen][-3:] == ["TO_BE_RUN", "RUNNING", "ABORTED"]
    assert seen[-1].error is not None and seen[-1].error.type == "stopped"


async def test_only_an_instance_with_a_live_lease_claims(db: asyncpg.Connection) -> None:
    """The lease check of every claim (PL/pgSQL since sql/008): no lease, or a lapsed one,
    claims nothing; a live one claims."""
    await insert_queued(db, "alpha", 2)

    async def claim_one() -> int:
        return len(await db.fetch("SELECT * FROM jobservice_claim_and_start("
                                  "'i1', 1, NULL, NULL, NULL, ARRAY['jobservice.noop'])"))

    assert await claim_one() == 0
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    await db.execute("UPDATE t_instance SET lease_expires_at = clock_timestamp() "
                     "- interval '1 s' WHERE instance_id = 'i1'")
    assert await claim_one() == 0
    await db.execute("UPDATE t_instance SET lease_expires_at = clock_timestamp() "
                     "+ interval '1 min' WHERE instance_id = 'i1'")
    assert await claim_one() == 1


async def test_the_events_of_an_insert_are_one_per_inserted_row(db: asyncpg.Connection) -> None:
    """sql/008, 3.: one statement-level trigger writes the events of a multi-row insert; a row
    that ON CONFLICT DO NOTHING drops (a resubmitted id) has none."""
    ids = await insert_queued(db, "alpha", 3)
    await db.execute(
        "INSERT INTO t_job_info (id, tenant, job_class, status, owner) "
        "VALUES ($1, 'alpha', 'jobservice.noop', 'QUEUED', 'again'), "
        "(gen_random_uuid(), 'beta', 'jobservice.noop', 'PENDING', 'new') "
        "ON CONFLICT (id) DO NOTHING", ids[0])
    events = await db.fetch(
        "SELECT job_id, seq, routing_key, event_id, body FROM t_job_event_outbox "
        "ORDER BY id, position")
    assert len(events) == 4 and len({e["event_id"] for e in events}) == 4
    assert sorted(e["routing_key"] for e in events) == [
        "alpha.queued", "alpha.queued", "alpha.queued", "beta.pending"]
    for event in events:
        body = json.loads(event["body"])
        assert event["seq"] == 1 and body["previous_status"] is None
        assert body["event_id"] == str(event["event_id"])
        assert body["job_id"] == str(event["job_id"])
        assert body["status"] == event["routing_key"].split(".")[1].upper()
        assert body["owner"] in (None, "new") and body["percent_completed"] == 0
        assert set(body) == {"event_id", "job_id", "tenant", "job_class", "status",
                             "previous_status", "percent_completed", "at", "owner", "error",
                             "result", "context", "message"}
