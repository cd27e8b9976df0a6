"""Worker control (issue 5): AbortWorker drains the instance and exits non-zero with the job
re-queued and run elsewhere; worker limits and claim filters of `jobservice run`, each on a
real process."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from jobservice.client import JobClient
from tests.conftest import ServiceFactory, wait_for_status, wait_until
from tests.support.amqp import metric_value
from tests.support.processes import spawn_ready, spawn_service

JOB_MODULES = {"job_modules": "tests.support.jobs"}


async def _wait_exit(proc: object, timeout: float = 30) -> int:
    return int(await asyncio.to_thread(proc.wait, timeout))  # type: ignore[attr-defined]


async def _requeued(events: asyncio.Queue, job_id: object) -> None:  # type: ignore[type-arg]
    await wait_for_status(events, job_id, "RUNNING")
    await wait_for_status(events, job_id, "QUEUED")


async def test_abort_worker_requeues_the_job_drains_and_exits_non_zero(
    database_url: str, namespace: str, client: JobClient, db: asyncpg.Connection,
    start_service: ServiceFactory
) -> None:
    proc = await spawn_ready(database_url, namespace, instance_id="doomed", pool_size="2",
                             shutdown_grace_s="20", **JOB_MODULES)
    try:
        async with client.subscribe("#") as events:
            busy = await client.submit("alpha", "jobservice.sleep", {"seconds": 1.5})
            assert busy is not None and busy.id is not None
            await wait_for_status(events, busy.id, "RUNNING")
            doomed = await client.submit("alpha", "tests.abort_worker",
                                         {"succeed_on_attempt": 2})
            assert doomed is not None and doomed.id is not None
            await _requeued(events, doomed.id)
            assert await _wait_exit(proc) == 3
            # it drained: the job already running was let finish, nothing else was claimed
            assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                     busy.id) == "SUCCEEDED"
            assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                     doomed.id) == "QUEUED"
            other = await start_service()
            seen = await wait_for_status(events, doomed.id, "SUCCEEDED")
        assert seen[-1].result == {"attempt": 2}
        runs = await db.fetch("SELECT attempt, instance_id, status, error_message FROM "
                              "t_job_run WHERE job_id = $1 ORDER BY attempt", doomed.id)
        assert [(r["attempt"], r["instance_id"], r["status"]) for r in runs] == [
            (1, "doomed", "QUEUED"), (2, other.settings.instance_id, "SUCCEEDED")]
        assert "lost the connection to the shared storage" in runs[0]["error_message"]
        assert await db.fetchval("SELECT count(*) FROM t_instance "
                                 "WHERE instance_id = 'doomed'") == 0  # lease released
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_abort_worker_is_counted_and_stops_claims_at_once(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    service = await start_service(pool_size=1)
    async with client.subscribe("#") as events:
        doomed = await client.submit("alpha", "tests.abort_worker", {"succeed_on_attempt": 2})
        assert doomed is not None and doomed.id is not None
        await _requeued(events, doomed.id)
    assert service.scheduler is not None
    await wait_until(lambda: _true(service.scheduler.stopped.is_set()))  # type: ignore[union-attr]
    assert service.exit_code == 3
    assert metric_value(service.metrics.render().decode(), "jobservice_worker_aborts_total") == 1
    assert metric_value(service.metrics.render().decode(), "jobservice_jobs_requeued_total",
                        reason="abort_worker") == 1
    # not claimed again by the aborting instance
    assert await db.fetchval("SELECT attempt FROM t_job_info WHERE id = $1", doomed.id) == 1


async def _true(value: bool) -> bool:
    return value


async def test_max_jobs_claims_that_many_then_exits_zero(
    database_url: str, namespace: str, client: JobClient, db: asyncpg.Connection
) -> None:
    proc = await spawn_ready(database_url, namespace, "--max-jobs", "2", pool_size="4",
                             **JOB_MODULES)
    try:
        async with client.subscribe("#") as events:
            first = await client.submit("alpha", "jobservice.sleep", {"seconds": 0.3})
            assert first is not None and first.id is not None
            await wait_for_status(events, first.id, "RUNNING")
            rest = [await client.submit("alpha", "jobservice.noop") for _ in range(3)]
            assert await _wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    statuses = [r["status"] for r in await db.fetch(
        "SELECT status FROM t_job_info ORDER BY status")]
    assert statuses == ["QUEUED", "QUEUED", "SUCCEEDED", "SUCCEEDED"], rest


async def test_max_seconds_drains_and_exits_zero_and_a_high_memory_limit_does_not_trip(
    database_url: str, namespace: str, client: JobClient, db: asyncpg.Connection
) -> None:
    started = time.monotonic()
    proc = await spawn_ready(database_url, namespace, "--max-seconds", "3", "--max-memory",
                             "100000", shutdown_grace_s="0.5", **JOB_MODULES)
    try:
        async with client.subscribe("#") as events:
            reply = await client.submit("alpha", "tests.wait_forever")
            assert reply is not None and reply.id is not None
            await wait_for_status(events, reply.id, "RUNNING")
            assert await _wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 <= time.monotonic() - started < 30
    assert await db.fetchval("SELECT status FROM t_job_info") == "QUEUED"  # handed back


async def test_max_memory_exits_zero_once_exceeded(
    database_url: str, namespace: str, client: JobClient
) -> None:
    proc = spawn_service(database_url, namespace, "--max-memory", "1")  # exits before ready
    try:
        assert await _wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(("flags", "skipped", "wanted"), [
    (["--tenants", "alpha,gamma"], ("beta", "jobservice.noop"), ("alpha", "jobservice.noop")),
    (["--exclude-tenants", "beta"], ("beta", "jobservice.noop"), ("alpha", "jobservice.noop")),
    (["--job-types", "tests.echo"], ("alpha", "jobservice.noop"), ("alpha", "tests.echo")),
])
async def test_claim_filters_only_take_matching_jobs(
    database_url: str, namespace: str, client: JobClient, db: asyncpg.Connection,
    flags: list[str], skipped: tuple[str, str], wanted: tuple[str, str]
) -> None:
    proc = await spawn_ready(database_url, namespace, *flags, "--max-jobs", "1",
                             **JOB_MODULES)
    try:
        other = await client.submit(*skipped)
        match = await client.submit(*wanted)
        assert other is not None and match is not None
        assert await _wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    statuses = dict(await db.fetch("SELECT id, status FROM t_job_info"))
    assert statuses == {other.id: "QUEUED", match.id: "SUCCEEDED"}
