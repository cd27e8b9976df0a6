"""The only code that speaks SQL: the asyncpg pool, migrations and every named query."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from jobservice.joblog import JobLogLine
from jobservice.model import DEFAULT_CONTEXT, JobStatus
from jobservice.resources import resource_dir

# Whether a pool cycle's commit waits for its WAL flush (sql/015).
CycleCommit = Literal["async", "sync"]

log = logging.getLogger(__name__)

WORK_CHANNEL = "jobservice_work"
OUTBOX_CHANNEL = "jobservice_outbox"
STOP_CHANNEL = "jobservice_stop"
_MIGRATION_LOCK = 7310000
_RELAY_LOCK = 7310002
# Statements whose rows fire the outbox trigger: after them the relay has work.
_WRITES_EVENTS = frozenset({"claim_jobs", "mark_running", "finish_and_claim",
                            "write_completion", "fail_claimed", "stop_job"})
_CLAIMED = frozenset({JobStatus.TO_BE_RUN.value, JobStatus.RUNNING.value})
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[\w-]+\.sql$")


def load_queries(text: str) -> dict[str, str]:
    """Split a `-- name: x` headed SQL file into {name: statement}."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "-- name: __end__"]:
        header = re.match(r"^--\s*name:\s*(\w+)\s*$", line)
        if header:
            if name is not None:
                body = "\n".join(ln for ln in lines if not ln.lstrip().startswith("--"))
                queries[name] = body.strip().rstrip(";")
            name, lines = header.group(1), []
        else:
            lines.append(line)
    queries.pop("__end__", None)
    return queries


QUERIES = load_queries((resource_dir("sql") / "queries.sql").read_text())


@dataclass(frozen=True, slots=True)
class NewJob:
    id: UUID
    tenant: str
    job_class: str
    status: JobStatus
    priority: int
    description: str | None
    owner: str | None
    expiration_date: datetime | None
    parameters: dict[str, Any]
    at_most_once: bool = False
    max_retries: int = 0
    retry_backoff_s: float = 1.0
    run_after: datetime | None = None
    context: str = DEFAULT_CONTEXT
    # A composite submission (dependencies, on_success, elements, environment) in the
    # normalized JSON form stored by `jobservice_submit_job`; None for a plain one.
    spec: dict[str, Any] | None = None
    # Dependencies on jobs outside this submission (they must exist), and the tenants of
    # its on_success submissions (access control).
    external_dependencies: frozenset[UUID] = frozenset()
    other_tenants: frozenset[str] = frozenset()

    @property
    def tenants(self) -> frozenset[str]:
        return self.other_tenants | {self.tenant}


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: UUID
    status: JobStatus  # RUNNING (started by the claim) or TO_BE_RUN (to prepare, then start)
    tenant: str
    job_class: str
    priority: int
    owner: str | None
    attempt: int
    created_at: datetime
    queued_at: datetime | None
    parameters: dict[str, Any]
    max_retries: int = 0
    retry_backoff_s: float = 1.0
    failures: int = 0  # automatic retries so far
    reschedules: int = 0
    context: str = DEFAULT_CONTEXT
    selected_elements: list[dict[str, Any]] | None = None
    environment: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ClaimFilter:
    """Which jobs this instance claims (`jobservice run --tenants/--exclude-tenants/
    --job-types`); None: no restriction."""

    tenants: tuple[str, ...] | None = None
    exclude_tenants: tuple[str, ...] | None = None
    job_types: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class JobRef:
    """Enough of a job to log and count a transition of it."""

    id: UUID
    tenant: str
    job_class: str


@dataclass(frozen=True, slots=True)
class StopOutcome:
    status: JobStatus
    instance_id: str | None
    job: JobRef
    aborted_now: bool


@dataclass(frozen=True, slots=True)
class StartedJob:
    id: UUID
    stop_requested: bool
    started_at: datetime


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """The end of one attempt, written by `Store.finish_and_claim`."""

    id: UUID
    attempt: int
    status: JobStatus
    percent: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    stack_trace: str | None = None
    result_json: str | None = None
    # status QUEUED: seconds before the next attempt may start (None: at once)
    delay_s: float | None = None
    failed: int = 0  # 1: an automatic retry (counts against max_retries)
    rescheduled: int = 0  # 1: a Reschedule (counts against the reschedule cap)
    message_key: str | None = None
    message_params_json: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionWrite:
    id: UUID
    attempt: int
    percent: int
    message_key: str | None = None
    message_params_json: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: int  # of its batch: the outbox row of the statement that wrote it (sql/011)
    event_id: UUID
    seq: int
    routing_key: str
    body: str


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    created: frozenset[UUID]
    existing: dict[UUID, JobStatus]
    # the status each created job got (a composite one may be PENDING, QUEUED or ABORTED)
    statuses: dict[UUID, JobStatus] | None = None
    # with a ClaimRequest: the jobs claimed (and started) in the same round trip, and the
    # expired ones met on the way (now FAILED)
    claimed: list[ClaimedJob] = field(default_factory=list)
    expired: list[JobRef] = field(default_factory=list)
    claim_limit: int = 0  # the limit of the claim made with the insert; 0: none was asked


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A claim to make in the round trip that stores an intake batch (Store.insert_jobs):
    up to `limit` jobs for `instance_id`, as `Store.claim_jobs` would."""

    instance_id: str
    limit: int
    claim_filter: ClaimFilter
    runnable: Sequence[str]


@dataclass(frozen=True, slots=True)
class JobFilter:
    """`jobservice jobs list` filters; None matches anything."""

    tenant: str | None = None
    statuses: Sequence[str] | None = None
    job_class: str | None = None
    owner: str | None = None
    context: str | None = None
    dependency_state: str | None = None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset query (`SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL`), which costs a round trip per statement. Our pool
    connections keep no session state: no LISTEN (the listener has its own connection), no
    SET, no cursors, advisory locks only per transaction (or released in `finally`). An open
    transaction is still rolled back by asyncpg before this is called."""


def _filter_args(f: ClaimFilter) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    return (None if f.tenants is None else list(f.tenants),
            None if f.exclude_tenants is None else list(f.exclude_tenants),
            None if f.job_types is None else list(f.job_types))


def _insert_args(jobs: Sequence[NewJob]) -> tuple[list[Any], ...]:
    """$1-$16 of `insert_and_claim`: the jobs' columns, and their
    parameters as (job id, name, JSON value) rows."""
    param_ids: list[UUID] = []
    param_names: list[str] = []
    param_values: list[str] = []
    for job in jobs:
        for name, value in job.parameters.items():
            param_ids.append(job.id)
            param_names.append(name)
            param_values.append(json.dumps(value))
    return ([j.id for j in jobs], [j.tenant for j in jobs], [j.job_class for j in jobs],
            [j.status.value for j in jobs], [j.priority for j in jobs],
            [j.description for j in jobs], [j.owner for j in jobs],
            [j.expiration_date for j in jobs], param_ids, param_names, param_values,
            [j.at_most_once for j in jobs], [j.max_retries for j in jobs],
            [j.retry_backoff_s for j in jobs], [j.run_after for j in jobs],
            [j.context for j in jobs])


def _claimed(rows: Sequence[asyncpg.Record]) -> tuple[list[ClaimedJob], list[JobRef]]:
    claimed = [
        ClaimedJob(
            id=r["id"], status=JobStatus(r["status"]), tenant=r["tenant"],
            job_class=r["job_class"], priority=r["priority"], owner=r["owner"],
            attempt=r["attempt"], created_at=r["created_at"], queued_at=r["queued_at"],
            parameters=r["parameters"] or {}, max_retries=r["max_retries"],
            retry_backoff_s=r["retry_backoff_s"], failures=r["failures"],
            reschedules=r["reschedules"], context=r["context"],
            selected_elements=r["selected_elements"], environment=r["environment"],
        )
        for r in rows if r["status"] in _CLAIMED
    ]
    expired = [JobRef(r["id"], r["tenant"], r["job_class"])
               for r in rows if r["status"] not in _CLAIMED]
    return claimed, expired


class _HeldConnection:
    """A pool connection kept by a caller that runs one statement after another all the
    time (the outbox relay, the pool's final writes): its statements skip the pool's acquire
    and release, ~0.2 ms each on our 2-core machine (docs/benchmarks.md). A lock keeps them
    one at a time; a statement that fails hands the connection back (it may be broken) and
    the next one takes another."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy]:
        async with self._lock:
            if self._conn is not None and not _usable(self._conn):
                await self._release()
            if self._conn is None:
                self._conn = await self._pool.acquire()
            try:
                yield self._conn
            except BaseException:
                await self._release()
                raise

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await self._pool.release(conn)
            except asyncpg.InterfaceError:
                pass  # the pool took it back already (it closed)

    async def close(self) -> None:
        async with self._lock:
            await self._release()


def _usable(conn: PoolConnectionProxy) -> bool:
    """Open and still ours: when a connection closes (server restart, terminated backend)
    asyncpg's pool takes it back by itself, and the proxy then refuses every call."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


# Below this pool size every statement takes its connection from the pool: two held ones
# would leave too few for intake, control and the claims.
_HOLD_FROM_POOL_SIZE = 4


class Store:
    """Owns the asyncpg pool; each method is one transaction with one or two statements."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, schema: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self._schema = schema
        self.statements = 0  # statements sent, exported as a metric (bench: statements per job)
        self.on_events_written: Callable[[], None] = lambda: None
        hold = pool.get_max_size() >= _HOLD_FROM_POOL_SIZE
        self._relay_conn = _HeldConnection(pool) if hold else None
        self._finals_conn = _HeldConnection(pool) if hold else None

    @classmethod
    async def connect(cls, dsn: str, schema: str = "public", size: int = 10,
                      cycle_commit: CycleCommit = "sync") -> Store:
        """`cycle_commit`: whether the pool cycles' commits wait for their WAL flush
        ("sync") or not ("async", JOBSERVICE_CYCLE_COMMIT; sql/015)."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=size,
            init=_init_connection,
            reset=_keep_session,
            server_settings={"search_path": schema, "application_name": "jobservice",
                             "jobservice.cycle_commit": cycle_commit},
        )
        return cls(pool, dsn, schema)

    async def close(self) -> None:
        for held in (self._relay_conn, self._finals_conn):
            if held is not None:
                await held.close()
        await self._pool.close()

    async def connect_listener(self) -> asyncpg.Connection:
        """A dedicated connection for LISTEN and the relay's leadership lock."""
        return await asyncpg.connect(self._dsn, server_settings={
            "search_path": self._schema, "application_name": "jobservice-listener"})

    # -- migrations -----------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the numbered files of sql/ not applied yet, in order; returns their names."""
        files = sorted(
            (p for p in resource_dir("sql").iterdir() if _MIGRATION_NAME.match(p.name)),
            key=lambda p: int(_MIGRATION_NAME.match(p.name).group(1)),  # type: ignore[union-attr]
        )
        applied: list[str] = []
        async with self._pool.acquire() as conn:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS t_schema_migrations (
                           version integer PRIMARY KEY, name text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                done = {r["version"] for r in await conn.fetch(
                    "SELECT version FROM t_schema_migrations")}
                for path in files:
                    version = int(path.name.split("_", 1)[0])
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute(
                            "INSERT INTO t_schema_migrations (version, name) VALUES ($1, $2)",
                            version, path.name,
                        )
                    applied.append(path.name)
                    log.info("applied migration %s", path.name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    # -- intake ---------------------------------------------------------------------------

    async def insert_jobs(self, jobs: Sequence[NewJob], claim: ClaimRequest | None = None
                          ) -> InsertOutcome:
        """Create the jobs not yet known, notify claimers, report duplicates. Plain jobs
        only (the usual batch): one statement (insert, parameters, NOTIFY), one round trip,
        atomic without an explicit transaction; with `claim`, that statement also claims
        (sql/010_insert_and_claim.sql) when it created queued work. With composite ones: the
        plain ones in that statement, then one per composite one, in order, in one
        transaction, and no claim."""
        plain = [j for j in jobs if j.spec is None]
        composite = [j for j in jobs if j.spec is not None]
        statuses: dict[UUID, JobStatus] = {}
        created_ids: set[UUID] = set()
        rows: list[asyncpg.Record] = []
        claim_limit = claim.limit if claim is not None and not composite else 0
        if not composite:
            async with self._pool.acquire() as conn:
                rows = await self._insert_plain(conn, plain, claim if claim_limit else None)
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                if plain:
                    rows = await self._insert_plain(conn, plain, None)
                for job in composite:
                    row = await conn.fetchrow(QUERIES["submit_job"], job.spec)  # jsonb codec
                    self.statements += 1
                    assert row is not None
                    if row["created"]:
                        created_ids.add(job.id)
                        statuses[job.id] = JobStatus(row["status"])
        plain_created = {r["id"] for r in rows if r["created"]}
        created_ids |= plain_created
        statuses.update({j.id: j.status for j in plain if j.id in plain_created})
        claimed, expired = _claimed([r for r in rows if not r["created"]])
        # insert_jobs and jobservice_submit_job notify claimers by themselves
        created = frozenset(created_ids)
        if created:
            self.on_events_written()
        existing: dict[UUID, JobStatus] = {}
        duplicates = [j.id for j in jobs if j.id not in created]
        if duplicates:
            existing = await self.job_statuses(duplicates)
        return InsertOutcome(created, existing, statuses, claimed, expired, claim_limit)

    async def _insert_plain(self, conn: PoolConnectionProxy, jobs: Sequence[NewJob],
                            claim: ClaimRequest | None) -> list[asyncpg.Record]:
        """One statement: the jobs (created = true rows), and with `claim` the jobs it
        claimed (created = false rows; see sql/010_insert_and_claim.sql)."""
        rows = await conn.fetch(
            QUERIES["insert_and_claim"], *_insert_args(jobs),
            *((claim.instance_id, claim.limit, *_filter_args(claim.claim_filter),
               list(claim.runnable)) if claim is not None
              else (None, 0, None, None, None, None)))
        self.statements += 1
        return rows

    async def existing_job_ids(self, ids: Sequence[UUID]) -> set[UUID]:
        """Which of `ids` are jobs (to refuse dependencies on unknown ones)."""
        return {r["id"] for r in await self._fetch("existing_job_ids", list(ids))}

    async def job_statuses(self, ids: Sequence[UUID]) -> dict[UUID, JobStatus]:
        rows = await self._fetch("job_statuses", list(ids))
        return {r["id"]: JobStatus(r["status"]) for r in rows}

    # -- scheduling and running -----------------------------------------------------------

    async def claim_jobs(self, instance_id: str, limit: int,
                         claim_filter: ClaimFilter = ClaimFilter(), runnable: Sequence[str] = ()
                         ) -> tuple[list[ClaimedJob], list[JobRef]]:
        """Claimed jobs, and the expired ones met on the way (now FAILED). Claimed jobs of the
        `runnable` classes come back RUNNING (started in the same transaction), the others
        TO_BE_RUN."""
        return _claimed(await self._fetch("claim_jobs", instance_id, limit,
                                          *_filter_args(claim_filter), list(runnable)))

    async def finish_and_claim(self, runs: Sequence[FinishedRun], instance_id: str, limit: int,
                               claim_filter: ClaimFilter = ClaimFilter(),
                               runnable: Sequence[str] = ()
                               ) -> tuple[set[UUID], list[ClaimedJob], list[JobRef]]:
        """The final writes of `runs`, then `claim_jobs(limit)`, in one round trip (one
        transaction): the ids whose write applied, the claimed jobs, the expired ones.
        Re-queued runs (retry, reschedule) wake the claimers (NOTIFY in the function)."""
        rows = await self._fetch_on(
            "finish_and_claim", self._finals_conn, instance_id,
            [r.id for r in runs], [r.attempt for r in runs], [r.status.value for r in runs],
            [r.percent for r in runs], [r.error_type for r in runs],
            [r.error_message for r in runs], [r.stack_trace for r in runs],
            [r.result_json for r in runs], [r.delay_s for r in runs],
            [r.failed for r in runs], [r.rescheduled for r in runs],
            [r.message_key for r in runs], [r.message_params_json for r in runs], limit,
            *_filter_args(claim_filter), list(runnable),
        )
        claimed, expired = _claimed([r for r in rows if not r["finished"]])
        return {r["id"] for r in rows if r["finished"]}, claimed, expired

    async def next_run_after(self) -> float | None:
        """Seconds until the earliest not-before time of a queued job (None: none waits)."""
        row = await self._fetchrow("next_run_after")
        return None if row is None or row[0] is None else float(row[0])

    async def mark_running(self, ids: Sequence[UUID], instance_id: str) -> list[StartedJob]:
        rows = await self._fetch("mark_running", list(ids), instance_id)
        return [StartedJob(r["id"], r["stop_requested"], r["started_at"]) for r in rows]

    async def write_completion(self, writes: Sequence[CompletionWrite], instance_id: str) -> None:
        await self._execute(
            "write_completion",
            [w.id for w in writes], [w.attempt for w in writes], [w.percent for w in writes],
            instance_id, [w.message_key for w in writes],
            [w.message_params_json for w in writes],
        )

    async def fail_claimed(self, job_id: UUID, instance_id: str, error_type: str,
                           message: str) -> None:
        """TO_BE_RUN -> FAILED for a job that could not be prepared."""
        await self._execute("fail_claimed", job_id, instance_id, error_type, message)

    async def hand_back(self, ids: Sequence[UUID], instance_id: str) -> list[UUID]:
        """Put claimed or running jobs of this instance back to QUEUED (shutdown)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["hand_back"], list(ids), instance_id)
            await conn.execute(QUERIES["notify_work"])
            self.statements += 2
        self.on_events_written()
        return [r["id"] for r in rows]

    async def stop_requested_jobs(self, instance_id: str) -> list[UUID]:
        """Jobs running here whose stop was requested (their notice may have been missed)."""
        return [r["id"] for r in await self._fetch("stop_requested_jobs", instance_id)]

    # -- leases ---------------------------------------------------------------------------

    async def renew_lease(self, instance_id: str, timeout_s: float) -> bool:
        """Renew this instance's lease; False if it had expired (jobs may be rescued)."""
        async with self._pool.acquire() as conn:
            ok = await conn.fetchval(QUERIES["renew_lease"], instance_id, timeout_s)
        self.statements += 1
        return bool(ok)

    async def lease_lapsed(self, instance_id: str) -> bool:
        row = await self._fetchrow("lease_lapsed", instance_id)
        return bool(row is not None and row[0])

    async def release_lease(self, instance_id: str) -> None:
        await self._execute("release_lease", instance_id)

    async def server_crashed(self, instance_id: str) -> bool:
        """Whether the database server crashed since this instance last asked (true at its
        first question): its last cycles may have been rolled back (sql/015)."""
        row = await self._fetchrow("server_crashed", instance_id)
        return bool(row is not None and row[0])

    async def take_back_unheld(self, instance_id: str, held: Sequence[UUID]
                               ) -> list[tuple[JobRef, JobStatus]]:
        """Jobs recorded as claimed or running by this instance, but not among `held`: back
        to QUEUED (FAILED `lost` if they must not run twice), claimers woken."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["take_back_unheld"], instance_id, list(held))
            if rows:
                await conn.execute(QUERIES["notify_work"])
            self.statements += 2 if rows else 1
        if rows:
            self.on_events_written()
        return [(JobRef(r["id"], r["tenant"], r["job_class"]), JobStatus(r["status"]))
                for r in rows]

    async def rescue_orphans(self, limit: int = 500
                             ) -> list[tuple[JobRef, JobStatus, str]]:
        """Hand back (or fail) jobs of instances whose lease expired."""
        rows = await self._fetch("rescue_orphans", limit)
        if rows:
            self.on_events_written()
        return [(JobRef(r["id"], r["tenant"], r["job_class"]), JobStatus(r["status"]),
                 r["instance_id"]) for r in rows]

    # -- control --------------------------------------------------------------------------

    async def stop_job(self, job_id: UUID) -> StopOutcome | None:
        row = await self._fetchrow("stop_job", job_id)
        if row is None:
            return None
        return StopOutcome(JobStatus(row["status"]), row["instance_id"],
                           JobRef(job_id, row["tenant"], row["job_class"]),
                           bool(row["changed"]))

    async def enqueue_job(self, job_id: UUID) -> JobRef | None:
        """PENDING -> QUEUED; None if the job is not PENDING (or unknown)."""
        return await self._change_and_notify("enqueue_job", job_id)

    async def retry_job(self, job_id: UUID) -> JobRef | None:
        """FAILED/ABORTED -> QUEUED; None if the job is in neither (or unknown)."""
        return await self._change_and_notify("retry_job", job_id)

    async def _change_and_notify(self, query: str, job_id: UUID) -> JobRef | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(QUERIES[query], job_id)
            self.statements += 1
            if row is not None:
                await conn.execute(QUERIES["notify_work"])
                self.statements += 1
        if row is None:
            return None
        self.on_events_written()
        return JobRef(job_id, row["tenant"], row["job_class"])

    async def retry_jobs(self, job_id: UUID | None = None, tenant: str | None = None,
                         job_class: str | None = None, error_type: str | None = None
                         ) -> list[JobRef]:
        """Kick FAILED/ABORTED jobs matching every given filter back to QUEUED."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["retry_jobs"], job_id, tenant, job_class,
                                    error_type)
            self.statements += 1
            if rows:
                await conn.execute(QUERIES["notify_work"])
                await conn.execute(QUERIES["notify_outbox"])
                self.statements += 2
        if rows:
            self.on_events_written()
        return [JobRef(r["id"], r["tenant"], r["job_class"]) for r in rows]
    async def unfinished_dependencies(self, job_id: UUID) -> list[tuple[UUID, JobStatus]]:
        """The dependencies of a job that have not SUCCEEDED."""
        return [(r["id"], JobStatus(r["status"]))
                for r in await self._fetch("unfinished_dependencies", job_id)]

    async def job_status(self, job_id: UUID) -> JobStatus | None:
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(QUERIES["job_status"], job_id)
        self.statements += 1
        return None if value is None else JobStatus(value)

    async def job_tenant(self, job_id: UUID) -> str | None:
        row = await self._fetchrow("job_tenant", job_id)
        return None if row is None else str(row["tenant"])

    async def get_job(self, job_id: UUID) -> dict[str, Any] | None:
        row = await self._fetchrow("get_job", job_id)
        if row is None:
            return None
        job = dict(row)
        job["parameters"] = {r["name"]: r["value"] for r in await self._fetch(
            "get_parameters", job_id)}
        return job

    async def job_runs(self, job_id: UUID) -> list[dict[str, Any]]:
        """The run history of a job, one row per attempt."""
        return [dict(r) for r in await self._fetch("job_runs", job_id)]

    async def job_log_tail(self, job_id: UUID, lines: int) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._fetch("job_log_tail", job_id, lines)]

    async def insert_job_logs(self, lines: Sequence[JobLogLine]) -> None:
        await self._execute(
            "insert_job_logs", [ln.job_id for ln in lines], [ln.attempt for ln in lines],
            [ln.at for ln in lines], [ln.level for ln in lines], [ln.message for ln in lines],
            [ln.message_key for ln in lines],
            [None if ln.message_key is None else json.dumps(ln.message_params or {},
                                                            default=str) for ln in lines])

    async def list_jobs(self, where: JobFilter, limit: int, offset: int
                        ) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "list_jobs", where.tenant, list(where.statuses) if where.statuses else None,
            where.job_class, where.owner, where.context, where.dependency_state, limit, offset)
        return [dict(r) for r in rows]

    async def job_details(self, job_id: UUID, log_lines: int = 20) -> dict[str, Any] | None:
        """The job with its parameters, dependencies, dependents, on_success submissions,
        attempts and the end of its log (`jobservice jobs show`)."""
        job = await self.get_job(job_id)
        if job is None:
            return None
        job["depends_on"] = [dict(r) for r in await self._fetch("job_dependencies", job_id)]
        job["dependents"] = [dict(r) for r in await self._fetch("job_dependents", job_id)]
        job["on_success"] = [r["submission"] for r in await self._fetch("job_on_success",
                                                                          job_id)]
        job["runs"] = await self.job_runs(job_id)
        job["log"] = await self.job_log_tail(job_id, log_lines)
        return job

    # -- outbox ---------------------------------------------------------------------------

    async def fetch_outbox(self, limit: int, delete: Sequence[int] = ()) -> list[OutboxEvent]:
        """The oldest events, whole batches until `limit` events or more, after deleting the
        batches `delete` (whose events the broker committed), in one statement."""
        rows = await self._fetch_on("fetch_outbox", self._relay_conn, limit, list(delete))
        return [OutboxEvent(r["id"], r["event_id"], r["seq"], r["routing_key"], r["body"])
                for r in rows]

    async def notify(self, channel_query: str) -> None:
        await self._execute(channel_query)

    @staticmethod
    async def try_relay_leadership(conn: asyncpg.Connection) -> bool:
        """Session advisory lock on the listener connection: one relay publishes at a time,
        so events leave in outbox order; the lock goes with the connection if it dies."""
        return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK))

    # -- metrics --------------------------------------------------------------------------

    async def count_jobs(self) -> list[tuple[str, str, int]]:
        return [(r["tenant"], r["status"], r["jobs"]) for r in await self._fetch("count_jobs")]

    async def outbox_backlog(self) -> tuple[int, float]:
        """Events stored but not published, and the age in seconds of the oldest."""
        row = await self._fetchrow("outbox_backlog")
        assert row is not None
        return int(row["events"]), float(row["lag_s"])

    # -- plumbing -------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._fetch_on(query, None, *args)

    async def _fetch_on(self, query: str, held: _HeldConnection | None, *args: Any
                        ) -> list[asyncpg.Record]:
        """`_fetch` on a held connection, when there is one."""
        connection: AbstractAsyncContextManager[PoolConnectionProxy] = (
            self._pool.acquire() if held is None else held.acquire())
        async with connection as conn:
            rows = await conn.fetch(QUERIES[query], *args)
        self._count(query)
        return rows

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(QUERIES[query], *args)
        self._count(query)
        return row

    async def _execute(self, query: str, *args: Any) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(QUERIES[query], *args)
        self._count(query)

    def _count(self, query: str) -> None:
        self.statements += 1
        if query in _WRITES_EVENTS:
            self.on_events_written()
