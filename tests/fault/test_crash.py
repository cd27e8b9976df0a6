"""kill -9 of an instance in the middle of its work: leases expire, another instance
rescues the jobs; every job ends in exactly one final status, none ran twice at once."""

from __future__ import annotations

import signal
import subprocess
import uuid

import asyncpg
import pytest

from jobservice.client import JobClient
from tests.conftest import ServiceFactory, wait_until
from tests.support.amqp import EventTap
from tests.support.crash_jobs import CREATE_TABLE
from tests.support.processes import spawn_service
from tests.support.report import count_scenario

pytestmark = pytest.mark.fault  # heavy and process-killing: runs with the fault tests

LEASE = {"heartbeat_s": 0.3, "lease_timeout_s": 1.5}


def spawn_instance(database_url: str, namespace: str, name: str) -> subprocess.Popen[bytes]:
    return spawn_service(database_url, namespace, instance_id=name, pool_size="16",
                         job_modules="tests.support.crash_jobs",
                         heartbeat_s=str(LEASE["heartbeat_s"]),
                         lease_timeout_s=str(LEASE["lease_timeout_s"]))


async def test_kill_9_in_the_middle_of_500_jobs_loses_nothing_and_runs_nothing_twice(
    start_service: ServiceFactory, client: JobClient, database_url: str, namespace: str,
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSERVICE_DATABASE_URL", database_url)  # read by the test job
    await db.execute(CREATE_TABLE)
    victim = spawn_instance(database_url, namespace, "victim")
    try:
        async def victim_ready() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM t_instance "
                                          "WHERE instance_id = 'victim'"))

        await wait_until(victim_ready, timeout=30)
        async with EventTap(namespace) as tap:
            ids = [uuid.uuid4() for _ in range(500)]
            half = [{"id": str(i), "tenant": f"t{n % 5}", "job_class": "tests.recorded_run",
                     "parameters": {"seconds": 0.2}} for n, i in enumerate(ids)]
            at_most_once = {"tenant": "careful", "job_class": "tests.at_most_once",
                            "parameters": {"seconds": 30}, "id": str(uuid.uuid4())}
            replies = [await client.submit_raw(at_most_once)]
            for message in half:
                replies.append(await client.submit_raw(message))
            assert all(r is not None and r.ok for r in replies)

            async def victim_busy() -> bool:
                return await db.fetchval(
                    "SELECT count(*) FROM t_job_info WHERE instance_id = 'victim' "
                    "AND status = 'RUNNING'") >= 10 and await db.fetchval(
                    "SELECT status FROM t_job_info WHERE id = $1",
                    uuid.UUID(at_most_once["id"])) == "RUNNING"

            await wait_until(victim_busy, timeout=30)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed_running = await db.fetchval(
                "SELECT count(*) FROM t_job_info WHERE instance_id = 'victim' "
                "AND status IN ('TO_BE_RUN', 'RUNNING')")
            assert killed_running >= 10
            await start_service(pool_size=16, job_modules=["tests.support.crash_jobs"], **LEASE)

            async def all_final() -> bool:
                return await db.fetchval(
                    "SELECT count(*) FROM t_job_info WHERE status IN "
                    "('SUCCEEDED', 'FAILED', 'ABORTED')") == 501

            await wait_until(all_final, timeout=90)
            # every submission again: idempotent, no second job
            for message in half:
                again = await client.submit_raw(message)
                assert again is not None and again.ok

            async def outbox_empty() -> bool:
                return await db.fetchval("SELECT count(*) FROM t_job_event_outbox") == 0

            await wait_until(outbox_empty, timeout=30)
            expected = await db.fetchval("SELECT sum(transition_seq) FROM t_job_info")
            events = await tap.drain(expected)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 501
    statuses = dict(await db.fetch("SELECT status, count(*) FROM t_job_info GROUP BY status"))
    errors = await db.fetch("SELECT error_type, error_message, count(*) FROM t_job_info "
                            "WHERE status = 'FAILED' GROUP BY 1, 2")
    assert statuses == {"SUCCEEDED": 500, "FAILED": 1}, (statuses, errors)
    lost = await db.fetchrow("SELECT status, error_type FROM t_job_info WHERE id = $1",
                             uuid.UUID(at_most_once["id"]))
    assert lost is not None and dict(lost) == {"status": "FAILED", "error_type": "lost"}
    assert await db.fetchval("SELECT count(*) FROM t_job_info WHERE attempt > 1 "
                             "AND status = 'SUCCEEDED'") >= 10  # rescued and re-run
    # no job ran twice at once: a rescued attempt started after the victim's run of it
    overlaps = await db.fetchval("""
        SELECT count(*) FROM t_test_runs a JOIN t_test_runs b
          ON a.job_id = b.job_id AND a.attempt < b.attempt
         WHERE a.ended_at IS NOT NULL AND b.started_at < a.ended_at""")
    assert overlaps == 0
    # a job runs again only when its earlier run was the victim's (killed before or while
    # writing its end: at-least-once); never twice on live instances
    repeated_elsewhere = await db.fetchval("""
        SELECT count(*) FROM t_test_runs a JOIN t_test_runs b
          ON a.job_id = b.job_id AND a.attempt < b.attempt
         WHERE a.instance <> 'victim'""")
    assert repeated_elsewhere == 0
    result = await count_scenario(
        "kill -9 of one of two instances, 500 jobs + 1 at-most-once", db,
        [*ids, at_most_once["id"]], [(j, e, s) for j, e, s, _ in events],
        duplicate_runs=overlaps + repeated_elsewhere)
    assert (result.lost, result.missing_events, result.duplicated_transitions) == (0, 0, 0)
    finals = [(j, e) for j, e, _, status in events if status in ("SUCCEEDED", "FAILED")]
    assert len({j for j, _ in finals}) == 501 and len(set(finals)) == 501
