"""Decides when to claim: as many jobs as there are free slots, whenever new work may exist.

The fair choice itself (round robin over tenants, priority then age) is made in one SQL
function, `jobservice_claim_jobs`, so that it holds across instances."""

from __future__ import annotations

import logging

import anyio

from jobservice.batching import TRANSIENT_DB_ERRORS
from jobservice.pool import WorkerPool
from jobservice.store import Store

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, store: Store, pool: WorkerPool, instance_id: str,
                 poll_interval_s: float) -> None:
        self._store = store
        self._pool = pool
        self._instance_id = instance_id
        self._poll_interval = poll_interval_s
        self._wake = anyio.Event()
        self.paused = False
        self.claims = 0  # claim statements issued

    def wake(self) -> None:
        """New work may be queued (in-process signal or a NOTIFY from another instance)."""
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            await self._pool.wait_for_free_slot()
            if self.paused:
                await self._sleep_until_woken()
                continue
            # A wake-up that arrives while we claim must trigger another claim.
            self._wake = anyio.Event()
            free = self._pool.free_slots
            self._pool.reserve(free)
            try:
                claimed = await self._store.claim_jobs(self._instance_id, free)
            except TRANSIENT_DB_ERRORS as exc:
                self._pool.reserve(-free)
                log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except BaseException:
                self._pool.reserve(-free)
                raise
            backoff = 0.1
            self.claims += 1
            # Give back the slots the claim did not fill.
            self._pool.reserve(len(claimed) - free)
            if claimed:
                await self._pool.start(claimed)
            if len(claimed) < free:
                await self._sleep_until_woken()

    async def _sleep_until_woken(self) -> None:
        with anyio.move_on_after(self._poll_interval):
            await self._wake.wait()
