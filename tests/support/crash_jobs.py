"""Jobs that record every start and end in `t_test_runs`, so tests can find double runs."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import anyio
import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import Job, JobContext

_pools: dict[tuple[int, str], asyncpg.Pool] = {}

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS t_test_runs (
    job_id uuid NOT NULL, attempt integer NOT NULL, instance text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)
"""


async def _pool() -> asyncpg.Pool:
    """One pool per event loop and database (tests run many loops in one process)."""
    key = (id(asyncio.get_running_loop()), os.environ["JOBSERVICE_DATABASE_URL"])
    pool = _pools.get(key)
    if pool is None:
        pool = await asyncpg.create_pool(key[1], min_size=1, max_size=4)
        _pools[key] = pool
    return pool


class RecordParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=0.3, ge=0)


class RecordedRunJob(Job[RecordParameters]):
    name = "tests.recorded_run"
    Parameters = RecordParameters

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        pool = await _pool()
        instance = os.environ.get("JOBSERVICE_INSTANCE_ID", "?")
        await pool.execute("INSERT INTO t_test_runs (job_id, attempt, instance) "
                           "VALUES ($1, $2, $3)", ctx.job_id, ctx.attempt, instance)
        await anyio.sleep(self.parameters.seconds)
        await pool.execute("UPDATE t_test_runs SET ended_at = clock_timestamp() "
                           "WHERE job_id = $1 AND attempt = $2", ctx.job_id, ctx.attempt)
        return {"instance": instance}


class AtMostOnceJob(RecordedRunJob):
    name = "tests.at_most_once"
    run_at_most_once: ClassVar[bool] = True
