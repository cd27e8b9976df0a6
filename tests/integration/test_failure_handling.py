"""Failure handling (issue 5): automatic retries with backoff, kick, reschedule and its cap,
delayed start, execution hooks, run history and job logs."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import asyncpg

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import ServiceFactory, wait_for_all, wait_for_status
from tests.support.processes import run_cli

SUCCESS_PATH = [("QUEUED", "TO_BE_RUN"), ("TO_BE_RUN", "RUNNING")]


async def _runs(db: asyncpg.Connection, job_id: object) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM t_job_run WHERE job_id = $1 ORDER BY attempt", job_id)


async def test_a_failed_run_is_retried_after_an_exponential_backoff(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.flaky", {"succeed_on_attempt": 3},
                                    max_retries=3, retry_backoff_s=0.4)
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED", timeout=20)
    assert [(e.previous_status, e.status) for e in seen] == [
        (None, "QUEUED"), *SUCCESS_PATH, ("RUNNING", "QUEUED"),
        *SUCCESS_PATH, ("RUNNING", "QUEUED"), *SUCCESS_PATH, ("RUNNING", "SUCCEEDED")]
    retried = [e for e in seen if e.previous_status == "RUNNING" and e.status == "QUEUED"]
    assert [e.error.type if e.error else None for e in retried] == ["FlakyError"] * 2
    assert seen[-1].error is None and seen[-1].result == {"attempt": 3}
    runs = await _runs(db, reply.id)
    assert [(r["attempt"], r["status"], r["error_type"]) for r in runs] == [
        (1, "FAILED", "FlakyError"), (2, "FAILED", "FlakyError"), (3, "SUCCEEDED", None)]
    # retry n waits within [b * 2^(n-1) / 2, b * 2^(n-1)] (equal jitter) and is claimed
    # within a second of that (the scheduler wakes at the not-before time, not at its 5 s poll)
    for previous, run, step in [(runs[0], runs[1], 0.4), (runs[1], runs[2], 0.8)]:
        gap = (run["claimed_at"] - previous["ended_at"]).total_seconds()
        assert step / 2 - 0.01 <= gap <= step + 1.0, (run["attempt"], gap)
    assert await db.fetchval("SELECT failures FROM t_job_info WHERE id = $1", reply.id) == 2


async def test_the_job_type_sets_the_default_retry_policy(
    service: JobService, client: JobClient
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.retrying_by_default",
                                    {"succeed_on_attempt": 2})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    assert seen[-1].result == {"attempt": 2}


async def test_exhausted_retries_end_failed_and_stay_there_until_kicked(
    service: JobService, client: JobClient, db: asyncpg.Connection, database_url: str
) -> None:
    async with client.subscribe("#") as events:
        flaky = await client.submit("alpha", "tests.flaky", {"succeed_on_attempt": 3},
                                    max_retries=1, retry_backoff_s=0.1)
        plain = await client.submit("alpha", "jobservice.fail", {"message": "no retries"})
        assert flaky is not None and flaky.id is not None
        assert plain is not None and plain.id is not None
        both = await wait_for_all(events, [flaky.id, plain.id], "FAILED")
        seen, plain_seen = both[str(flaky.id)], both[str(plain.id)]
        assert [(e.previous_status, e.status) for e in seen][-4:] == [
            ("RUNNING", "QUEUED"), *SUCCESS_PATH, ("RUNNING", "FAILED")]
        # the default is no retry at all
        assert [e.status for e in plain_seen] == ["QUEUED", "TO_BE_RUN", "RUNNING", "FAILED"]
        row = await db.fetchrow("SELECT status, failures, run_after FROM t_job_info "
                                "WHERE id = $1", flaky.id)
        assert row is not None and dict(row) == {"status": "FAILED", "failures": 1,
                                                 "run_after": None}
        # kick in bulk by tenant and error type: only the flaky job matches
        kicked = await asyncio.to_thread(run_cli, database_url, "jobs", "retry", "--tenant",
                                         "alpha", "--error-type", "FlakyError")
        assert kicked.returncode == 0, kicked.stderr
        assert "1 job(s) re-queued" in kicked.stdout
        seen = await wait_for_status(events, flaky.id, "SUCCEEDED")
        assert next((e.previous_status, e.status) for e in seen) == ("FAILED", "QUEUED")
        assert seen[-1].result == {"attempt": 3}  # the kick gave it a new retry budget
        # kick one job by id
        kicked = await asyncio.to_thread(run_cli, database_url, "jobs", "retry",
                                         str(plain.id))
        assert "1 job(s) re-queued" in kicked.stdout, kicked.stderr
        await wait_for_status(events, plain.id, "FAILED")
    assert await db.fetchval("SELECT attempt FROM t_job_info WHERE id = $1", plain.id) == 2
    nothing = await asyncio.to_thread(run_cli, database_url, "jobs", "retry", "--job-class",
                                      "tests.none")
    assert nothing.returncode == 0 and "0 job(s) re-queued" in nothing.stdout
    refused = await asyncio.to_thread(run_cli, database_url, "jobs", "retry")
    assert refused.returncode == 2  # bulk needs a filter


async def test_reschedule_delays_the_next_attempt_and_is_not_a_failure(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.reschedule",
                                    {"succeed_on_attempt": 3, "delay": 0.5})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    assert [(e.previous_status, e.status) for e in seen].count(("RUNNING", "QUEUED")) == 2
    runs = await _runs(db, reply.id)
    assert [(r["status"], r["error_type"]) for r in runs] == [
        ("QUEUED", None), ("QUEUED", None), ("SUCCEEDED", None)]
    assert "input not ready" in runs[0]["error_message"]
    for previous, run in itertools.pairwise(runs):
        gap = (run["claimed_at"] - previous["ended_at"]).total_seconds()
        assert 0.5 <= gap <= 1.5, gap
    row = await db.fetchrow("SELECT failures, reschedules FROM t_job_info WHERE id = $1",
                            reply.id)
    assert row is not None and (row["failures"], row["reschedules"]) == (0, 2)


async def test_too_many_reschedules_fail_the_job(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(max_reschedules=2)
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.reschedule",
                                    {"succeed_on_attempt": 100, "delay": 0})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "FAILED")
    assert seen[-1].error is not None and seen[-1].error.type == "rescheduled_too_often"
    assert [r["status"] for r in await _runs(db, reply.id)] == ["QUEUED", "QUEUED", "FAILED"]


async def test_run_after_holds_the_job_until_then_and_starts_it_within_a_second(
    service: JobService, client: JobClient
) -> None:
    assert service.settings.poll_interval_s >= 5  # the wake-up must not come from the poll
    async with client.subscribe("#") as events:
        run_after = datetime.now(UTC) + timedelta(seconds=2)
        reply = await client.submit("alpha", "jobservice.noop", run_after=run_after)
        assert reply is not None and reply.id is not None and reply.status == "QUEUED"
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    claimed = next(e for e in seen if e.status == "TO_BE_RUN")
    assert run_after <= claimed.at <= run_after + timedelta(seconds=1), claimed.at - run_after


async def test_hooks_change_parameters_and_results_and_a_raising_hook_fails_only_its_job(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(hooks=["tests.support.hooks"])
    outcomes = {}
    async with client.subscribe("#") as events:
        for value, status in [("change-me", "SUCCEEDED"), ("wrap-me", "SUCCEEDED"),
                              ("explode-before", "FAILED"), ("explode-after", "FAILED"),
                              ("untouched", "SUCCEEDED")]:
            reply = await client.submit("alpha", "tests.echo", {"value": value})
            assert reply is not None and reply.id is not None
            outcomes[value] = (reply.id, (await wait_for_status(events, reply.id, status))[-1])
    assert outcomes["change-me"][1].result == {"echo": "changed by the hook (attempt 1)"}
    assert outcomes["wrap-me"][1].result == {"wrapped": {"echo": "wrap-me"}}
    assert outcomes["untouched"][1].result == {"echo": "untouched"}
    before = outcomes["explode-before"][1].error
    assert before is not None and before.type == "hook_failed"
    assert before.message == ("before_job hook 'tests.support.hooks' raised ValueError: the "
                              "before hook refuses this job")
    after = outcomes["explode-after"][1].error
    assert after is not None and after.type == "hook_failed"
    assert after.message is not None and "after_job hook" in after.message
    assert after.stack_trace is not None and "KeyError" in after.stack_trace
    # the submission itself is kept as it was sent
    assert await db.fetchval("SELECT value FROM t_job_parameters WHERE job_id = $1",
                             outcomes["change-me"][0]) == '"change-me"'


async def test_every_attempt_has_a_history_row_and_its_log_lines(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection,
    database_url: str
) -> None:
    service = await start_service(job_log_max_lines=5)
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.flaky",
                                    {"succeed_on_attempt": 2, "log_lines": 6},
                                    max_retries=1, retry_backoff_s=0)
        assert reply is not None and reply.id is not None
        await wait_for_status(events, reply.id, "SUCCEEDED")
    runs = await _runs(db, reply.id)
    assert [(r["attempt"], r["status"], r["instance_id"]) for r in runs] == [
        (1, "FAILED", service.settings.instance_id),
        (2, "SUCCEEDED", service.settings.instance_id)]
    for run in runs:
        assert run["claimed_at"] <= run["started_at"] <= run["ended_at"]
        assert abs(run["duration_s"]
                   - (run["ended_at"] - run["started_at"]).total_seconds()) < 1e-3
    assert runs[0]["error_message"] == "attempt 1 failed"
    assert "FlakyError: attempt 1 failed" in runs[0]["stack_trace"]
    assert runs[1]["error_type"] is None and runs[1]["stack_trace"] is None
    # failures are found by error type
    assert await db.fetchval("SELECT array_agg(job_id) FROM t_job_run "
                             "WHERE error_type = 'FlakyError'") == [reply.id]
    lines = await db.fetch("SELECT attempt, level, message FROM t_job_log WHERE job_id = $1 "
                           "ORDER BY id", reply.id)
    # at most 5 lines per attempt, then one line counting the rest
    assert [(r["attempt"], r["level"], r["message"]) for r in lines] == [
        *[(1, "info", f"line {n} of attempt 1") for n in range(5)],
        (1, "warning", "2 more log line(s) dropped (JOBSERVICE_JOB_LOG_MAX_LINES)"),
        *[(2, "info", f"line {n} of attempt 2") for n in range(5)],
        (2, "warning", "1 more log line(s) dropped (JOBSERVICE_JOB_LOG_MAX_LINES)")]
    shown = await asyncio.to_thread(run_cli, database_url, "jobs", "show", str(reply.id),
                                    "--log-lines", "3")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for expected in (str(reply.id), "tests.flaky", "SUCCEEDED", "succeed_on_attempt = 2",
                     "attempts (2):", "FlakyError: attempt 1 failed", "log (last 3 line(s)):",
                     "line 4 of attempt 2", "1 more log line(s) dropped"):
        assert expected in out, (expected, out)
    assert "line 0 of attempt 1" not in out  # only the end of the log
    missing = await asyncio.to_thread(run_cli, database_url, "jobs", "show",
                                      "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
