"""`t_job_run` lists every ended attempt once (sql/009): an attempt that ends its job is read
from the job row, an attempt the job leaves behind (retry, hand-back, kick) is copied into
`t_job_past_run` when that happens."""

from __future__ import annotations

import uuid

import asyncpg

from tests.integration.test_scheduling import insert_queued

RUN_COLUMNS = ("attempt, instance_id, status, claimed_at, started_at, ended_at, duration_s, "
               "error_type, error_message, stack_trace, owner, context")


async def runs(db: asyncpg.Connection, job_id: uuid.UUID) -> list[dict[str, object]]:
    rows = await db.fetch(f"SELECT {RUN_COLUMNS} FROM t_job_run WHERE job_id = $1 "
                          "ORDER BY attempt", job_id)
    return [dict(r) for r in rows]


async def move(db: asyncpg.Connection, job_id: uuid.UUID, status: str, **columns: object) -> None:
    """One status change by hand, as the service's statements make them (the triggers keep
    the books)."""
    sets = ", ".join(f"{name} = ${n}" for n, name in enumerate(columns, start=3))
    await db.execute(f"UPDATE t_job_info SET status = $2{', ' + sets if sets else ''} "
                     "WHERE id = $1", job_id, status, *columns.values())


async def run_once(db: asyncpg.Connection, job_id: uuid.UUID, instance: str) -> None:
    """Claimed (a new attempt) and started, as the claim's UPDATE does it."""
    await db.execute("UPDATE t_job_info SET status = 'TO_BE_RUN', instance_id = $2, "
                     "attempt = attempt + 1 WHERE id = $1", job_id, instance)
    await move(db, job_id, "RUNNING")


async def test_an_attempt_that_ends_its_job_is_read_from_the_job_row(
    db: asyncpg.Connection,
) -> None:
    [job_id] = await insert_queued(db, "alpha", 1)
    await db.execute("UPDATE t_job_info SET owner = 'alice' WHERE id = $1", job_id)
    await run_once(db, job_id, "i1")
    await move(db, job_id, "SUCCEEDED")

    assert await db.fetchval("SELECT count(*) FROM t_job_past_run") == 0
    job = await db.fetchrow("SELECT claimed_at, started_at, ended_at FROM t_job_info "
                            "WHERE id = $1", job_id)
    [run] = await runs(db, job_id)
    assert run == {
        "attempt": 1, "instance_id": "i1", "status": "SUCCEEDED",
        "claimed_at": job["claimed_at"], "started_at": job["started_at"],
        "ended_at": job["ended_at"],
        "duration_s": (job["ended_at"] - job["started_at"]).total_seconds(),
        "error_type": None, "error_message": None, "stack_trace": None,
        "owner": "alice", "context": "admin",
    }


async def test_every_attempt_is_listed_once_through_retry_kick_hand_back_and_expiry(
    db: asyncpg.Connection,
) -> None:
    [job_id] = await insert_queued(db, "alpha", 1)
    # attempt 1 fails and is retried: copied, FAILED with its error
    await run_once(db, job_id, "i1")
    await move(db, job_id, "QUEUED", error_type="ValueError", error_message="first")
    # attempt 2 fails for good: the job row holds it
    await run_once(db, job_id, "i2")
    await move(db, job_id, "FAILED", error_type="KeyError", error_message="second")
    before_kick = await runs(db, job_id)
    assert [(r["attempt"], r["status"], r["error_message"], r["instance_id"])
            for r in before_kick] == [(1, "FAILED", "first", "i1"), (2, "FAILED", "second", "i2")]
    assert await db.fetchval("SELECT count(*) FROM t_job_run WHERE error_type = 'KeyError'") == 1

    # a kick resets the row: attempt 2 is copied first, exactly as it was listed
    await move(db, job_id, "QUEUED")
    assert await runs(db, job_id) == before_kick
    assert await db.fetchval("SELECT count(*) FROM t_job_past_run WHERE job_id = $1",
                             job_id) == 2

    # attempt 3 is handed back (no error), then the job expires while queued: attempt 3
    # stays the hand-back, not a second row for the expiry (which ran nothing)
    await run_once(db, job_id, "i3")
    await move(db, job_id, "QUEUED")
    await move(db, job_id, "FAILED", error_type="expired", error_message="expired")
    listed = await runs(db, job_id)
    assert [(r["attempt"], r["status"], r["error_type"]) for r in listed] == [
        (1, "FAILED", "ValueError"), (2, "FAILED", "KeyError"), (3, "QUEUED", None)]
    # kicked again: nothing new to copy (attempt 3 is there already)
    await move(db, job_id, "QUEUED")
    assert await runs(db, job_id) == listed


async def test_a_job_that_never_ran_has_no_attempt(db: asyncpg.Connection) -> None:
    [job_id] = await insert_queued(db, "alpha", 1)
    await move(db, job_id, "ABORTED", error_type="stopped", error_message="stopped")
    assert await runs(db, job_id) == []
    await move(db, job_id, "QUEUED")
    assert await db.fetchval("SELECT count(*) FROM t_job_past_run") == 0


async def test_queries_by_job_or_error_type_read_indexes(db: asyncpg.Connection) -> None:
    """The view stays cheap on a large table: each branch has an index path (with
    sequential scans priced out, the planner would still take one if none existed), and
    the SUCCEEDED branch drops out of a query by error type."""
    await insert_queued(db, "alpha", 3)
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        for query in ("SELECT * FROM t_job_run WHERE error_type = 'TimeoutError'",
                      f"SELECT * FROM t_job_run WHERE job_id = '{uuid.uuid4()}'"):
            plan = "\n".join(r[0] for r in await db.fetch(f"EXPLAIN {query}"))
            assert "Seq Scan" not in plan, plan
        plan = "\n".join(r[0] for r in await db.fetch(
            "EXPLAIN SELECT * FROM t_job_run WHERE error_type = 'TimeoutError'"))
        assert "SUCCEEDED" not in plan, plan
