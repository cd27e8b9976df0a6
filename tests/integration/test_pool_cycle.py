"""A pool's cycle is one UPDATE (sql/013): the final writes of the runs that ended and the
claim of the slots they free, in one statement, with one event batch whose ends of runs come
before its claims; a final write held up by a concurrent write of the same row still applies."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from jobservice.model import JobStatus
from jobservice.store import FinishedRun, Store
from tests.integration.test_scheduling import claim, insert_queued


def succeeded(rows: list[asyncpg.Record]) -> list[FinishedRun]:
    return [FinishedRun(r["id"], r["attempt"], JobStatus.SUCCEEDED, 100) for r in rows]


async def test_final_writes_and_claims_are_one_update_with_ends_first_in_its_events(
    store: Store, db: asyncpg.Connection
) -> None:
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    await insert_queued(db, "t", 4)
    running = await claim(db, "i1")
    queued = await insert_queued(db, "t", 3)
    batches_before = await db.fetchval("SELECT max(id) FROM t_job_event_batch")

    applied, claimed, expired = await store.finish_and_claim(
        succeeded(running), "i1", 3, runnable=["jobservice.noop"])

    assert applied == {r["id"] for r in running} and expired == []
    assert {c.id for c in claimed} == set(queued)
    statuses = dict(await db.fetch("SELECT id, status FROM t_job_info"))
    assert {statuses[r["id"]] for r in running} == {"SUCCEEDED"}
    assert {statuses[i] for i in queued} == {"RUNNING"}
    [batch] = await db.fetch("SELECT events FROM t_job_event_batch WHERE id > $1",
                             batches_before)  # one statement, one batch
    kinds = [json.loads(e["body"])["status"] for e in batch["events"]]
    # every end before any claim: counted from the events, never more than the pool
    assert kinds == ["SUCCEEDED"] * 4 + ["TO_BE_RUN", "RUNNING"] * 3


async def test_a_final_write_waiting_for_a_completion_write_of_its_row_still_applies(
    store: Store, db: asyncpg.Connection, database_url: str
) -> None:
    """Postgres rechecks a row updated meanwhile against the rest of the statement's join;
    with the claims appended to the runs in a UNION ALL that recheck missed and the final
    write of such a row was silently not applied (the job stayed RUNNING)."""
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    await insert_queued(db, "t", 3)
    running = await claim(db, "i1")
    await insert_queued(db, "t", 2)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("UPDATE t_job_info SET percent_completed = 50 "
                                "WHERE id = ANY($1::uuid[])", [r["id"] for r in running])
            cycle = asyncio.create_task(store.finish_and_claim(
                succeeded(running), "i1", 3, runnable=["jobservice.noop"]))
            await asyncio.sleep(0.3)
            assert not cycle.done()  # waiting for the completion write's row locks
        applied, claimed, _ = await cycle
    finally:
        await other.close()
    assert applied == {r["id"] for r in running}
    assert len(claimed) == 2
    assert await db.fetchval("SELECT count(*) FROM t_job_info WHERE status = 'SUCCEEDED'") == 3
