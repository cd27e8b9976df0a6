"""A pool cycle commits without waiting for its WAL flush (sql/015, JOBSERVICE_CYCLE_COMMIT),
and what keeps that safe: the relay publishes only flushed events, a cycle with a job that must
not run twice waits for its flush, and an instance takes back the jobs recorded as its own
that it does not hold (after a crash of the server undid its last cycles, or a lost reply)."""

from __future__ import annotations

import asyncio

import asyncpg

from jobservice.store import CycleCommit, Store
from tests.conftest import ServiceFactory, wait_until
from tests.integration.test_scheduling import claim, insert_queued
from tests.support.amqp import metric_value

_NO_RUNS = "'{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}'"


async def commit_mode_of_a_cycle(database_url: str, cycle_commit: CycleCommit | None) -> str:
    """`synchronous_commit` as a cycle that claims leaves it for its commit."""
    settings = {} if cycle_commit is None else {"jobservice.cycle_commit": cycle_commit}
    conn = await asyncpg.connect(database_url, server_settings=settings)
    try:
        async with conn.transaction():
            claimed = await conn.fetch(
                f"SELECT * FROM jobservice_finish_and_claim('i1', {_NO_RUNS}, 8, NULL, NULL, "
                "NULL, ARRAY['jobservice.noop'])")
            assert claimed, "the cycle claimed nothing"
            return str(await conn.fetchval("SHOW synchronous_commit"))
    finally:
        await conn.close()


async def test_a_cycle_commits_without_its_flush_only_when_the_instance_says_so(
    db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    await insert_queued(db, "t", 30)
    assert await commit_mode_of_a_cycle(database_url, "async") == "off"
    assert await commit_mode_of_a_cycle(database_url, "sync") == "on"
    assert await commit_mode_of_a_cycle(database_url, None) == "on"  # psql, other tools


async def test_a_cycle_with_a_job_that_must_not_run_twice_waits_for_its_flush(
    db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    [careful] = await insert_queued(db, "t", 1)
    await db.execute("UPDATE t_job_info SET at_most_once = true WHERE id = $1", careful)
    assert await commit_mode_of_a_cycle(database_url, "async") == "on"


async def test_the_store_tells_its_connections_the_cycle_commit(database_url: str) -> None:
    modes: tuple[CycleCommit, ...] = ("async", "sync")
    for mode in modes:
        store = await Store.connect(database_url, size=4, cycle_commit=mode)
        try:
            async with store._pool.acquire() as conn:  # what its statements run on
                assert await conn.fetchval(
                    "SELECT current_setting('jobservice.cycle_commit')") == mode
        finally:
            await store.close()


async def test_the_relay_reads_only_flushed_events(
    store: Store, db: asyncpg.Connection, database_url: str
) -> None:
    """Events committed without a flush are flushed by the relay's own statement before it
    gets them: its DELETE of the batches published before, or else its write of the barrier
    row, makes its commit flush the WAL up to it."""
    async def barrier_writes() -> int:
        return int(await db.fetchval("SELECT flushes FROM t_outbox_flush"))

    await db.execute("DELETE FROM t_job_event_batch")
    assert await store.fetch_outbox(500) == []
    assert await barrier_writes() == 0  # nothing read: no write

    unflushed = await asyncpg.connect(database_url,
                                      server_settings={"synchronous_commit": "off"})
    try:
        await insert_queued(unflushed, "t", 3)  # committed without a flush, its events too
        written_up_to = await unflushed.fetchval("SELECT pg_current_wal_insert_lsn()")
    finally:
        await unflushed.close()
    events = await store.fetch_outbox(500)
    assert len(events) == 3
    assert await barrier_writes() == 1  # nothing deleted: the barrier row was written
    assert await db.fetchval("SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn",
                             written_up_to)

    await insert_queued(db, "t", 2)
    assert len(await store.fetch_outbox(500, [e.id for e in events])) == 2
    assert await barrier_writes() == 1  # the DELETE was the write


async def test_jobs_recorded_here_but_not_held_are_taken_back_after_a_server_crash(
    start_service: ServiceFactory, db: asyncpg.Connection
) -> None:
    """Crash recovery empties the unlogged t_server_mark; the next heartbeat sees its row gone
    and hands back what a rolled-back cycle left recorded as this instance's: QUEUED again,
    or FAILED `lost` for a job that must not run twice. Jobs it runs are left alone."""
    service = await start_service(heartbeat_s=0.2, tenants=["busy"])
    me = service.settings.instance_id
    [held] = await insert_queued(db, "busy", 1, job_class="jobservice.sleep")
    await db.execute("INSERT INTO t_job_parameters (job_id, name, value) "
                     "VALUES ($1, 'seconds', '3')", held)
    await db.execute("SELECT pg_notify('jobservice_work', '')")

    async def running_here() -> bool:
        return await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                 held) == "RUNNING"

    await wait_until(running_here)
    # two jobs of a tenant the service does not claim, recorded as RUNNING here, not held
    lost = await insert_queued(db, "elsewhere", 2)
    await db.execute("UPDATE t_job_info SET at_most_once = true WHERE id = $1", lost[1])
    assert len(await claim(db, me)) == 2
    await asyncio.sleep(0.6)  # heartbeats without a crash leave them
    assert await db.fetchval("SELECT count(*) FROM t_job_info WHERE id = ANY($1::uuid[]) "
                             "AND status = 'RUNNING'", lost) == 2

    await db.execute("DELETE FROM t_server_mark")  # what crash recovery does to it

    async def taken_back() -> bool:
        return await db.fetchval("SELECT count(*) FROM t_job_info WHERE id = ANY($1::uuid[]) "
                                 "AND status <> 'RUNNING'", lost) == 2

    await wait_until(taken_back, timeout=10)
    rows = dict(await db.fetch("SELECT id, status || coalesce('/' || error_type, '') "
                               "FROM t_job_info WHERE id = ANY($1::uuid[])", lost))
    assert rows == {lost[0]: "QUEUED", lost[1]: "FAILED/lost"}
    assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                             held) in ("RUNNING", "SUCCEEDED")  # held here: left alone
    metrics = service.metrics.render().decode()
    for outcome in ("requeued", "failed_lost"):
        assert metric_value(metrics, "jobservice_jobs_taken_back_total",
                            outcome=outcome) == 1

    async def slept() -> bool:
        return await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                 held) == "SUCCEEDED"

    await wait_until(slept, timeout=15)
    # never taken back: a take-back would have queued it again, and this instance (which
    # claims tenant busy) would have run it a second time
    assert await db.fetchval("SELECT attempt FROM t_job_info WHERE id = $1", held) == 1


async def test_a_claim_whose_outcome_is_unknown_has_its_jobs_taken_back(
    start_service: ServiceFactory, db: asyncpg.Connection
) -> None:
    """A cycle whose connection failed may have committed its claims: the scheduler asks for
    a take-back, which hands back whatever is recorded here and not held."""
    service = await start_service(tenants=["busy"])
    lost = await insert_queued(db, "elsewhere", 3)
    assert len(await claim(db, service.settings.instance_id)) == 3
    assert service.scheduler is not None
    service.scheduler.on_outcome_unknown()

    async def queued_again() -> bool:
        return await db.fetchval("SELECT count(*) FROM t_job_info WHERE id = ANY($1::uuid[]) "
                                 "AND status = 'QUEUED'", lost) == 3

    await wait_until(queued_again, timeout=10)


async def test_the_rescue_forgets_the_server_marks_of_instances_gone(
    db: asyncpg.Connection, database_url: str
) -> None:
    """A killed instance never releases its mark; once its instance row is forgotten (a day
    after its lease lapsed), so is its mark. A live instance keeps its own."""
    await db.execute("SELECT jobservice_renew_lease('live', 60)")
    await db.execute("INSERT INTO t_server_mark (instance_id) VALUES ('live'), ('gone')")
    store = await Store.connect(database_url, size=1)
    try:
        await store.rescue_orphans()
    finally:
        await store.close()
    assert await db.fetch("SELECT instance_id FROM t_server_mark") == [("live",)]
