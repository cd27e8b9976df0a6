"""What every scenario needs: a fresh database and AMQP namespace, `jobservice run`
subprocesses as users run them, metrics scraped over HTTP, events collected. Loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
import asyncpg
from aiormq.abc import DeliveredMessage

from jobservice.config import Settings
from jobservice.store import Store

# Job types of the progress and memory scenarios, loaded by the bench's instances only.
BENCH_JOB_MODULE = "jobservice.bench.jobs"


def percentile_ms(values: list[float], q: float) -> float:
    """The q-quantile of durations in seconds, in milliseconds (0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def jain_index(shares: list[float]) -> float:
    """Jain's fairness index: 1 when all shares are equal, 1/n when one takes everything."""
    total_sq = sum(x * x for x in shares)
    if not shares or total_sq == 0:
        return 0.0
    return round(sum(shares) ** 2 / (len(shares) * total_sq), 4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except OSError:
        return 0, ""


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident set size now and at its peak (VmHWM), in MiB, from /proc."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return round(values.get("VmRSS", 0.0), 1), round(values.get("VmHWM", 0.0), 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (ends of processes gone are lost)."""
    return sum(cpu_by_pid(pids).values())


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes still alive."""
    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings, processes started in between included (all
    of theirs counts); processes that ended in between are lost."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


async def database_backends(url: str) -> list[int]:
    """Pids of the Postgres backends connected to this database (same machine)."""
    conn = await asyncpg.connect(url)
    try:
        return [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")]
    finally:
        await conn.close()


class Instances:
    """Service subprocesses, as users run them (`jobservice run`)."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.ports = [_free_port() for _ in range(count)]
        exe = [sys.executable, "-m", "jobservice.cli", "--log-format", "text", "run"]
        self.procs = [
            subprocess.Popen(exe, env={**env, "JOBSERVICE_HTTP_PORT": str(port),
                                       "JOBSERVICE_HTTP_HOST": "127.0.0.1",
                                       "JOBSERVICE_INSTANCE_ID": f"bench-{n}"})
            for n, port in enumerate(self.ports)]

    async def wait_ready(self, timeout: float = 60) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        for port, proc in zip(self.ports, self.procs, strict=True):
            while (await asyncio.to_thread(_http_get, f"http://127.0.0.1:{port}/readyz"))[0] != 200:
                if proc.poll() is not None:
                    raise RuntimeError(f"service exited with {proc.returncode} before ready")
                if time.monotonic() > deadline:
                    raise TimeoutError("service not ready in time")
                await asyncio.sleep(0.1)

    def cpu_seconds(self) -> float:
        return cpu_seconds([proc.pid for proc in self.procs])

    async def scrape(self, name: str) -> float:
        texts = [await asyncio.to_thread(_http_get, f"http://127.0.0.1:{p}/metrics")
                 for p in self.ports]
        return sum(metric_sum(text, name) for _, text in texts)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class BenchTarget:
    """One fresh database and namespace on the local Postgres and RabbitMQ."""

    settings: Settings
    database: str
    namespace: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")

    @property
    def admin_url(self) -> str:
        return urlunsplit(urlsplit(self.settings.database_url)._replace(path="/postgres"))

    @property
    def url(self) -> str:
        return urlunsplit(urlsplit(self.settings.database_url)._replace(
            path=f"/{self.database}"))

    @property
    def events_exchange(self) -> str:
        """The events exchange of the instances this target runs (their namespace's)."""
        return self.settings.model_copy(update={"namespace": self.namespace}).events_exchange

    def env(self, **overrides: str) -> dict[str, str]:
        return {**os.environ, "JOBSERVICE_DATABASE_URL": self.url,
                "JOBSERVICE_NAMESPACE": self.namespace,
                "JOBSERVICE_POOL_SIZE": str(self.settings.pool_size),
                "JOBSERVICE_LOG_LEVEL": "WARNING", "JOBSERVICE_JOB_MODULES": BENCH_JOB_MODULE,
                "JOBSERVICE_AMQP_URL": self.settings.amqp_url, **overrides}


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def check_loopback(*urls: str) -> None:
    """The bench drops and creates databases and measures a machine: loopback only."""
    for url in urls:
        host = urlsplit(url).hostname
        if host not in _LOOPBACK:
            raise ValueError(f"jobservice bench runs against loopback only, not {host!r}")


@asynccontextmanager
async def bench_target(settings: Settings, database: str, migrate: bool = False
                       ) -> AsyncIterator[BenchTarget]:
    """A fresh database (migrated when asked) and namespace; both removed afterwards."""
    check_loopback(settings.database_url, settings.amqp_url)
    target = BenchTarget(settings, database)
    await _admin(target.admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await _admin(target.admin_url, f'CREATE DATABASE "{database}"')
    try:
        if migrate:
            store = await Store.connect(target.url, size=2)
            try:
                await store.migrate()
            finally:
                await store.close()
        yield target
    finally:
        await _cleanup_amqp(settings.amqp_url, target.namespace)
        await _admin(target.admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@asynccontextmanager
async def running(target: BenchTarget, count: int = 1, **env: str) -> AsyncIterator[Instances]:
    services = Instances(target.env(**env), count)
    try:
        await services.wait_ready()
        yield services
    finally:
        await asyncio.to_thread(services.stop)


async def vacuum(url: str) -> None:
    """VACUUM ANALYZE the bench database: what the phases before left behind (dead rows of
    every transition) is cleaned up before the next one is measured."""
    await _admin(url, "VACUUM ANALYZE")


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _cleanup_amqp(amqp_url: str, namespace: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        for queue in ("submit", "submit.dlq", "control", "control.dlq"):
            channel = await connection.channel()
            try:
                await channel.queue_delete(f"{namespace}.{queue}")
            except aio_pika.exceptions.AMQPError:
                pass
        channel = await connection.channel()
        await channel.exchange_delete(f"{namespace}.events")
    finally:
        await connection.close()


async def pg_stat_statements_calls(url: str, reset: bool) -> float | None:
    """Calls recorded by pg_stat_statements in the bench database, when it is loaded (it
    needs `shared_preload_libraries`, i.e. a server restart: the bench never does that)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return 0.0
        return float(await conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
            "ON d.oid = s.dbid WHERE d.datname = current_database()"))
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class DatabaseCompletion:
    """How a run ended, read from the database: each job's RUNNING and SUCCEEDED times
    (database clock, epoch seconds: the `at` of those events) and when the poll saw them
    all ended, the outbox empty unless it was allowed to hold events (local clock); and
    when each row was created (the intake's insert: stored, QUEUED)."""

    started_at: dict[str, float]
    ended_at: dict[str, float]
    seen_at: float
    created_at: dict[str, float]


# Cheap, through the partial indexes on queued and claimed jobs (counting every row each
# poll took 8.5 ms of Postgres at 40,000 jobs, measured): nothing left to run (of $1, a job
# class, if given) and, unless $2, every event published. Only then are the jobs counted.
_IDLE = """
SELECT NOT EXISTS (SELECT 1 FROM t_job_info WHERE status = 'QUEUED')
   AND NOT EXISTS (SELECT 1 FROM t_job_info WHERE status IN ('TO_BE_RUN', 'RUNNING')
                      AND ($1::text IS NULL OR job_class = $1::text))
   AND ($2::boolean OR NOT EXISTS (SELECT 1 FROM t_job_event_batch))"""
_FINISHED = """
SELECT count(*) FILTER (WHERE status = 'SUCCEEDED') AS succeeded,
       count(*) FILTER (WHERE status IN ('FAILED', 'ABORTED')) AS failed
  FROM t_job_info WHERE id = ANY($1::uuid[])"""
_TIMES = """
SELECT id::text, extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8,
       extract(epoch FROM created_at)::float8
  FROM t_job_info WHERE id = ANY($1::uuid[])"""


async def wait_succeeded_in_database(url: str, ids: Collection[str],
                                     timeout: float,  # noqa: ASYNC109
                                     job_class: str | None = None,
                                     outbox_may_hold: bool = False,
                                     poll_s: float = 0.1) -> DatabaseCompletion:
    """Polls Postgres until the jobs `ids` SUCCEEDED and (unless `outbox_may_hold`: other
    jobs keep writing events) the outbox is empty, every event published and committed by
    the broker; as scripts/peers sees its peers finish. `job_class`: the class of `ids`,
    when jobs of others run meanwhile. No subscriber spends the measured cores on receiving
    events (one receiving every SUCCEEDED event took ~20 % of a core and the broker more,
    measured)."""
    wanted = [uuid.UUID(i) for i in ids]
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if await conn.fetchval(_IDLE, job_class, outbox_may_hold):
                seen_at = time.time()
                row = await conn.fetchrow(_FINISHED, wanted)
                assert row is not None
                if row["failed"]:
                    raise RuntimeError(f"bench: {row['failed']} job(s) did not succeed")
                if row["succeeded"] >= len(wanted):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: the jobs had not all succeeded after {timeout:.0f}s")
            await asyncio.sleep(poll_s)
        rows = await conn.fetch(_TIMES, wanted)
        return DatabaseCompletion({r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows},
                                  seen_at, {r[0]: r[3] for r in rows})
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class ObservedEvent:
    """What the bench reads of an event (CONTRACT section 5)."""

    job_id: str
    tenant: str
    status: str
    previous_status: str | None
    at: float  # the transition's time, database clock, epoch seconds

    @classmethod
    def parse(cls, body: bytes) -> ObservedEvent:
        event = json.loads(body)
        return cls(event["job_id"], event["tenant"], event["status"], event["previous_status"],
                   datetime.fromisoformat(event["at"]).timestamp())


@asynccontextmanager
async def observe(target: BenchTarget, *bindings: str
                  ) -> AsyncIterator[asyncio.Queue[ObservedEvent]]:
    """The bench's observer: the target's events with these binding keys, on a queue of
    its own. Straight on aiormq and parsed only as far as the bench reads them: through the
    client library (aio-pika messages, every field validated) the observer took 35 % of one
    of the two cores the service is measured on (py-spy: AMQP frames and message objects)."""
    connection = await aiormq.connect(target.settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await _events_queue(channel, target, bindings)
        events: asyncio.Queue[ObservedEvent] = asyncio.Queue()

        async def on_message(message: DeliveredMessage) -> None:
            events.put_nowait(ObservedEvent.parse(message.body))

        await channel.basic_consume(queue, on_message, no_ack=True)
        yield events
    finally:
        await connection.close()


async def _events_queue(channel: aiormq.abc.AbstractChannel, target: BenchTarget,
                        bindings: Collection[str]) -> str:
    """A queue of the bench's own (gone with its connection), bound to the target's events."""
    exchange = target.events_exchange
    await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    declared = await channel.queue_declare(exclusive=True)
    assert declared is not None and declared.queue is not None
    for binding in bindings:
        await channel.queue_bind(declared.queue, exchange, routing_key=binding)
    return declared.queue


class HeldEvents:
    """Events kept in a queue of the bench's own, unread until `read()`: see `held_events`."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, queue: str) -> None:
        self._channel = channel
        self._queue = queue

    async def read(self) -> list[ObservedEvent]:
        """Every event held so far (those published after the call stay for the next)."""
        declared = await self._channel.queue_declare(self._queue, passive=True)
        count = declared.message_count or 0
        received: list[ObservedEvent] = []
        last_tag = 0
        all_in = asyncio.Event()

        async def on_message(message: DeliveredMessage) -> None:
            nonlocal last_tag
            assert message.delivery_tag is not None
            if len(received) >= count:  # came after the count: back to the queue
                await self._channel.basic_nack(message.delivery_tag, requeue=True)
                return
            received.append(ObservedEvent.parse(message.body))
            last_tag = message.delivery_tag
            if len(received) >= count:
                all_in.set()

        if count:
            consumer = await self._channel.basic_consume(self._queue, on_message)
            await asyncio.wait_for(all_in.wait(), 60)
            assert consumer.consumer_tag is not None
            await self._channel.basic_cancel(consumer.consumer_tag)
            await self._channel.basic_ack(last_tag, multiple=True)
        return received


@asynccontextmanager
async def held_events(target: BenchTarget, *bindings: str) -> AsyncIterator[HeldEvents]:
    """Like `observe`, but nothing is received while the service is measured: the broker
    keeps the events (routed and queued as for any subscriber) and the bench reads them
    afterwards. The progress scenario counts the long jobs' progress events this way, so
    that receiving and parsing them (200 a second) does not take CPU on the cores where the
    no-op load is measured beside them, in the progress phases only."""
    connection = await aiormq.connect(target.settings.amqp_url)
    try:
        channel = await connection.channel()
        yield HeldEvents(channel, await _events_queue(channel, target, bindings))
    finally:
        await connection.close()


@dataclass
class EventLog:
    """Event times (database clock, epoch seconds) per job and status, as received."""

    first: dict[str, dict[str, float]] = field(default_factory=dict)  # status -> job -> at
    tenant_of: dict[str, str] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)  # progress events per job
    received_at: dict[str, float] = field(default_factory=dict)  # job -> local time (final)
    ended: list[str] = field(default_factory=list)  # jobs in the order their final event came
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: ObservedEvent) -> None:
        self.changed.set()
        job = event.job_id
        self.tenant_of[job] = event.tenant
        if event.previous_status == event.status:  # progress event
            self.progress[job] = self.progress.get(job, 0) + 1
            return
        self.first.setdefault(event.status, {}).setdefault(job, event.at)
        if event.status in ("SUCCEEDED", "FAILED", "ABORTED"):
            self.received_at[job] = time.time()
            self.ended.append(job)

    def at(self, status: str) -> dict[str, float]:
        return self.first.get(status, {})

    async def wait_for(self, done: Callable[[EventLog], bool],
                       timeout: float) -> None:  # noqa: ASYNC109
        """While another task feeds this log: return once `done(self)`."""
        async def until() -> None:
            while not done(self):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise TimeoutError(f"bench: events still missing after {timeout:.0f}s") from None


async def collect(events: asyncio.Queue[ObservedEvent], log: EventLog,
                  done: Callable[[EventLog], bool], timeout: float) -> None:  # noqa: ASYNC109
    """Feed `log` until `done(log)`; TimeoutError after `timeout` seconds."""
    async def feed() -> None:
        while not done(log):
            log.add(await events.get())

    try:
        await asyncio.wait_for(feed(), timeout)
    except TimeoutError:
        raise TimeoutError(f"bench: events still missing after {timeout:.0f}s "
                           f"({len(log.received_at)} jobs ended)") from None
