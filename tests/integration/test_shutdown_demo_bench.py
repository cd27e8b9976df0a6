"""Graceful shutdown, the demo and the benchmark's measuring core."""

from __future__ import annotations

import asyncio
import io
import uuid

import asyncpg
import pytest
from rich.console import Console

from jobservice.bench import bench_main
from jobservice.bench.harness import wait_succeeded_in_database
from jobservice.client import JobClient
from jobservice.demo import demo_main
from jobservice.service import JobService
from tests.conftest import ServiceFactory, make_settings, wait_for_all


async def test_shutdown_hands_back_jobs_still_running_after_the_grace_period(
    database_url: str, namespace: str, client: JobClient, db: asyncpg.Connection
) -> None:
    service = JobService(make_settings(database_url, namespace, shutdown_grace_s=0.5))
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 30)
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.wait_forever")
        assert reply is not None and reply.id is not None
        await wait_for_all(events, [reply.id], "RUNNING")
        service.request_stop()
        await asyncio.wait_for(task, 30)  # returns: exit 0 from the CLI
        seen = await wait_for_all(events, [reply.id], "QUEUED", timeout=10)
    assert [(e.previous_status, e.status) for e in seen[str(reply.id)]] == [
        ("RUNNING", "QUEUED")]
    row = await db.fetchrow("SELECT status, instance_id FROM t_job_info WHERE id = $1", reply.id)
    assert row is not None and row["status"] == "QUEUED" and row["instance_id"] is None
    assert await db.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0  # all published


async def test_demo_runs_its_workload_to_the_expected_end(
    database_url: str, namespace: str, db: asyncpg.Connection
) -> None:
    settings = make_settings(database_url, namespace, job_modules=[])
    console = Console(force_terminal=False, width=120, file=io.StringIO())
    assert await demo_main(settings, keep_running=False, console=console, speed=0.1) == 0
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "RUNNING -> FAILED" in output and "demo finished" in output
    rows = await db.fetch("SELECT job_class, status, count(*) AS n FROM t_job_info "
                          "GROUP BY job_class, status")
    counts = {(r["job_class"], r["status"]): r["n"] for r in rows}
    assert counts[("jobservice.fail", "FAILED")] == 1
    assert counts[("jobservice.sleep", "ABORTED")] == 1
    assert counts[("jobservice.sleep", "SUCCEEDED")] == 7
    assert counts[("jobservice.noop", "SUCCEEDED")] == 8


@pytest.mark.parametrize("completion", ["database", "events"])
async def test_bench_measures_a_small_run(database_url: str, namespace: str,
                                          completion: str) -> None:
    settings = make_settings(database_url, namespace)
    report = await bench_main(settings, jobs=60, tenants=3, instances=1, pool_size=4,
                              database=f"jst_bench_{uuid.uuid4().hex[:8]}",
                              completion=completion)
    assert report.jobs == 60 and report.tenants == 3 and report.pool_size == 4
    assert report.jobs_per_s > 0 and report.submit_per_s > 0
    assert 0 < report.done_latency_p50_ms <= report.done_latency_p99_ms
    assert report.statements_per_job > 0
    assert report.completion == completion
    # database: the run ends only once the outbox is empty, after the last SUCCEEDED
    assert (report.outbox_empty_after_ms is None) == (completion == "events")
    if report.outbox_empty_after_ms is not None:
        assert report.outbox_empty_after_ms >= 0


async def test_the_bench_does_not_wait_for_jobs_that_failed(db: asyncpg.Connection,
                                                             database_url: str) -> None:
    job = await db.fetchval(
        "INSERT INTO t_job_info (id, tenant, job_class, status) "
        "VALUES (gen_random_uuid(), 't', 'jobservice.noop', 'QUEUED') RETURNING id::text")
    await db.execute("UPDATE t_job_info SET status = 'TO_BE_RUN', instance_id = 'i'")
    await db.execute("UPDATE t_job_info SET status = 'FAILED', error_type = 'x'")
    # its events not published yet: the run has not ended
    with pytest.raises(TimeoutError):
        await wait_succeeded_in_database(database_url, [job], timeout=0.3)
    await db.execute("DELETE FROM t_job_event_batch")  # what the relay does once published
    with pytest.raises(RuntimeError, match="1 job\\(s\\) did not succeed"):
        await wait_succeeded_in_database(database_url, [job], timeout=5)


async def test_the_bench_waits_for_its_own_jobs_only_when_told(db: asyncpg.Connection,
                                                               database_url: str) -> None:
    """The progress scenario's phases: its no-op jobs end while long jobs of another class
    run and keep writing events."""
    insert = ("INSERT INTO t_job_info (id, tenant, job_class, status) "
              "VALUES (gen_random_uuid(), 't', $1, 'QUEUED') RETURNING id::text")
    mine = await db.fetchval(insert, "jobservice.noop")
    await db.fetchval(insert, "bench.sleep")
    for status in ("TO_BE_RUN", "RUNNING"):
        await db.execute("UPDATE t_job_info SET status = $1, instance_id = 'i'", status)
    await db.execute("UPDATE t_job_info SET status = 'SUCCEEDED' WHERE id = $1::uuid", mine)
    with pytest.raises(TimeoutError):  # the other job runs, the outbox holds events
        await wait_succeeded_in_database(database_url, [mine], timeout=0.3)
    seen = await wait_succeeded_in_database(database_url, [mine], timeout=5,
                                            job_class="jobservice.noop", outbox_may_hold=True)
    assert list(seen.ended_at) == [mine] and seen.ended_at[mine] >= seen.started_at[mine]


async def test_an_instance_whose_lease_lapsed_hands_its_jobs_back_before_claiming(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture
) -> None:
    service = await start_service(heartbeat_s=0.2, lease_timeout_s=30)
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.wait_forever")
        assert reply is not None and reply.id is not None
        await wait_for_all(events, [reply.id], "RUNNING")
        # as if the instance had been paused past its lease
        await db.execute("UPDATE t_instance SET lease_expires_at = now() - interval '1 s' "
                         "WHERE instance_id = $1", service.settings.instance_id)
        seen = await wait_for_all(events, [reply.id], "QUEUED")
        seen_again = await wait_for_all(events, [reply.id], "RUNNING")
    assert [(e.previous_status, e.status) for e in seen[str(reply.id)]] == [
        ("RUNNING", "QUEUED")]
    assert seen_again[str(reply.id)][-1].status == "RUNNING"
    assert await db.fetchval("SELECT attempt FROM t_job_info WHERE id = $1", reply.id) == 2
    assert service.pool is not None
    assert service.pool.running_ids() == [reply.id]  # only the new attempt
    # the lease's own release removed the server mark: no crash to take jobs back from
    assert "database server crashed" not in caplog.text


async def test_sigterm_lets_running_jobs_finish_then_exits_zero(
    database_url: str, namespace: str, client: JobClient, db: asyncpg.Connection
) -> None:
    import signal

    from tests.support.processes import spawn_service

    proc = spawn_service(database_url, namespace, shutdown_grace_s="1",
                         job_modules="tests.support.jobs")
    try:
        async with client.subscribe("#") as events:
            short = await client.submit("alpha", "jobservice.sleep", {"seconds": 0.6})
            long = await client.submit("alpha", "tests.wait_forever")
            assert short is not None and long is not None
            await wait_for_all(events, [short.id, long.id], "RUNNING")  # type: ignore[list-item]
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
        statuses = dict(await db.fetch("SELECT id, status FROM t_job_info"))
        assert statuses == {short.id: "SUCCEEDED", long.id: "QUEUED"}  # finished; handed back
        assert await db.fetchval("SELECT count(*) FROM t_instance") == 0  # lease released
        assert await db.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0
    finally:
        if proc.poll() is None:
            proc.kill()
