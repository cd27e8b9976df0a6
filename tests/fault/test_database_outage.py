"""PostgreSQL stops for a few seconds while jobs run: the service reconnects with backoff, the final
writes that could not be made are made when it returns, nothing is lost."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from jobservice.client import JobClient
from tests.conftest import ServiceFactory, wait_until
from tests.support.amqp import EventTap
from tests.support.report import count_scenario
from tests.support.services import postgres_outage

pytestmark = pytest.mark.fault


async def test_database_restart_while_jobs_run(
    start_service: ServiceFactory, client: JobClient, database_url: str, namespace: str
) -> None:
    tap = await EventTap(namespace).__aenter__()
    await start_service(pool_size=4)
    ids = [uuid.uuid4() for _ in range(12)]
    for job_id in ids:
        await client.submit("alpha", "jobservice.sleep", {"seconds": 1.0, "ticks": 4}, id=job_id)
    conn = await asyncpg.connect(database_url)
    try:
        async def some_running() -> bool:
            return await conn.fetchval("SELECT count(*) FROM t_job_info "
                                       "WHERE status = 'RUNNING'") > 0

        await wait_until(some_running)
    finally:
        await conn.close()
    await postgres_outage(3.0)  # running jobs finish while it is away: their final writes wait

    conn = await asyncpg.connect(database_url)
    try:
        async def all_done() -> bool:
            return await conn.fetchval("SELECT count(*) FROM t_job_info "
                                       "WHERE status = 'SUCCEEDED'") == len(ids)

        await wait_until(all_done, timeout=90)
        # and new work is taken again
        reply = await client.submit("alpha", "jobservice.noop")
        assert reply is not None and reply.ok

        async def noop_done() -> bool:
            return await conn.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                       reply.id) == "SUCCEEDED"

        await wait_until(noop_done, timeout=30)

        async def outbox_empty() -> bool:
            return await conn.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0

        await wait_until(outbox_empty, timeout=30)
        assert await conn.fetchval("SELECT max(attempt) FROM t_job_info") == 1
        expected = await conn.fetchval("SELECT sum(transition_seq) FROM t_job_info")
        events = await tap.drain(expected)
        await tap.__aexit__()
        result = await count_scenario(
            "PostgreSQL stopped 3 s while 12 jobs run", conn, [*ids, reply.id],
            [(j, e, s) for j, e, s, _ in events],
            duplicate_runs=await conn.fetchval(
                "SELECT count(*) FROM t_job_info WHERE attempt > 1"))
        assert (result.lost, result.duplicate_runs, result.missing_events,
                result.duplicated_transitions) == (0, 0, 0, 0)
    finally:
        await conn.close()
