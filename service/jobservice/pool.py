"""The bounded worker pool: prepares claimed jobs, runs them, cancels them on `stop`, and
writes each final status (batched) before freeing the slot."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ValidationError

from jobservice.batching import BatchWriter, retry_transient
from jobservice.hooks import HookFailed, HookJob, Hooks
from jobservice.i18n import DEFAULT_CATALOGS, MessageCatalogs
from jobservice.joblog import JobLogWriter
from jobservice.jobs.base import (
    AbortWorker,
    Job,
    JobContext,
    JobStopped,
    Reschedule,
    SelectedElement,
)
from jobservice.jobs.registry import JobRegistry, UnknownJobClass
from jobservice.jobs.steps import StepsJob
from jobservice.logs import log_transition
from jobservice.metrics import ServiceMetrics
from jobservice.model import ErrorType, JobStatus
from jobservice.progress import CompletionThrottle, message_fields
from jobservice.retry import after_failure, reschedule_allowed
from jobservice.store import ClaimedJob, FinishedRun, JobRef, Store

log = logging.getLogger(__name__)

# stop: ABORTED; shutdown: handed back to QUEUED; lost: the lease is gone and the job may
# already be rescued elsewhere, so nothing is written.
CancelReason = Literal["stop", "shutdown", "lost"]
# What `Store.finish_and_claim` returns: applied ids, claimed jobs, expired jobs.
FinishAndClaim = tuple[set[UUID], list[ClaimedJob], list[JobRef]]


@dataclass(frozen=True, slots=True)
class RunPolicy:
    """What happens after a failed or rescheduled run (settings of the instance)."""

    retry_backoff_max_s: float = 3600.0
    max_reschedules: int = 100
    job_log_max_lines: int = 1000


@dataclass(eq=False)
class RunningJob:
    claim: ClaimedJob
    ctx: JobContext
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    cancel_reason: CancelReason | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class WorkerPool:
    """Never more than `capacity` jobs claimed or running in this instance."""

    def __init__(
        self,
        capacity: int,
        instance_id: str,
        store: Store,
        registry: JobRegistry,
        throttle: CompletionThrottle,
        finisher: BatchWriter[FinishedRun, set[UUID]],
        metrics: ServiceMetrics,
        *,
        policy: RunPolicy = RunPolicy(),
        hooks: Hooks | None = None,
        log_writer: JobLogWriter | None = None,
        on_abort_worker: Callable[[str], None] = lambda reason: None,
        on_requeued: Callable[[], None] = lambda: None,
        catalogs: MessageCatalogs = DEFAULT_CATALOGS,
    ) -> None:
        self.capacity = capacity
        self._policy = policy
        self._hooks = hooks or Hooks()
        self._log_writer = log_writer
        self._on_abort_worker = on_abort_worker
        self._on_requeued = on_requeued
        self._catalogs = catalogs
        self._instance_id = instance_id
        self._store = store
        self._registry = registry
        self._throttle = throttle
        self._finisher = finisher
        self._metrics = metrics
        self._threads = anyio.CapacityLimiter(capacity)
        self._busy = 0
        # Slots held for claims in flight: busy for the scheduler, not jobs for the gauge.
        self._held_for_claims = 0
        self._slot_freed = anyio.Event()
        self._running: dict[UUID, RunningJob] = {}
        # Runs whose final write also claimed: their slots went to the claimed jobs.
        self._handed_over: set[UUID] = set()
        # A claim starts jobs (RUNNING) in the database before they run here: a stop notice
        # arriving meanwhile is kept until they are launched.
        self._claims_in_flight = 0
        self._early_stops: set[UUID] = set()
        self._claims_settled = anyio.Event()
        # Claims wait while jobs recorded here but not held are taken back (takeback.py).
        self._claims_paused = 0
        self._task_group: TaskGroup | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self.finished = 0  # runs ended (any final status or handed back)
        metrics.pool_capacity.set(capacity)

    @property
    def free_slots(self) -> int:
        """Slots a claim may fill now (none while claims are held back)."""
        return 0 if self._claims_paused else self.capacity - self._busy

    @property
    def claims_paused(self) -> bool:
        return self._claims_paused > 0

    @asynccontextmanager
    async def claims_held_back(self) -> AsyncIterator[None]:
        """Inside, no claim is in flight and none begins: every job the database records
        as claimed by this instance is either held here (`running_ids`) or not held at all."""
        self._claims_paused += 1
        try:
            await self.claims_settled()
            yield
        finally:
            self._claims_paused -= 1
            self._slot_freed.set()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def running_unfinished(self) -> int:
        """Jobs running here whose final write has not returned (some may be waiting in
        the finisher's batch)."""
        return len(self._running)

    def running_ids(self) -> list[UUID]:
        return list(self._running)

    async def wait_for_free_slot(self) -> None:
        while self.free_slots <= 0:
            self._slot_freed = anyio.Event()
            await self._slot_freed.wait()

    def bind(self, task_group: TaskGroup) -> None:
        """Run in `task_group`. Jobs run in plain asyncio tasks (each in its own copy of the
        context, as in a task group): anyio's spawning cost ~50 us a job on our 2-core machine
        (+3.5 % no-op jobs/s without it, docs/benchmarks.md). They keep the task group's
        guarantees through `_job_task_done` (an error fails the group) and `_reap` (the group
        does not end before they do)."""
        self._task_group = task_group
        task_group.start_soon(self._reap, name="pool-jobs")

    async def _reap(self) -> None:
        """When the task group ends (shutdown, or a failure elsewhere), cancel the job tasks
        still there and wait for them, as the group would for its own tasks."""
        try:
            await anyio.sleep_forever()
        finally:
            tasks = list(self._job_tasks)
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*tasks, return_exceptions=True)

    def _job_task_done(self, task: asyncio.Task[None]) -> None:
        self._job_tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        assert self._task_group is not None

        async def fail() -> None:
            raise error

        self._task_group.start_soon(fail)  # the group fails and cancels, as for its own task

    def _reserve(self, count: int) -> None:
        if count > self.free_slots:
            raise RuntimeError(f"claimed {count} jobs with {self.free_slots} free slots")
        self._busy += count
        self._publish_busy()

    def hold_for_claim(self, count: int) -> None:
        """Take `count` free slots for a claim about to run (see `settle_claim`)."""
        if count > self.free_slots:
            raise RuntimeError(f"claimed {count} jobs with {self.free_slots} free slots")
        self._held_for_claims += count
        self._reserve(count)

    def settle_claim(self, held: int, claimed: int) -> None:
        """The claim returned `claimed` jobs: they keep their slots, the rest are given back."""
        self._held_for_claims -= held
        self._release(held - claimed)

    def _publish_busy(self) -> None:
        # The gauge shows jobs claimed or running here, not slots held while a claim is
        # in flight (an idle instance would otherwise flicker to "full" at every claim).
        self._metrics.pool_busy.set(self._busy - self._held_for_claims)

    def _release(self, count: int = 1) -> None:
        self._busy -= count
        self._publish_busy()
        self._slot_freed.set()

    def _free_slot_of(self, job_id: UUID) -> None:
        """A run is over: free its slot, unless its final write handed it to a claimed job."""
        if job_id in self._handed_over:
            self._handed_over.discard(job_id)
        else:
            self._release()

    async def write_finals(
        self, runs: Sequence[FinishedRun], limit: int,
        finish_and_claim: Callable[[int], Awaitable[FinishAndClaim]],
    ) -> tuple[set[UUID], int]:
        """Write the final statuses of `runs` and claim up to `limit` jobs in the same round
        trip: the slots the runs free first, then free ones. Returns the ids whose write
        applied and how many jobs were claimed (they are started here)."""
        free = max(0, limit - len(runs))  # slots taken beyond those the runs hand over
        self.hold_for_claim(free)
        self.claim_begins()
        try:
            applied, claimed, expired = await finish_and_claim(limit)
        except BaseException:
            self.settle_claim(free, 0)
            self.claim_ends()
            raise
        # The runs hand their slots over: busy goes from (before + free) to
        # (before - len(runs) + claimed), never above capacity since claimed <= limit.
        self._handed_over.update(r.id for r in runs)
        self._held_for_claims -= free
        self._busy += len(claimed) - free - len(runs)
        self._publish_busy()
        if len(claimed) < limit:
            self._slot_freed.set()
        if expired:
            self.record_expired(expired)
        self.launch_claimed(claimed)
        return applied, len(claimed)

    def launch_claimed(self, claimed: Sequence[ClaimedJob]) -> None:
        """Start jobs claimed by a caller that must not wait for them (a final write, an
        intake batch), in another task: preparing may itself wait for a final write. Ends
        the claim (`claim_ends`) once they are launched."""
        assert self._task_group is not None, "pool not bound to a task group"
        self._task_group.start_soon(self._start_claimed, claimed)

    async def _start_claimed(self, claimed: Sequence[ClaimedJob]) -> None:
        try:
            await self.start(claimed)
        finally:
            self.claim_ends()

    def claim_begins(self) -> None:
        if self._claims_in_flight == 0:
            self._claims_settled = anyio.Event()
        self._claims_in_flight += 1

    def claim_ends(self) -> None:
        """After the claimed jobs were launched (or the claim failed)."""
        self._claims_in_flight -= 1
        if self._claims_in_flight == 0:
            self._early_stops.clear()
            self._claims_settled.set()

    async def claims_settled(self) -> None:
        """Once no claim is in flight (shutdown: once the scheduler stopped, every job claimed
        is then running here, so the grace period and hand-back see them all)."""
        if self._claims_in_flight:
            await self._claims_settled.wait()

    @property
    def runnable(self) -> list[str]:
        """Job classes the claim may start at once (RUNNING in the same round trip): those
        registered here, unless before-hooks are set (they prepare jobs, which the contract
        does while they are TO_BE_RUN)."""
        return [] if self._hooks else self._registry.names()

    async def start(self, claimed: Sequence[ClaimedJob]) -> None:
        """Run claimed jobs. The claim started (RUNNING) those of a class registered here;
        others are TO_BE_RUN: prepared, then marked RUNNING in one statement (or FAILED).

        The slots must have been reserved before the claim."""
        assert self._task_group is not None, "pool not bound to a task group"
        now = time.time()
        m = self._metrics
        m.child(m.transitions, JobStatus.TO_BE_RUN.value).inc(len(claimed))
        for claim in claimed:
            if claim.queued_at is not None:
                m.child(m.queue_wait, claim.job_class).observe(
                    max(0.0, now - claim.queued_at.timestamp()))
            log_transition(claim.id, claim.tenant, claim.job_class, "TO_BE_RUN")
        started = [c for c in claimed if c.status is JobStatus.RUNNING]
        m.child(m.transitions, JobStatus.RUNNING.value).inc(len(started))
        for claim in started:
            log_transition(claim.id, claim.tenant, claim.job_class, "RUNNING")
            job = await self._prepare(claim)
            if job is not None:
                self._launch(claim, job, stop_requested=False)
        await self._prepare_and_start([c for c in claimed if c.status is JobStatus.TO_BE_RUN])

    async def _prepare_and_start(self, claimed: Sequence[ClaimedJob]) -> None:
        prepared: dict[UUID, tuple[ClaimedJob, Job[Any]]] = {}
        for claim in claimed:
            job = await self._prepare(claim)
            if job is not None:
                prepared[claim.id] = (claim, job)
        if not prepared:
            return
        started = await retry_transient(
            "mark running", lambda: self._store.mark_running(list(prepared), self._instance_id))
        self._metrics.transitions.labels(JobStatus.RUNNING.value).inc(len(started))
        # Jobs stopped between claim and start are ABORTED already: free their slots.
        self._release(len(prepared) - len(started))
        for row in started:
            claim, job = prepared[row.id]
            log_transition(claim.id, claim.tenant, claim.job_class, "RUNNING")
            self._launch(claim, job, row.stop_requested)

    def _launch(self, claim: ClaimedJob, job: Job[Any], stop_requested: bool) -> None:
        assert self._task_group is not None, "pool not bound to a task group"
        ctx = self._context(claim, job)
        running = RunningJob(claim, ctx)
        self._running[claim.id] = running
        if stop_requested or claim.id in self._early_stops:
            self.cancel(claim.id, "stop")
        self.spawn_job_task(self._run(running, job), name=f"job-{claim.id}")

    def spawn_job_task(self, run: Coroutine[Any, Any, None], name: str) -> None:
        """A job's task (see `bind`)."""
        task = asyncio.get_running_loop().create_task(run, name=name)
        self._job_tasks.add(task)
        task.add_done_callback(self._job_task_done)

    def _context(self, claim: ClaimedJob, job: Job[Any]) -> JobContext:
        elements = [SelectedElement(str(e["type"]), e["id"])
                    for e in claim.selected_elements or []]
        return JobContext(claim.id, claim.tenant, claim.job_class, claim.attempt,
                          claim.owner, job.completion_count, self._log_writer,
                          self._policy.job_log_max_lines, context=claim.context,
                          environment=claim.environment, selected_elements=elements,
                          renderer=self._catalogs.render)

    def record_expired(self, jobs: Sequence[JobRef]) -> None:
        """Jobs the claim found past their expiration date (now FAILED, never run)."""
        self._metrics.transitions.labels(JobStatus.FAILED.value).inc(len(jobs))
        for job in jobs:
            log_transition(job.id, job.tenant, job.job_class, "FAILED", detail="expired")

    async def _prepare(self, claim: ClaimedJob) -> Job[Any] | None:
        """Build the job from its parameters (after the before-hooks, which may change
        them); a job that cannot be built ends FAILED (from TO_BE_RUN, or from RUNNING when
        the claim started it: parameters that passed intake but not this version's model)."""
        try:
            job_type = self._registry.get(claim.job_class)
            raw = claim.parameters
            if self._hooks:
                raw = await self._hooks.before(_hook_job(claim), raw)
            parameters = job_type.Parameters.model_validate(raw)
            job = job_type(parameters)
            if isinstance(job, StepsJob):
                job.build(self._registry)
            return job
        except (UnknownJobClass, ValidationError, HookFailed, ValueError) as exc:
            error = (ErrorType.UNKNOWN_JOB_CLASS if isinstance(exc, UnknownJobClass)
                     else ErrorType.HOOK_FAILED if isinstance(exc, HookFailed)
                     else ErrorType.INVALID_PARAMETERS)
            log_transition(claim.id, claim.tenant, claim.job_class, "FAILED", logging.ERROR,
                           f"cannot be prepared: {error.value}: {exc}")
            if claim.status is JobStatus.RUNNING:
                await self._finisher.submit(FinishedRun(
                    claim.id, claim.attempt, JobStatus.FAILED, error_type=error.value,
                    error_message=str(exc)))
            else:
                await self._store.fail_claimed(claim.id, self._instance_id, error.value,
                                               str(exc))
            self._metrics.transitions.labels(JobStatus.FAILED.value).inc()
            self._free_slot_of(claim.id)
            return None

    def cancel(self, job_id: UUID, reason: CancelReason) -> bool:
        """Cancel a job running here; False if it does not run here."""
        running = self._running.get(job_id)
        if running is None:
            if self._claims_in_flight:
                self._early_stops.add(job_id)  # it may be one being started right now
            return False
        if running.cancel_reason is None:
            running.cancel_reason = reason
        running.ctx.request_stop()
        running.scope.cancel()
        return True

    async def cancel_all_and_wait(self, reason: CancelReason) -> None:
        jobs = list(self._running.values())
        for running in jobs:
            self.cancel(running.claim.id, reason)
        for running in jobs:
            await running.done.wait()

    async def wait_idle(self) -> None:
        while self._running:
            await next(iter(self._running.values())).done.wait()

    async def _run(self, running: RunningJob, job: Job[Any]) -> None:
        claim, ctx = running.claim, running.ctx
        self._throttle.track(ctx)
        started = time.monotonic()
        outcome: FinishedRun | None = None
        with running.scope:
            outcome = await self._execute(running, job)
        try:
            with anyio.CancelScope(shield=True):
                self._throttle.untrack(claim.id)
                if running.cancel_reason == "lost":
                    log.warning("job %s dropped: this instance lost its lease", claim.id)
                    return
                ctx.close_log()
                if self._log_writer is not None and ctx.log_lines:
                    await self._log_writer.flush()  # the log before the final status
                if running.cancel_reason == "shutdown":
                    await self._store.hand_back([claim.id], self._instance_id)
                    log_transition(claim.id, claim.tenant, claim.job_class, "QUEUED",
                                   detail="handed back at shutdown")
                    self._metrics.transitions.labels(JobStatus.QUEUED.value).inc()
                    return
                if outcome is None or running.cancel_reason == "stop":
                    outcome = FinishedRun(claim.id, claim.attempt, JobStatus.ABORTED,
                                          percent=ctx.percent_completed,
                                          error_type=ErrorType.STOPPED.value,
                                          error_message="stopped while running")
                outcome = _with_message(ctx, outcome)
                applied = await self._finisher.submit(outcome)
                if claim.id in applied:
                    self._count_outcome(claim, outcome, time.monotonic() - started)
                _log_outcome(claim, outcome, applied)
        finally:
            self._running.pop(claim.id, None)
            self.finished += 1
            self._free_slot_of(claim.id)
            running.done.set()

    def _count_outcome(self, claim: ClaimedJob, outcome: FinishedRun, seconds: float) -> None:
        m = self._metrics
        m.child(m.transitions, outcome.status.value).inc()
        if outcome.status is JobStatus.QUEUED:
            kind = ("retry" if outcome.failed else "reschedule" if outcome.rescheduled
                    else "abort_worker")
            self._metrics.requeued.labels(kind).inc()
            self._on_requeued()
        else:
            m.child(m.run_duration, claim.job_class).observe(seconds)

    async def _execute(self, running: RunningJob, job: Job[Any]) -> FinishedRun | None:
        """Run the job; None when it was cancelled (the caller decides what that means)."""
        claim, ctx = running.claim, running.ctx
        try:
            if _runs_on_the_loop(job):
                result = await job.run(ctx)
            else:
                result = await anyio.to_thread.run_sync(
                    job.run, ctx, abandon_on_cancel=True, limiter=self._threads)
            if running.cancel_reason is None and self._hooks:
                result = await self._hooks.after(_hook_job(claim), result)
        except JobStopped:
            return None
        except Reschedule as request:
            return None if running.cancel_reason is not None else self._reschedule(
                claim, ctx, request)
        except AbortWorker as abort:
            if running.cancel_reason is not None:
                return None
            # Stop claiming before the job is back in the queue, so another instance runs it.
            self._on_abort_worker(abort.reason)
            return FinishedRun(claim.id, claim.attempt, JobStatus.QUEUED,
                               percent=ctx.percent_completed,
                               error_message=f"handed back: instance {self._instance_id} "
                                             f"aborted: {abort.reason}"[:10_000])
        except HookFailed as exc:
            return None if running.cancel_reason is not None else self._failure(
                claim, ctx, ErrorType.HOOK_FAILED.value, str(exc), exc.stack_trace)
        except Exception as exc:
            if running.cancel_reason is not None:
                return None
            return self._failure(claim, ctx,
                                 str(getattr(exc, "error_type", type(exc).__name__))[:200],
                                 str(exc)[:10_000] or repr(exc),
                                 "".join(traceback.format_exception(exc))[-50_000:])
        if running.cancel_reason is not None:
            return None
        try:
            result_json = _to_json(result)
        except (TypeError, ValueError) as exc:
            return self._failure(claim, ctx, ErrorType.RESULT_NOT_SERIALIZABLE.value,
                                 f"result is not JSON-serializable: {exc}", None)
        return FinishedRun(claim.id, claim.attempt, JobStatus.SUCCEEDED, percent=100,
                           result_json=result_json)

    def _failure(self, claim: ClaimedJob, ctx: JobContext, error_type: str, message: str,
                 stack_trace: str | None) -> FinishedRun:
        """FAILED, or back to QUEUED after a backoff while automatic retries are left."""
        decision = after_failure(claim.failures, claim.max_retries, claim.retry_backoff_s,
                                 self._policy.retry_backoff_max_s)
        if decision.delay_s is None:
            return FinishedRun(claim.id, claim.attempt, JobStatus.FAILED,
                               percent=ctx.percent_completed, error_type=error_type,
                               error_message=message, stack_trace=stack_trace)
        return FinishedRun(claim.id, claim.attempt, JobStatus.QUEUED,
                           percent=ctx.percent_completed, error_type=error_type,
                           error_message=message, stack_trace=stack_trace,
                           delay_s=decision.delay_s, failed=1)

    def _reschedule(self, claim: ClaimedJob, ctx: JobContext,
                    request: Reschedule) -> FinishedRun:
        if not reschedule_allowed(claim.reschedules, self._policy.max_reschedules):
            return FinishedRun(
                claim.id, claim.attempt, JobStatus.FAILED, percent=ctx.percent_completed,
                error_type=ErrorType.RESCHEDULED_TOO_OFTEN.value,
                error_message=f"rescheduled {claim.reschedules} times already (the limit is "
                              f"{self._policy.max_reschedules}); last: {request}")
        return FinishedRun(claim.id, claim.attempt, JobStatus.QUEUED,
                           percent=ctx.percent_completed, error_message=str(request)[:10_000],
                           delay_s=request.delay_s, rescheduled=1)


_ON_THE_LOOP: dict[type[Any], bool] = {}


def _runs_on_the_loop(job: Job[Any]) -> bool:
    """`run` is `async def` (on the event loop) rather than plain (in a thread); known per
    job type after its first job (inspect's check costs ~2 us, every job asked it)."""
    kind = type(job)
    known = _ON_THE_LOOP.get(kind)
    if known is None:
        known = _ON_THE_LOOP[kind] = inspect.iscoroutinefunction(job.run)
    return known


def _with_message(ctx: JobContext, outcome: FinishedRun) -> FinishedRun:
    """The job's last message goes with its final write."""
    key, params = message_fields(ctx.current_message)
    if key is None:
        return outcome
    return dataclasses.replace(outcome, message_key=key, message_params_json=params)


def _hook_job(claim: ClaimedJob) -> HookJob:
    return HookJob(claim.id, claim.tenant, claim.job_class, claim.attempt, claim.owner)


def _to_json(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return json.dumps(result, allow_nan=False)


def _log_outcome(claim: ClaimedJob, outcome: FinishedRun, applied: set[UUID]) -> None:
    if claim.id not in applied:
        log_transition(claim.id, claim.tenant, claim.job_class, outcome.status.value,
                       logging.WARNING, "not written: the job is no longer this instance's run")
    elif outcome.status is JobStatus.FAILED:
        log_transition(claim.id, claim.tenant, claim.job_class, "FAILED", logging.INFO,
                       f"{outcome.error_type}: {outcome.error_message}")
    elif outcome.status is JobStatus.QUEUED:
        detail = (f"retry in {outcome.delay_s:.2f}s after {outcome.error_type}: "
                  f"{outcome.error_message}" if outcome.failed else outcome.error_message or "")
        log_transition(claim.id, claim.tenant, claim.job_class, "QUEUED", logging.INFO, detail)
    else:
        log_transition(claim.id, claim.tenant, claim.job_class, outcome.status.value)
