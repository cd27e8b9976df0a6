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
        self._stopping = False
        self._wait_scope = anyio.CancelScope()
        self.stopped = anyio.Event()
        self.claims = 0  # claim statements issued

    def stop(self) -> None:
        """Claim no more; a claim in flight still completes and its jobs start (so none is
        left claimed but not running). `stopped` is set once the loop has exited."""
        self._stopping = True
        self._wait_scope.cancel()

    def wake(self) -> None:
        """New work may be queued (in-process signal or a NOTIFY from another instance)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            self.stopped.set()

    async def _loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            with self._interruptible():
                await self._pool.wait_for_free_slot()
            if self._stopping:
                return
            # A wake-up that arrives while we claim must trigger another claim.
            self._wake = anyio.Event()
            free = self._pool.free_slots
            self._pool.reserve(free)
            try:
                claimed, expired = await self._store.claim_jobs(self._instance_id, free)
            except TRANSIENT_DB_ERRORS as exc:
                self._pool.reserve(-free)
                log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                with self._interruptible():
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
            if expired:
                self._pool.record_expired(expired)
            if claimed:
                await self._pool.start(claimed)
            if len(claimed) < free:
                with self._interruptible(), anyio.move_on_after(self._poll_interval):
                    await self._wake.wait()

    def _interruptible(self) -> anyio.CancelScope:
        """A wait that `stop()` ends."""
        self._wait_scope = anyio.CancelScope()
        if self._stopping:
            self._wait_scope.cancel()
        return self._wait_scope
