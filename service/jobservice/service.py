"""Wires the parts of one instance, in start-up order, and shuts it down gracefully."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import anyio
from anyio.abc import TaskGroup

from jobservice.batching import TRANSIENT_DB_ERRORS, BatchWriter
from jobservice.bus import Broker
from jobservice.config import Settings, mask_url
from jobservice.control import ControlHandler
from jobservice.hooks import Hooks
from jobservice.http import METRICS_CONTENT_TYPE, HttpServer
from jobservice.i18n import MessageCatalogs
from jobservice.intake import Intake
from jobservice.joblog import JobLogWriter
from jobservice.jobs.registry import COMMAND_JOB_CLASS, JobRegistry
from jobservice.lease import LeaseKeeper
from jobservice.limits import WorkerLimits
from jobservice.listener import DatabaseListener
from jobservice.metrics import ServiceMetrics
from jobservice.pool import RunPolicy, WorkerPool
from jobservice.progress import CompletionThrottle
from jobservice.relay import OutboxRelay
from jobservice.scheduler import Scheduler
from jobservice.store import (
    OUTBOX_CHANNEL,
    STOP_CHANNEL,
    WORK_CHANNEL,
    ClaimFilter,
    CompletionWrite,
    FinishedRun,
    Store,
)
from jobservice.takeback import UnheldJobs

log = logging.getLogger(__name__)


# `jobservice run` exits with this when a job raised AbortWorker (the instance is unfit).
EXIT_WORKER_ABORTED = 3

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DB_ERRORS, ConnectionError)


async def _with_backoff(what: str, connect: Callable[[], Awaitable[None]]) -> None:
    backoff = 0.5
    while True:
        try:
            await connect()
            return
        except _CONNECT_ERRORS as exc:
            log.warning("%s not reachable (%s); retrying in %.1fs", what, exc, backoff)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


class JobService:
    """One instance. `await run()` serves until `request_stop()` (or SIGTERM via the CLI)."""

    def __init__(self, settings: Settings, registry: JobRegistry | None = None,
                 hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.registry = registry or JobRegistry.default(settings.job_modules)
        self.hooks = hooks if hooks is not None else Hooks.load(settings.hooks)
        if settings.command_jobs and COMMAND_JOB_CLASS not in self.registry:
            log.warning("JOBSERVICE_COMMAND_JOBS is set, but this version has no %s job type: "
                        "its submissions are refused (unknown_job_class)", COMMAND_JOB_CLASS)
        self.exit_code = 0  # of `jobservice run`: 0, or EXIT_WORKER_ABORTED
        self.stop_reason = ""
        self.metrics = ServiceMetrics()
        self.ready = anyio.Event()  # set once serving
        self._stop = anyio.Event()
        self._accepting = False
        self.store: Store | None = None
        self.broker: Broker | None = None
        self.pool: WorkerPool | None = None
        self.http: HttpServer | None = None
        self.relay: OutboxRelay | None = None
        self.scheduler: Scheduler | None = None
        self.listener: DatabaseListener | None = None
        self.lease: LeaseKeeper | None = None

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
        self._accepting = False
        self._stop.set()

    def _abort_worker(self, reason: str) -> None:
        """A job said this instance is unfit: claim nothing more, drain, exit non-zero."""
        log.error("worker aborted by a job: %s; draining, then exiting with code %d",
                  reason, EXIT_WORKER_ABORTED)
        self.metrics.worker_aborts.inc()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.exit_code = EXIT_WORKER_ABORTED
        self.request_stop(f"worker aborted: {reason}")

    async def run(self) -> None:
        s = self.settings
        log.info("starting instance %s (database %s, namespace %s, pool %d)",
                 s.instance_id, mask_url(s.database_url), s.namespace, s.pool_size)
        store = await self._connect_store()
        self.store = store
        self.metrics.counter_from("jobservice_db_statements", "SQL statements sent.",
                                  lambda: float(store.statements))
        self.http = HttpServer(s.http_host, s.http_port, {
            "/metrics": self._metrics_route, "/healthz": self._healthz,
            "/readyz": self._readyz})
        await self.http.start()
        broker = Broker(s)
        await _with_backoff("RabbitMQ", broker.connect)
        self.broker = broker
        try:
            async with anyio.create_task_group() as tg:
                await self._serve(tg, store, broker)
        finally:
            with anyio.CancelScope(shield=True):
                await broker.close()
                await self.http.close()
                await store.close()
            log.info("instance %s stopped", s.instance_id)

    async def _connect_store(self) -> Store:
        s = self.settings
        holder: list[Store] = []

        async def connect() -> None:
            store = await Store.connect(s.database_url, s.database_schema, s.db_pool_size,
                                        s.cycle_commit)
            applied = await store.migrate()
            if applied:
                log.info("migrations applied: %s", ", ".join(applied))
            holder.append(store)

        await _with_backoff("PostgreSQL", connect)
        return holder[0]

    async def _serve(self, tg: TaskGroup, store: Store, broker: Broker) -> None:
        s = self.settings
        # Final writes claim the slots they free in the same round trip (Scheduler).
        finisher: BatchWriter[FinishedRun, set[UUID]] = BatchWriter(
            "finish", lambda runs: scheduler.write_finals(runs),
            coming=lambda: pool.running_unfinished - finisher.backlog)

        async def write_completion(writes: Sequence[CompletionWrite]) -> None:
            await store.write_completion(writes, s.instance_id)
            self.metrics.completion_writes.inc()

        throttle = CompletionThrottle(s.completion_update_rate_ms / 1000, write_completion)
        job_log = JobLogWriter(store.insert_job_logs)
        pool = WorkerPool(s.pool_size, s.instance_id, store, self.registry, throttle, finisher,
                          self.metrics,
                          policy=RunPolicy(s.retry_backoff_max_s, s.max_reschedules,
                                           s.job_log_max_lines),
                          hooks=self.hooks, log_writer=job_log,
                          on_abort_worker=self._abort_worker,
                          on_requeued=lambda: scheduler.wake(),
                          catalogs=MessageCatalogs(s.message_dirs))
        scheduler = Scheduler(
            store, pool, s.instance_id, s.poll_interval_s,
            ClaimFilter(_tuple(s.tenants), _tuple(s.exclude_tenants), _tuple(s.job_types)),
            s.max_jobs)
        limits = WorkerLimits(s.max_jobs, s.max_seconds, s.max_memory_mb, scheduler, pool,
                              self.request_stop)

        def on_stop_notice(payload: str) -> None:
            try:
                pool.cancel(UUID(payload), "stop")
            except ValueError:
                log.warning("bad stop notification payload %r", payload)

        def on_reconnect() -> None:
            scheduler.wake()
            relay.kick()

        listener = DatabaseListener(
            store,
            {WORK_CHANNEL: lambda _: scheduler.wake(), OUTBOX_CHANNEL: lambda _: relay.kick(),
             STOP_CHANNEL: on_stop_notice},
            check_interval_s=min(s.poll_interval_s, s.heartbeat_s), on_connect=on_reconnect,
            catch_up=functools.partial(_catch_up_stops, store, pool, s.instance_id))
        relay = OutboxRelay(store, broker, listener, self.metrics, s.poll_interval_s)
        self.pool, self.scheduler, self.relay, self.listener = pool, scheduler, relay, listener

        def after_write() -> None:
            scheduler.wake()
            relay.kick()

        store.on_events_written = relay.kick
        unheld = UnheldJobs(store, pool, s.instance_id, self.metrics, after_write)
        scheduler.on_outcome_unknown = unheld.request
        lease = LeaseKeeper(store, s.instance_id, s.heartbeat_s, s.lease_timeout_s,
                            self.metrics, on_lease_lost=lambda: self._drop_jobs(pool),
                            on_rescued=after_write, on_server_crashed=unheld.request)
        self.lease = lease
        await lease.start()
        intake = Intake(store, broker, self.registry, self.metrics, s, scheduler.store_jobs)
        control = ControlHandler(store, broker, pool, self.metrics, s, after_write)

        background = anyio.CancelScope()
        jobs_scope = anyio.CancelScope()

        async def background_tasks() -> None:
            with background:
                async with anyio.create_task_group() as btg:
                    btg.start_soon(finisher.run, name="finisher")
                    btg.start_soon(throttle.run, name="completion-throttle")
                    btg.start_soon(listener.run, name="db-listener")
                    btg.start_soon(relay.run, name="outbox-relay")
                    btg.start_soon(self._refresh_gauges, name="metrics-refresh")
                    btg.start_soon(lease.run, name="lease")
                    btg.start_soon(unheld.run, name="take-back")
                    btg.start_soon(job_log.run, name="job-log")
                    if limits.active:
                        btg.start_soon(limits.run, name="worker-limits")

        async def job_tasks() -> None:
            with jobs_scope:
                async with anyio.create_task_group() as jtg:
                    pool.bind(jtg)
                    jtg.start_soon(scheduler.run, name="scheduler")
                    jtg.start_soon(intake.run, name="intake")
                    await anyio.sleep_forever()

        tg.start_soon(background_tasks)
        tg.start_soon(job_tasks)
        await listener.first_connection.wait()  # ready means NOTIFY wake-ups reach us
        # two batches in flight: the next one arrives while the previous one is stored
        await broker.consume(s.submit_queue, 2 * s.intake_batch_size, intake.receive)
        await broker.consume(s.control_queue, 32, control.receive)
        self._accepting = True
        self.ready.set()
        log.info("instance %s ready", s.instance_id)

        await self._stop.wait()
        log.info("stopping: %s", self.stop_reason)
        await self._shutdown(broker, pool, scheduler, finisher, relay, jobs_scope, job_log)
        background.cancel()
        with anyio.CancelScope(shield=True):
            try:
                await lease.release()
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("lease not released (%s); it will expire", exc)

    async def _shutdown(self, broker: Broker, pool: WorkerPool, scheduler: Scheduler,
                        finisher: BatchWriter[FinishedRun, set[UUID]], relay: OutboxRelay,
                        jobs_scope: anyio.CancelScope, job_log: JobLogWriter) -> None:
        """Stop taking work, let running jobs finish within the grace period, hand back the
        rest, flush final writes and events."""
        s = self.settings
        log.info("shutting down: %d job(s) running, grace %.0fs", pool.busy, s.shutdown_grace_s)
        with anyio.CancelScope(shield=True):
            await broker.stop_consuming()
            scheduler.stop()
            await scheduler.stopped.wait()
            await pool.claims_settled()  # a final write in flight may have claimed too
            with anyio.move_on_after(s.shutdown_grace_s):
                await pool.wait_idle()
            await pool.cancel_all_and_wait("shutdown")
            # Every job awaited its own final write above, so nothing is left to flush.
            jobs_scope.cancel()
            with anyio.move_on_after(5):
                await job_log.flush()
            with anyio.move_on_after(5):
                try:
                    await relay.drain()
                except Exception as exc:
                    log.warning("events left in the outbox for later: %s", exc)

    def _drop_jobs(self, pool: WorkerPool) -> None:
        for job_id in pool.running_ids():
            pool.cancel(job_id, "lost")

    async def _refresh_gauges(self) -> None:
        assert self.store is not None
        while True:
            try:
                counts = await self.store.count_jobs()
                self.metrics.jobs.clear()
                for tenant, status, jobs in counts:
                    self.metrics.jobs.labels(tenant, status).set(jobs)
                backlog, lag = await self.store.outbox_backlog()
                self.metrics.outbox_backlog.set(backlog)
                self.metrics.outbox_lag.set(lag)
            except TRANSIENT_DB_ERRORS as exc:
                log.debug("gauge refresh failed: %s", exc)
            await anyio.sleep(self.settings.metrics_refresh_s)

    # -- HTTP routes ------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return bool(self._accepting and self.broker is not None and self.broker.connected
                    and self.listener is not None and self.listener.connected)

    async def _metrics_route(self) -> tuple[int, str, bytes]:
        self.metrics.db_up.set(1 if self.listener is not None and self.listener.connected else 0)
        self.metrics.broker_up.set(1 if self.broker is not None and self.broker.connected else 0)
        if self.lease is not None:
            self.metrics.lease_age.set(self.lease.lease_age_s)
        return 200, METRICS_CONTENT_TYPE, self.metrics.render()

    async def _healthz(self) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    async def _readyz(self) -> tuple[int, str, bytes]:
        if self.is_ready():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"


def _tuple(names: list[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


async def _catch_up_stops(store: Store, pool: WorkerPool, instance_id: str) -> None:
    """A stop whose NOTIFY came while the listener was disconnected is only a flag in the
    database: act on it once listening again."""
    for job_id in await store.stop_requested_jobs(instance_id):
        if pool.cancel(job_id, "stop"):
            log.info("job %s: stop requested while the listener was away", job_id)
