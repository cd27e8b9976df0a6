"""PostgreSQL crashes (immediate stop) while an instance runs many short jobs, its pool cycles
committing without waiting for their WAL flush (JOBSERVICE_CYCLE_COMMIT=async, the default).
Crash recovery may undo the last cycles: no job is lost or left stuck under the live lease (the
instance takes back what is recorded as its own and not held), and no event of an undone
transition was published (every transition has exactly one event)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from jobservice.client import JobClient
from tests.conftest import ServiceFactory, wait_until
from tests.support.amqp import EventTap
from tests.support.report import count_scenario
from tests.support.services import postgres_outage

pytestmark = pytest.mark.fault

JOBS = 600


async def test_database_crash_while_cycles_commit_without_their_flush(
    start_service: ServiceFactory, client: JobClient, database_url: str, namespace: str
) -> None:
    tap = await EventTap(namespace).__aenter__()
    await start_service(pool_size=16, heartbeat_s=0.5, cycle_commit="async")
    ids = [uuid.uuid4() for _ in range(JOBS)]
    for job_id in ids:
        await client.submit(f"t{job_id.int % 5}", "jobservice.sleep",
                            {"seconds": 0.1, "ticks": 1}, id=job_id)
    conn = await asyncpg.connect(database_url)
    try:
        async def some_done() -> bool:
            return await conn.fetchval("SELECT count(*) FROM t_job_info "
                                       "WHERE status = 'SUCCEEDED'") >= JOBS // 5

        await wait_until(some_done, timeout=60)
    finally:
        await conn.close()
    await postgres_outage(1.0, mode="immediate")  # cycles in flight and unflushed are undone
    await asyncio.sleep(0.5)

    conn = await asyncpg.connect(database_url)
    try:
        async def all_done() -> bool:
            return await conn.fetchval("SELECT count(*) FROM t_job_info "
                                       "WHERE status = 'SUCCEEDED'") == JOBS

        await wait_until(all_done, timeout=120)

        async def outbox_empty() -> bool:
            return await conn.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0

        await wait_until(outbox_empty, timeout=30)
        expected = await conn.fetchval("SELECT sum(transition_seq) FROM t_job_info")
        events = await tap.drain(expected)
        await tap.__aexit__()
        result = await count_scenario(
            f"PostgreSQL crashed (immediate stop) while {JOBS} short jobs run, cycles "
            "committed without their flush", conn, ids,
            [(j, e, s) for j, e, s, _ in events],
            duplicate_runs=await conn.fetchval(
                "SELECT count(*) FROM t_job_info WHERE attempt > 1"))
        # Runs again are allowed (execution is at least once); lost jobs, missing events and
        # two events for one transition (an undone transition's event published) are not.
        assert (result.lost, result.missing_events, result.duplicated_transitions) == (0, 0, 0)
    finally:
        await conn.close()
