"""Completion throttle against the database, and the event stream's guarantees."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict

import aio_pika
import asyncpg

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import AMQP_URL, ServiceFactory, wait_for_all, wait_for_status, wait_until
from tests.support.amqp import http_get, metric_value


async def test_ten_thousand_advances_in_three_seconds_cause_three_or_four_writes(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    assert service.http is not None
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.progress_spin",
                                    {"advances": 10_000, "seconds": 3})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    progress = [e for e in seen if e.previous_status == e.status == "RUNNING"]
    assert 2 <= len(progress) <= 3, [e.percent_completed for e in progress]
    percents = [e.percent_completed for e in progress]
    assert percents == sorted(percents) and 0 < percents[0] < 100
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(progress)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # at most one write per second
    assert seen[-1].percent_completed == 100  # the final write
    _, metrics = await http_get(service.http.port, "/metrics")
    assert metric_value(metrics, "jobservice_completion_writes_total") == len(progress)


async def test_completion_of_concurrent_jobs_is_written_in_one_statement(
    service: JobService, client: JobClient
) -> None:
    assert service.http is not None
    async with client.subscribe("#") as events:
        ids = []
        for _ in range(3):
            reply = await client.submit("alpha", "tests.progress_spin",
                                        {"advances": 3000, "seconds": 2.5})
            assert reply is not None and reply.id is not None
            ids.append(reply.id)
        seen = await wait_for_all(events, ids, "SUCCEEDED")
    progress_events = sum(1 for job in seen.values() for e in job
                          if e.previous_status == e.status)
    _, metrics = await http_get(service.http.port, "/metrics")
    statements = metric_value(metrics, "jobservice_completion_writes_total")
    assert progress_events >= 4
    assert statements < progress_events  # batched across jobs


async def test_blocking_job_runs_in_a_thread_and_reports_progress(
    service: JobService, client: JobClient
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.blocking_spin",
                                    {"advances": 200, "seconds": 2.2})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    assert seen[-1].result == {"thread": True}
    assert any(e.previous_status == e.status == "RUNNING" for e in seen)


async def test_unserializable_result_fails_the_job(service: JobService, client: JobClient) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.unserializable")
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "FAILED")
    assert seen[-1].error is not None and seen[-1].error.type == "result_not_serializable"


async def test_events_under_load_are_in_order_once_each_with_message_id(
    start_service: ServiceFactory, client: JobClient, namespace: str, db: asyncpg.Connection
) -> None:
    await start_service(pool_size=8)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"{namespace}.events",
                                                  aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "#")
        ids = [str(uuid.uuid4()) for _ in range(200)]
        await client.submit_many([{"id": i, "tenant": f"t{n % 7}",
                                   "job_class": "jobservice.noop"} for n, i in enumerate(ids)])
        per_job: dict[str, list[tuple[str, int]]] = defaultdict(list)
        event_ids: list[str] = []
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                body = json.loads(message.body)
                assert message.message_id == body["event_id"]
                assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                assert message.routing_key == f"{body['tenant']}.{body['status'].lower()}"
                event_ids.append(body["event_id"])
                seq = message.headers["x-jobservice-seq"]
                assert isinstance(seq, int)
                per_job[body["job_id"]].append((body["status"], seq))
                if sum(1 for e in per_job.values() if e[-1][0] == "SUCCEEDED") == len(ids):
                    break
    finally:
        await connection.close()
    assert len(event_ids) == len(set(event_ids)) == 4 * len(ids)
    for job_id in ids:
        assert per_job[job_id] == [("QUEUED", 1), ("TO_BE_RUN", 2), ("RUNNING", 3),
                                   ("SUCCEEDED", 4)]

    async def outbox_empty() -> bool:
        return await db.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0

    # the last batch published is deleted by the relay's next read, at most 50 ms later
    await wait_until(outbox_empty, timeout=5)
