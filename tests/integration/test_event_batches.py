"""The outbox holds one row per statement (sql/011_event_batches.sql): its events in job and
transition order; statements that change nothing an event shows write none; the relay reads
whole batches until its limit and deletes what the broker confirmed; a job's own event comes
before the events of the dependents it releases."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from jobservice.store import Store
from tests.integration.test_scheduling import claim, insert_queued


async def batch_sizes(db: asyncpg.Connection) -> list[int]:
    return [r["event_count"] for r in await db.fetch(
        "SELECT event_count FROM t_job_event_batch ORDER BY id")]


async def test_a_statement_writes_one_batch_in_job_and_transition_order(
    db: asyncpg.Connection,
) -> None:
    jobs = await insert_queued(db, "alpha", 3)
    assert await batch_sizes(db) == [3]
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    assert len(await claim(db, "i1")) == 3  # claimed and started: two events each
    assert await batch_sizes(db) == [3, 6]
    batch = await db.fetchval("SELECT max(id) FROM t_job_event_batch")
    events = await db.fetch("SELECT job_id, seq, routing_key, event_id, body "
                            "FROM t_job_event_outbox WHERE id = $1 ORDER BY position", batch)
    assert [(e["job_id"], e["seq"], e["routing_key"]) for e in events] == [
        (job, seq, key) for job in sorted(jobs)
        for seq, key in ((2, "alpha.to_be_run"), (3, "alpha.running"))]
    bodies = [json.loads(e["body"]) for e in events]
    assert [(b["previous_status"], b["status"]) for b in bodies[:2]] == [
        ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING")]
    assert all(b["event_id"] == str(e["event_id"]) and b["job_id"] == str(e["job_id"])
               for b, e in zip(bodies, events, strict=True))
    # no event: a field no event shows, and a statement that updates nothing
    await db.execute("UPDATE t_job_info SET description = 'renamed'")
    await db.execute("UPDATE t_job_info SET status = 'ABORTED' WHERE false")
    assert await batch_sizes(db) == [3, 6]
    await db.execute("UPDATE t_job_info SET percent_completed = 40 WHERE id = $1", jobs[0])
    assert await batch_sizes(db) == [3, 6, 1]
    [progress] = await db.fetch("SELECT routing_key, body FROM t_job_event_outbox "
                                "WHERE id = (SELECT max(id) FROM t_job_event_batch)")
    assert progress["routing_key"] == "alpha.progress"
    assert json.loads(progress["body"])["percent_completed"] == 40


async def test_a_large_statement_writes_batches_of_at_most_500_events_in_order(
    db: asyncpg.Connection,
) -> None:
    await insert_queued(db, "alpha", 1201)
    assert await batch_sizes(db) == [500, 500, 201]
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    await db.execute("UPDATE t_job_info SET status = 'TO_BE_RUN', instance_id = 'i1', "
                     "attempt = 1")  # not started (no class named): one event each
    assert await batch_sizes(db) == [500, 500, 201, 500, 500, 201]
    jobs = [r["job_id"] for r in await db.fetch(
        "SELECT job_id FROM t_job_event_outbox WHERE seq = 2 ORDER BY id, position")]
    assert jobs == sorted(jobs) and len(set(jobs)) == 1201


async def test_the_relay_reads_whole_batches_until_its_limit_and_deletes_them(
    store: Store, db: asyncpg.Connection,
) -> None:
    for count in (2, 3, 4):
        await insert_queued(db, "alpha", count)
    first = await store.fetch_outbox(4)  # 2 + 3 events reach the limit: two batches
    assert len(first) == 5 and len({e.id for e in first}) == 2
    assert await store.outbox_backlog() == (9, pytest.approx(0, abs=60))
    second = await store.fetch_outbox(1, sorted({e.id for e in first}))
    assert len(second) == 4 and len({e.id for e in second}) == 1  # at least one batch
    assert await store.fetch_outbox(10, [second[0].id]) == []
    assert await batch_sizes(db) == []
    assert (await store.outbox_backlog())[0] == 0


async def test_a_jobs_own_event_comes_before_those_of_the_dependents_it_releases(
    db: asyncpg.Connection,
) -> None:
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    [parent] = await insert_queued(db, "alpha", 1)
    dependents = [uuid.uuid4(), uuid.uuid4()]
    for dependent in dependents:
        await db.execute("INSERT INTO t_job_info (id, tenant, job_class, status, "
                         "dependency_state) VALUES ($1, 'beta', 'jobservice.noop', 'PENDING', "
                         "'waiting')", dependent)
        await db.execute("INSERT INTO t_job_dependency (job_id, depends_on) VALUES ($1, $2)",
                         dependent, parent)
    assert [r["id"] for r in await claim(db, "i1")] == [parent]
    await db.execute("UPDATE t_job_info SET status = 'SUCCEEDED' WHERE id = $1", parent)
    events = [(e["job_id"], e["routing_key"]) for e in await db.fetch(
        "SELECT job_id, routing_key FROM t_job_event_outbox ORDER BY id, position")]
    ended = events.index((parent, "alpha.succeeded"))
    assert all(events.index((d, "beta.queued")) > ended for d in dependents)
