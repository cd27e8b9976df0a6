"""Control: stop (queued, running async, running blocking, final, on another instance),
enqueue, retry; refused requests are dead-lettered with a reply."""

from __future__ import annotations

import uuid

import asyncpg

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import ServiceFactory, wait_for_all, wait_for_status, wait_until
from tests.support.amqp import read_queue


async def test_stop_of_a_queued_job_aborts_it_at_once(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(pool_size=1)
    async with client.subscribe("#") as events:
        blocker = await client.submit("alpha", "tests.wait_forever")
        assert blocker is not None and blocker.id is not None
        await wait_for_status(events, blocker.id, "RUNNING")
        queued = await client.submit("alpha", "jobservice.noop")
        assert queued is not None and queued.id is not None
        reply = await client.stop(queued.id)
        assert reply is not None and reply.status == "ABORTED"
        seen = await wait_for_status(events, queued.id, "ABORTED")
        await client.stop(blocker.id)
        await wait_for_status(events, blocker.id, "ABORTED")
    assert [e.status for e in seen] == ["QUEUED", "ABORTED"]
    assert seen[-1].error is not None and seen[-1].error.type == "stopped"
    assert await db.fetchval("SELECT started_at FROM t_job_info WHERE id = $1", queued.id) is None


async def test_stop_of_a_running_job_cancels_it_and_frees_the_slot(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    service = await start_service(pool_size=1)
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.wait_forever")
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "RUNNING")
        stop = await client.stop(reply.id)
        assert stop is not None and stop.ok
        seen += await wait_for_status(events, reply.id, "ABORTED")
        after = await client.submit("alpha", "jobservice.noop")
        await wait_for_status(events, after.id, "SUCCEEDED")  # type: ignore[union-attr,arg-type]
    assert [e.status for e in seen] == ["QUEUED", "TO_BE_RUN", "RUNNING", "ABORTED"]
    pool = service.pool
    assert pool is not None

    async def slot_freed() -> bool:  # a final write's event may come before the bookkeeping
        return pool.busy == 0

    await wait_until(slot_freed, timeout=10)


async def test_stop_of_a_blocking_job_takes_effect_at_its_next_advance(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.blocking_spin",
                                    {"seconds": 60, "advances": 6000})
        assert reply is not None and reply.id is not None
        await wait_for_status(events, reply.id, "RUNNING")
        await client.stop(reply.id)
        seen = await wait_for_status(events, reply.id, "ABORTED")
    assert seen[-1].error is not None and seen[-1].error.type == "stopped"


async def test_stop_of_a_final_job_leaves_it_as_it_is(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "jobservice.noop")
        assert reply is not None and reply.id is not None
        await wait_for_status(events, reply.id, "SUCCEEDED")
    stop = await client.stop(reply.id)
    assert stop is not None and stop.ok and stop.status == "SUCCEEDED"
    assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                             reply.id) == "SUCCEEDED"


async def test_stop_reaches_the_instance_that_runs_the_job(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    first = await start_service(pool_size=2)
    second = await start_service(pool_size=2)
    async with client.subscribe("#") as events:
        ids = []
        for _ in range(4):
            reply = await client.submit("alpha", "tests.wait_forever")
            assert reply is not None and reply.id is not None
            ids.append(reply.id)
        await wait_for_all(events, ids, "RUNNING")
        owners = {r["instance_id"] for r in await db.fetch(
            "SELECT instance_id FROM t_job_info WHERE status = 'RUNNING'")}
        assert owners == {first.settings.instance_id, second.settings.instance_id}
        for job_id in ids:  # each stop is taken by either instance
            await client.stop(job_id)
        await wait_for_all(events, ids, "ABORTED")


async def test_retry_of_a_failed_job_runs_a_new_attempt_and_keeps_the_old_error(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "jobservice.fail", {"message": "first try"})
        assert reply is not None and reply.id is not None
        await wait_for_status(events, reply.id, "FAILED")
        retried = await client.retry(reply.id)
        assert retried is not None and retried.status == "QUEUED"
        seen = await wait_for_status(events, reply.id, "FAILED")
    assert [(e.previous_status, e.status) for e in seen] == [
        ("FAILED", "QUEUED"), ("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING"),
        ("RUNNING", "FAILED")]
    assert await db.fetchval("SELECT attempt FROM t_job_info WHERE id = $1", reply.id) == 2
    history = await db.fetch("SELECT attempt, status, error_type, error_message FROM t_job_run "
                             "WHERE job_id = $1 ORDER BY attempt", reply.id)
    # one row per attempt (issue 5): the first attempt's error is kept beside the second's
    assert [dict(r) for r in history] == [
        {"attempt": 1, "status": "FAILED", "error_type": "FailJobError",
         "error_message": "first try"},
        {"attempt": 2, "status": "FAILED", "error_type": "FailJobError",
         "error_message": "first try"}]


async def test_wrong_status_is_refused_with_a_reply_and_a_dead_letter(
    service: JobService, client: JobClient, namespace: str
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "jobservice.noop")
        assert reply is not None and reply.id is not None
        await wait_for_status(events, reply.id, "SUCCEEDED")
    for action in ("retry", "enqueue"):
        refused = await client.control(action, reply.id, check=False)
        assert refused is not None and refused.error is not None
        assert refused.error.code == "invalid_status"
        assert "SUCCEEDED" in refused.error.message
    dead = await read_queue(f"{namespace}.control.dlq", 2)
    assert all(str(m.headers["x-jobservice-error"]).startswith("invalid_status") for m in dead)


async def test_control_for_an_unknown_job_is_refused(
    service: JobService, client: JobClient, namespace: str
) -> None:
    unknown = uuid.uuid4()
    for action in ("stop", "enqueue", "retry"):
        reply = await client.control(action, unknown, check=False)
        assert reply is not None and reply.error is not None
        assert reply.error.code == "not_found" and str(unknown) in reply.error.message
    dead = await read_queue(f"{namespace}.control.dlq", 3)
    assert all(str(m.headers["x-jobservice-error"]).startswith("not_found") for m in dead)


async def test_invalid_control_message_is_refused(
    service: JobService, client: JobClient, namespace: str
) -> None:
    import json

    import aio_pika

    from tests.conftest import AMQP_URL

    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for body in (b"{oops", json.dumps({"action": "explode", "id": str(uuid.uuid4())}).encode()):
            await channel.default_exchange.publish(aio_pika.Message(body),
                                                   routing_key=f"{namespace}.control")
    finally:
        await connection.close()
    dead = await read_queue(f"{namespace}.control.dlq", 2)
    reasons = sorted(str(m.headers["x-jobservice-error"]).split(":")[0] for m in dead)
    assert reasons == ["invalid_json", "invalid_message"]
    # and the service still answers
    reply = await client.control("stop", uuid.uuid4(), check=False)
    assert reply is not None and reply.error is not None


async def test_enqueue_of_a_pending_job_is_counted(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    reply = await client.submit("alpha", "jobservice.noop", pending=True)
    assert reply is not None and reply.id is not None
    await client.enqueue(reply.id)

    async def done() -> bool:
        return await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                 reply.id) == "SUCCEEDED"

    await wait_until(done)


async def test_a_stop_whose_notice_was_missed_takes_effect_when_the_listener_reconnects(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    service = await start_service(poll_interval_s=0.5, heartbeat_s=0.5)
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.wait_forever")
        assert reply is not None and reply.id is not None
        await wait_for_status(events, reply.id, "RUNNING")
        # A stop requested while the instance's listener was away: the flag is in the
        # database, its NOTIFY went nowhere.
        await db.execute("UPDATE t_job_info SET stop_requested = true WHERE id = $1", reply.id)
        assert await db.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'jobservice-listener' AND datname = current_database()")
        seen = await wait_for_status(events, reply.id, "ABORTED", timeout=20)
    assert seen[-1].error is not None and seen[-1].error.type == "stopped"
    pool = service.pool
    assert pool is not None

    async def slot_freed() -> bool:
        return pool.busy == 0

    await wait_until(slot_freed)
