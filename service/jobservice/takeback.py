"""Hands back the jobs the database records as claimed or running by this instance while the
pool does not hold them, so that none stays stuck under a live lease. Two ways lead there:
- a crash of the database server undid the last pool cycles, which commit without waiting
  for their WAL flush (sql/015): jobs this pool finished are RUNNING here again;
- a claim committed and its reply was lost with the connection: its jobs never reached
  the pool.
Jobs go back to QUEUED (FAILED `lost` if they must not run twice), as a rescue does."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from jobservice.batching import retry_transient
from jobservice.logs import log_transition
from jobservice.metrics import ServiceMetrics
from jobservice.model import JobStatus
from jobservice.pool import WorkerPool
from jobservice.store import Store


class UnheldJobs:
    def __init__(self, store: Store, pool: WorkerPool, instance_id: str,
                 metrics: ServiceMetrics, on_taken_back: Callable[[], None]) -> None:
        self._store = store
        self._pool = pool
        self._instance_id = instance_id
        self._metrics = metrics
        self._on_taken_back = on_taken_back
        self._wanted = anyio.Event()

    def request(self) -> None:
        """Take them back soon (from any callback; requests made meanwhile are merged)."""
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            await self.take_back()

    async def take_back(self) -> None:
        """With claims held back (none in flight, none beginning), hand back every job
        recorded here that the pool does not hold; retried while the database is away."""
        async with self._pool.claims_held_back():
            taken = await retry_transient(
                "take back of jobs not held here",
                lambda: self._store.take_back_unheld(self._instance_id,
                                                     self._pool.running_ids()))
        for job, status in taken:
            log_transition(job.id, job.tenant, job.job_class, status.value, logging.WARNING,
                           "recorded as claimed here but not held (database crash or lost "
                           "reply): taken back")
            self._metrics.transitions.labels(status.value).inc()
            self._metrics.taken_back.labels("requeued" if status is JobStatus.QUEUED
                                            else "failed_lost").inc()
        if taken:
            self._on_taken_back()
