"""Decides when to claim: as many jobs as there are free slots, whenever new work may exist.

The fair choice itself (round robin over tenants, priority then age) is made in one SQL
function, `jobservice_claim_jobs`, so that it holds across instances; the scheduler calls it
through `jobservice_claim_and_start`, which also starts the claimed jobs in the same round
trip."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from uuid import UUID

import anyio

from jobservice.batching import TRANSIENT_DB_ERRORS
from jobservice.pool import WorkerPool
from jobservice.store import (
    ClaimedJob,
    ClaimFilter,
    ClaimRequest,
    FinishedRun,
    InsertOutcome,
    JobRef,
    NewJob,
    Store,
)

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, store: Store, pool: WorkerPool, instance_id: str,
                 poll_interval_s: float, claim_filter: ClaimFilter | None = None,
                 max_jobs: int | None = None) -> None:
        self._store = store
        self._filter = claim_filter or ClaimFilter()
        # jobs this instance may still claim (`--max-jobs`); None: no limit
        self.budget = max_jobs
        self.budget_spent = anyio.Event()
        self._pool = pool
        self._instance_id = instance_id
        self._poll_interval = poll_interval_s
        self._wake = anyio.Event()
        self._stopping = False
        self._wait_scope = anyio.CancelScope()
        self.stopped = anyio.Event()
        self.claims = 0  # claim statements issued
        self.intake_claims = 0  # of which intake batches stored with a claim (store_jobs)
        # Called when a claim failed on its connection: it may have committed (takeback.py).
        self.on_outcome_unknown: Callable[[], None] = lambda: None

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
            if self.budget is not None:
                free = min(free, self.budget)
                if free <= 0:
                    log.info("claimed as many jobs as --max-jobs allows; claiming no more")
                    self.budget_spent.set()
                    return
            try:
                claimed = await self._claim(free)
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                self.on_outcome_unknown()
                with self._interruptible():
                    await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if claimed < free:
                timeout = await self._idle_timeout()
                with self._interruptible(), anyio.move_on_after(timeout):
                    await self._wake.wait()

    async def _claim(self, free: int) -> int:
        """Claim (and start) up to `free` jobs; returns how many were claimed."""
        self._pool.hold_for_claim(free)
        self._pool.claim_begins()
        try:
            try:
                claimed, expired = await self._store.claim_jobs(
                    self._instance_id, free, self._filter, self._pool.runnable)
            except BaseException:
                self._pool.settle_claim(free, 0)
                raise
            self._settle(free, claimed, expired)
            if claimed:
                await self._pool.start(claimed)
            return len(claimed)
        finally:
            self._pool.claim_ends()

    def _settle(self, held: int, claimed: Sequence[ClaimedJob], expired: Sequence[JobRef]
                ) -> None:
        """A claim made on `held` slots returned: its jobs keep their slots (and count
        against `--max-jobs`), the slots it did not fill are given back."""
        self.claims += 1
        if self.budget is not None:
            self.budget -= len(claimed)
        self._pool.settle_claim(held, len(claimed))
        if expired:
            self._pool.record_expired(expired)

    async def store_jobs(self, jobs: Sequence[NewJob], more_waiting: bool = False
                         ) -> InsertOutcome:
        """The intake's write: store a batch and, when it queues work for an idle pool and
        no other submission waits behind it (`more_waiting`), claim in the same round trip:
        the submission reaches RUNNING without a wake-up and a second statement (idle
        wake-up p50 3.7 -> 2.8 ms). Otherwise the claim's time would hold up the submissions
        behind it, where the scheduler's own claim runs beside them, and jobs claimed here
        while others run would form a group apart from the final writes' (see
        docs/benchmarks.md). Claimed jobs start in the background."""
        idle = not (self._stopping or self._pool.busy or more_waiting)
        free = self._pool.free_slots if idle else 0
        if self.budget is not None:
            free = min(free, self.budget)
        if free <= 0:
            outcome = await self._store.insert_jobs(jobs)
            if outcome.created:
                self.wake()
            return outcome
        self._pool.hold_for_claim(free)
        self._pool.claim_begins()
        try:
            outcome = await self._store.insert_jobs(
                jobs, ClaimRequest(self._instance_id, free, self._filter, self._pool.runnable))
        except BaseException as exc:
            self._pool.settle_claim(free, 0)
            self._pool.claim_ends()
            if isinstance(exc, TRANSIENT_DB_ERRORS):
                self.on_outcome_unknown()
            raise
        claimed = outcome.claimed
        self.intake_claims += 1
        self._settle(free, claimed, outcome.expired)
        if claimed:
            self._pool.launch_claimed(claimed)
        else:
            self._pool.claim_ends()
        delayed = any(job.run_after is not None for job in jobs)
        if outcome.created and (outcome.claim_limit == 0 or len(claimed) >= free or delayed):
            # no claim was made (composite jobs in the batch), more may be queued than the
            # free slots took, or a delayed start is due later: the scheduler times it
            self.wake()
        return outcome

    async def write_finals(self, runs: Sequence[FinishedRun]) -> set[UUID]:
        """The finisher's write: the final statuses of `runs` and, in the same round trip,
        the claim of the slots they free and any other free ones (within `--max-jobs` and
        the claim filters; nothing once stopping). Returns the ids whose write applied."""
        paused = self._stopping or self._pool.claims_paused
        limit = 0 if paused else self._pool.free_slots + len(runs)
        if self.budget is not None:
            limit = min(limit, self.budget)
        try:
            applied, claimed = await self._pool.write_finals(
                runs, limit, lambda limit: self._store.finish_and_claim(
                    runs, self._instance_id, limit, self._filter, self._pool.runnable))
        except TRANSIENT_DB_ERRORS:
            # The connection failed: the cycle may have committed, its claims included,
            # without this instance knowing them. The finisher writes the finals again; the
            # claimed jobs, if any, are taken back.
            self.on_outcome_unknown()
            raise
        if self.budget is not None:
            self.budget -= claimed
        return applied

    async def _idle_timeout(self) -> float:
        """Sleep until the next wake-up, the fallback poll, or the earliest not-before time
        of a queued job (delayed start, retry backoff, reschedule), whichever comes first."""
        try:
            delay = await self._store.next_run_after()
        except TRANSIENT_DB_ERRORS:
            return self._poll_interval
        if delay is None:
            return self._poll_interval
        return max(0.0, min(self._poll_interval, delay + 0.005))

    def _interruptible(self) -> anyio.CancelScope:
        """A wait that `stop()` ends."""
        self._wait_scope = anyio.CancelScope()
        if self._stopping:
            self._wait_scope.cancel()
        return self._wait_scope
