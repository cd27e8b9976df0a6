"""A job's life end to end: submit over AMQP, events per transition, results and errors."""

from __future__ import annotations

import uuid

import asyncpg

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import wait_for_status


async def test_noop_job_goes_through_every_status_with_one_event_each(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    job_id = uuid.uuid4()
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "jobservice.noop", id=job_id, owner="alice")
        assert reply is not None and reply.ok and reply.id == job_id
        seen = await wait_for_status(events, job_id, "SUCCEEDED")
    assert [(e.previous_status, e.status) for e in seen] == [
        (None, "QUEUED"), ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING"),
        ("RUNNING", "SUCCEEDED")]
    assert len({e.event_id for e in seen}) == 4
    assert all(e.owner == "alice" and e.tenant == "alpha" for e in seen)
    row = await db.fetchrow("SELECT status, percent_completed FROM t_job_info WHERE id = $1",
                            job_id)
    assert row is not None and dict(row) == {"status": "SUCCEEDED", "percent_completed": 100}


async def test_failing_job_keeps_type_message_and_stack_trace(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("*.failed") as events:
        reply = await client.submit("alpha", "jobservice.fail", {"message": "disk full"})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "FAILED")
    assert seen[-1].error is not None
    assert seen[-1].error.type == "FailJobError"
    assert seen[-1].error.message == "disk full"
    row = await db.fetchrow("SELECT error_type, error_message, stack_trace FROM t_job_info "
                            "WHERE id = $1", reply.id)
    assert row is not None
    assert row["error_type"] == "FailJobError" and row["error_message"] == "disk full"
    assert "Traceback" in row["stack_trace"] and "FailJobError: disk full" in row["stack_trace"]


async def test_result_is_kept_and_sent_in_the_succeeded_event(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.echo", {"value": [1, "two", {"three": 3}]})
        assert reply is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")  # type: ignore[arg-type]
    assert seen[-1].result == {"echo": [1, "two", {"three": 3}]}
    assert await db.fetchval("SELECT result->'echo'->>1 FROM t_job_info WHERE id = $1",
                             reply.id) == "two"
