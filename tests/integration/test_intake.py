"""Intake: bad input is refused (reply + dead letter) and the service goes on; good input is
stored once, acknowledged after commit."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import ServiceFactory, wait_for_status
from tests.support.amqp import http_get, metric_value, queue_depth, read_queue

NOOP = {"tenant": "alpha", "job_class": "jobservice.noop"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"this is not json", "invalid_json"),
        (b'{"tenant": "\xff\xfe"}', "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        ([1, 2, 3], "invalid_message"),
        ({"job_class": "jobservice.noop"}, "invalid_message"),
        ({"tenant": "no spaces allowed", "job_class": "jobservice.noop"}, "invalid_message"),
        ({**NOOP, "priority": "high"}, "invalid_message"),
        ({**NOOP, "unexpected": True}, "invalid_message"),
        ({**NOOP, "steps": [1]}, "invalid_message"),
        ({"tenant": "alpha", "job_class": "nobody.registered.this"}, "unknown_job_class"),
        ({"tenant": "alpha", "job_class": "jobservice.sleep", "parameters": {"seconds": -1}},
         "invalid_parameters"),
        ({"tenant": "alpha", "job_class": "jobservice.sleep",
          "parameters": {"seconds": 1, "colour": "red"}}, "invalid_parameters"),
    ],
)
async def test_bad_submission_is_refused_dead_lettered_and_the_service_goes_on(
    service: JobService, client: JobClient, db: asyncpg.Connection, namespace: str,
    body: Any, code: str,
) -> None:
    reply = await client.submit_raw(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert reply is not None and not reply.ok
    assert reply.error is not None and reply.error.code == code, reply
    [dead] = await read_queue(f"{namespace}.submit.dlq", 1)
    assert str(dead.headers["x-jobservice-error"]).startswith(f"{code}: ")
    assert dead.body == (body if isinstance(body, bytes) else json.dumps(body).encode())
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0
    # still serving
    async with client.subscribe("*.succeeded") as events:
        ok = await client.submit("alpha", "jobservice.noop")
        assert ok is not None and ok.ok
        await wait_for_status(events, ok.id, "SUCCEEDED")  # type: ignore[arg-type]


async def test_oversized_message_is_refused(
    start_service: ServiceFactory, client: JobClient, namespace: str, db: asyncpg.Connection
) -> None:
    service = await start_service(max_message_bytes=2048)
    reply = await client.submit_raw({**NOOP, "description": "x" * 900,
                                     "owner": "y" * 900, "parameters": {}, "id": None,
                                     "priority": 1, "initial_status": "QUEUED"} | {
        "description": "z" * 1000, "owner": "w" * 1000})
    assert reply is not None and reply.error is not None
    assert reply.error.code == "message_too_large"
    [dead] = await read_queue(f"{namespace}.submit.dlq", 1)
    assert "limit is 2048" in str(dead.headers["x-jobservice-error"])
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0
    assert service.http is not None
    _, metrics = await http_get(service.http.port, "/metrics")
    assert metric_value(metrics, "jobservice_submissions_total", outcome="rejected",
                        reason="message_too_large") == 1


async def test_resubmitting_an_id_changes_nothing(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    job_id = uuid.uuid4()
    async with client.subscribe("#") as events:
        first = await client.submit("alpha", "jobservice.noop", id=job_id)
        await wait_for_status(events, job_id, "SUCCEEDED")
        again = await client.submit("alpha", "jobservice.sleep", {"seconds": 5}, id=job_id)
    assert first is not None and first.status == "QUEUED"
    assert again is not None and again.ok and again.status == "SUCCEEDED"
    row = await db.fetchrow("SELECT job_class, attempt FROM t_job_info WHERE id = $1", job_id)
    assert row is not None and row["job_class"] == "jobservice.noop" and row["attempt"] == 1
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 1


async def test_duplicates_within_one_batch_create_one_job(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    job_id = str(uuid.uuid4())
    # published before the service consumes, so they arrive in one intake batch
    await client.submit_many([{**NOOP, "id": job_id}] * 5 + [{**NOOP} for _ in range(5)])
    async with client.subscribe("*.queued") as events:
        await start_service()
        queued = [await events.get() for _ in range(6)]
    mine = [e for e in queued if str(e.job_id) == job_id]
    assert len(mine) == 1, mine
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 6


async def test_submission_without_reply_to_is_stored_and_acknowledged(
    service: JobService, client: JobClient, db: asyncpg.Connection, namespace: str
) -> None:
    job_id = uuid.uuid4()
    async with client.subscribe("*.succeeded") as events:
        await client.submit("alpha", "jobservice.noop", id=job_id, wait=False)
        await wait_for_status(events, job_id, "SUCCEEDED")
    assert await queue_depth(f"{namespace}.submit") == 0


async def test_parameters_are_stored_one_row_per_name(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    reply = await client.submit("alpha", "jobservice.sleep", {"seconds": 0.01, "ticks": 2},
                                pending=True)
    assert reply is not None and reply.status == "PENDING"
    rows = await db.fetch("SELECT name, value::text FROM t_job_parameters WHERE job_id = $1 "
                          "ORDER BY name", reply.id)
    assert [(r["name"], r["value"]) for r in rows] == [("seconds", "0.01"), ("ticks", "2")]


async def test_pending_job_waits_for_enqueue(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "jobservice.noop", pending=True)
        assert reply is not None and reply.id is not None
        [created] = await wait_for_status(events, reply.id, "PENDING")
        assert created.previous_status is None
        assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                 reply.id) == "PENDING"
        enqueued = await client.enqueue(reply.id)
        assert enqueued is not None and enqueued.status == "QUEUED"
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    assert [e.status for e in seen] == ["QUEUED", "TO_BE_RUN", "RUNNING", "SUCCEEDED"]
