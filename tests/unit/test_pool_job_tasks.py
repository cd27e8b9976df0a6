"""Jobs run in plain asyncio tasks (WorkerPool.spawn_job_task) that keep the guarantees of a
task group: an error in one fails the group, and the group does not end before they do."""

from __future__ import annotations

import contextvars
from typing import Any, cast

import anyio
import pytest

from jobservice.jobs.registry import JobRegistry
from jobservice.metrics import ServiceMetrics
from jobservice.pool import WorkerPool

unused = cast(Any, None)


def pool() -> WorkerPool:
    return WorkerPool(2, "i-1", unused, JobRegistry(), unused, unused, ServiceMetrics())


async def test_an_error_in_a_job_task_fails_the_task_group() -> None:
    workers = pool()

    async def broken() -> None:
        raise RuntimeError("bug in the pool")

    with pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            workers.bind(tg)
            workers.spawn_job_task(broken(), name="job-x")
            await anyio.sleep_forever()
    assert caught.group_contains(RuntimeError, match="bug in the pool")


async def test_the_task_group_waits_for_job_tasks_to_end() -> None:
    workers = pool()
    started = anyio.Event()
    cleaned_up: list[str] = []

    async def long_job() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # e.g. a hand-back written to the database
                cleaned_up.append("done")

    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        workers.spawn_job_task(long_job(), name="job-y")
        await started.wait()
        tg.cancel_scope.cancel()
    assert cleaned_up == ["done"]


async def test_each_job_task_has_its_own_context() -> None:
    workers = pool()
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: list[str] = []

    async def sets_it() -> None:
        seen.append(marker.get())
        marker.set("set by a job")

    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        for n in range(2):
            workers.spawn_job_task(sets_it(), name=f"job-{n}")
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == ["unset", "unset"]
