"""RabbitMQ goes away while jobs run: jobs go on, transitions are committed, their events
wait in the outbox and are all published, in order, when it returns; intake resumes."""

from __future__ import annotations

import uuid
from collections import defaultdict

import asyncpg
import pytest

from jobservice.client import JobClient
from tests.conftest import AMQP_URL, ServiceFactory, wait_until
from tests.support.amqp import EventTap, http_get
from tests.support.report import count_scenario
from tests.support.services import rabbitmq_start_app, rabbitmq_stop_app

pytestmark = pytest.mark.fault


async def test_broker_outage_loses_no_event_and_intake_resumes(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection, namespace: str
) -> None:
    service = await start_service(pool_size=4)
    assert service.http is not None
    port = service.http.port
    tap = await EventTap(namespace).__aenter__()
    ids = [uuid.uuid4() for _ in range(10)]
    for job_id in ids:
        await client.submit("alpha", "jobservice.sleep", {"seconds": 1.5, "ticks": 3}, id=job_id)

    async def some_running() -> bool:
        return await db.fetchval("SELECT count(*) FROM t_job_info WHERE status = 'RUNNING'") > 0

    await wait_until(some_running)
    await rabbitmq_stop_app()
    try:
        async def not_ready() -> bool:
            return (await http_get(port, "/readyz"))[0] == 503

        await wait_until(not_ready, timeout=30)

        async def all_done() -> bool:
            return await db.fetchval("SELECT count(*) FROM t_job_info "
                                     "WHERE status = 'SUCCEEDED'") == len(ids)

        await wait_until(all_done, timeout=60)  # jobs ran on while the broker was away
        assert await db.fetchval("SELECT count(*) FROM t_job_event_outbox") > 0
    finally:
        await rabbitmq_start_app()

    async def ready() -> bool:
        return (await http_get(port, "/readyz"))[0] == 200

    await wait_until(ready, timeout=60)

    async def outbox_empty() -> bool:
        return await db.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0

    await wait_until(outbox_empty, timeout=60)
    # intake resumed by itself
    async with JobClient(AMQP_URL, namespace) as fresh:
        reply = await fresh.submit("alpha", "jobservice.noop")
        assert reply is not None and reply.ok

    expected = await db.fetchval("SELECT sum(transition_seq) FROM t_job_info")
    events = await tap.drain(expected)
    await tap.__aexit__()
    result = await count_scenario(
        "RabbitMQ stopped while 10 jobs run", db, ids, [(j, e, s) for j, e, s, _ in events],
        duplicate_runs=await db.fetchval("SELECT count(*) FROM t_job_info WHERE attempt > 1"))
    assert (result.lost, result.duplicate_runs, result.missing_events,
            result.duplicated_transitions) == (0, 0, 0, 0)
    order: dict[str, list[int]] = defaultdict(list)
    for job_id, _, seq, _ in events:
        order[job_id].append(seq)
    for job_id in ids:
        first_seen = list(dict.fromkeys(order[str(job_id)]))
        assert first_seen == sorted(first_seen)  # in transition order
