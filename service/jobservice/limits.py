"""Worker limits (`jobservice run --max-jobs/--max-seconds/--max-memory`): when one is
reached the instance stops claiming, lets its jobs end, and exits 0, so that a supervisor
starts a fresh one (bounded lifetime, leaking job code, batch workers)."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable

import anyio

from jobservice.pool import WorkerPool
from jobservice.scheduler import Scheduler

log = logging.getLogger(__name__)

MEMORY_CHECK_S = 1.0


def current_rss_mb() -> float:
    """Resident memory of this process in MB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class WorkerLimits:
    def __init__(self, max_jobs: int | None, max_seconds: float | None,
                 max_memory_mb: float | None, scheduler: Scheduler, pool: WorkerPool,
                 stop: Callable[[str], None]) -> None:
        self._max_jobs = max_jobs
        self._max_seconds = max_seconds
        self._max_memory = max_memory_mb
        self._scheduler = scheduler
        self._pool = pool
        self._stop = stop
        self._started = time.monotonic()

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self._max_jobs, self._max_seconds, self._max_memory))

    async def run(self) -> None:
        """Returns after asking the instance to stop (or never, without limits)."""
        async with anyio.create_task_group() as tg:
            def reached(why: str) -> None:
                log.warning("worker limit reached: %s; draining and exiting", why)
                self._stop(why)
                tg.cancel_scope.cancel()

            if self._max_jobs is not None:
                tg.start_soon(self._watch_jobs, reached)
            if self._max_seconds is not None:
                tg.start_soon(self._watch_time, reached)
            if self._max_memory is not None:
                tg.start_soon(self._watch_memory, reached)

    async def _watch_jobs(self, reached: Callable[[str], None]) -> None:
        await self._scheduler.budget_spent.wait()
        await self._pool.wait_idle()  # the jobs it claimed run to their end
        reached(f"--max-jobs {self._max_jobs}")

    async def _watch_time(self, reached: Callable[[str], None]) -> None:
        assert self._max_seconds is not None
        await anyio.sleep(max(0.0, self._started + self._max_seconds - time.monotonic()))
        reached(f"--max-seconds {self._max_seconds:g}")

    async def _watch_memory(self, reached: Callable[[str], None]) -> None:
        assert self._max_memory is not None
        while True:  # polled: memory growth signals nothing we could wait on
            rss = current_rss_mb()
            if rss > self._max_memory:
                break
            await anyio.sleep(MEMORY_CHECK_S)
        reached(f"--max-memory {self._max_memory:g} MB (resident {rss:.0f} MB)")
