"""This instance's lease (heartbeat), and the rescue of jobs whose instance died.

Rescue is lease based, not time based: a job is taken back only when the instance that owns
it stopped renewing its lease. An instance that cannot renew for most of the lease period
fences itself: it drops its running jobs (without writing them) before others can rescue
them, so no job runs in two places."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from jobservice.batching import TRANSIENT_DB_ERRORS
from jobservice.logs import log_transition
from jobservice.metrics import ServiceMetrics
from jobservice.model import JobStatus
from jobservice.store import Store

log = logging.getLogger(__name__)

FENCE_FRACTION = 0.8  # of the lease timeout without a renewal


class LeaseKeeper:
    def __init__(self, store: Store, instance_id: str, heartbeat_s: float, timeout_s: float,
                 metrics: ServiceMetrics, on_lease_lost: Callable[[], None],
                 on_rescued: Callable[[], None],
                 on_server_crashed: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._instance_id = instance_id
        self._heartbeat = heartbeat_s
        self._timeout = timeout_s
        self._metrics = metrics
        self._on_lease_lost = on_lease_lost
        self._on_rescued = on_rescued
        self._on_server_crashed = on_server_crashed
        self.last_renewed = time.monotonic()
        self.fenced = False

    async def start(self) -> None:
        """Before claiming: recover what a previous run under the same instance id left
        claimed (it looks like any dead instance's work), then take the lease."""
        await self._store.release_lease(self._instance_id)
        await self.rescue()
        await self._store.renew_lease(self._instance_id, self._timeout)
        self.last_renewed = time.monotonic()
        await self._store.server_crashed(self._instance_id)  # marks it: nothing held yet

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat)
            try:
                await self.heartbeat()
            except TRANSIENT_DB_ERRORS as exc:
                silent = time.monotonic() - self.last_renewed
                log.warning("lease renewal failed (%s); %.0fs since the last one", exc, silent)
                if silent > FENCE_FRACTION * self._timeout and not self.fenced:
                    log.error("no lease renewal for %.0fs: dropping running jobs before "
                              "other instances rescue them", silent)
                    self.fenced = True
                    self._on_lease_lost()

    async def heartbeat(self) -> None:
        recovered = self.fenced or await self._store.lease_lapsed(self._instance_id)
        if recovered:
            # Our jobs may be rescued (or run) elsewhere now. Drop them here, then let the
            # normal rescue hand back those still recorded as ours, before we claim again
            # (claims need a live lease, so none happen in between).
            if not self.fenced:
                log.error("lease of %s lapsed: dropping the jobs running here; they go "
                          "back to the queue", self._instance_id)
                self._on_lease_lost()
            await self._store.release_lease(self._instance_id)
            await self.rescue()
        await self._store.renew_lease(self._instance_id, self._timeout)
        self.last_renewed = time.monotonic()
        self.fenced = False
        # Releasing the lease above removed our mark too: that is no crash, and the rescue
        # has already handed back every job recorded as ours.
        if await self._store.server_crashed(self._instance_id) and not recovered:
            # crash recovery may have undone our last cycles (sql/015): jobs we finished or
            # never got may be recorded as ours
            log.warning("the database server crashed since the last heartbeat: taking back "
                        "the jobs recorded as %s's that it does not hold", self._instance_id)
            self._on_server_crashed()
        await self.rescue()
        if recovered:
            # The jobs handed back above were announced while we could not claim: claim now
            # rather than at the fallback poll.
            self._on_rescued()

    @property
    def lease_age_s(self) -> float:
        return time.monotonic() - self.last_renewed

    async def rescue(self) -> None:
        rescued = await self._store.rescue_orphans()
        for job, status, lost_instance in rescued:
            log_transition(job.id, job.tenant, job.job_class, status.value, logging.WARNING,
                           f"rescued from lost instance {lost_instance}")
            self._metrics.transitions.labels(status.value).inc()
            self._metrics.rescued.labels("requeued" if status is JobStatus.QUEUED
                                         else "failed_lost").inc()
        if rescued:
            self._on_rescued()

    async def release(self) -> None:
        await self._store.release_lease(self._instance_id)
