"""`jobservice bench`: no-op jobs through real service processes, measured from outside."""

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
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
from rich.console import Console
from rich.table import Table

from jobservice.client import JobClient
from jobservice.config import Settings


@dataclass(frozen=True)
class BenchReport:
    jobs: int
    tenants: int
    instances: int
    pool_size: int
    cpus: int
    submit_per_s: float
    jobs_per_s: float
    run_latency_p50_ms: float
    run_latency_p99_ms: float
    done_latency_p50_ms: float
    done_latency_p99_ms: float
    statements_per_job: float
    pg_stat_statements_per_job: float | None
    latency_clock: str = "event `at` (database clock) minus publish time (same machine)"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


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


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


class _Instances:
    """Service subprocesses, as users run them (`jobservice run`)."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.ports = [_free_port() for _ in range(count)]
        exe = [sys.executable, "-m", "jobservice.cli", "--log-format", "text", "run"]
        self.procs = [
            subprocess.Popen(exe, env={**env, "JOBSERVICE_HTTP_PORT": str(port),
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

    async def scrape(self, name: str) -> float:
        texts = [await asyncio.to_thread(_http_get, f"http://127.0.0.1:{p}/metrics")
                 for p in self.ports]
        return sum(_metric_sum(text, name) for _, text in texts)

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


async def bench_main(settings: Settings, jobs: int, tenants: int, instances: int = 1,
                     pool_size: int | None = None, database: str = "jobservice_bench"
                     ) -> BenchReport:
    parts = urlsplit(settings.database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    bench_url = urlunsplit(parts._replace(path=f"/{database}"))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    pool = pool_size or settings.pool_size
    env = {**os.environ, "JOBSERVICE_DATABASE_URL": bench_url, "JOBSERVICE_NAMESPACE": namespace,
           "JOBSERVICE_POOL_SIZE": str(pool), "JOBSERVICE_LOG_LEVEL": "WARNING",
           "JOBSERVICE_AMQP_URL": settings.amqp_url}
    services = _Instances(env, instances)
    try:
        await services.wait_ready()
        pg_stat = await _pg_stat_statements(bench_url, reset=True)
        report = await _measure(settings.amqp_url, namespace, jobs, tenants)
        statements = await services.scrape("jobservice_db_statements_total")
        pg_after = await _pg_stat_statements(bench_url, reset=False)
        return BenchReport(
            jobs=jobs, tenants=tenants, instances=instances, pool_size=pool,
            cpus=os.cpu_count() or 0, statements_per_job=round(statements / jobs, 2),
            pg_stat_statements_per_job=(round(pg_after / jobs, 2)
                                        if pg_stat is not None and pg_after is not None
                                        else None),
            **report)
    finally:
        services.stop()
        await _cleanup(settings.amqp_url, namespace, admin_url, database)


async def _measure(amqp_url: str, namespace: str, jobs: int, tenants: int) -> dict[str, Any]:
    published: dict[str, float] = {}
    running_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    messages = [{"id": str(uuid.uuid4()), "tenant": f"t{n % tenants:02d}",
                 "job_class": "jobservice.noop"} for n in range(jobs)]
    async with JobClient(amqp_url, namespace) as client, \
            client.subscribe("*.running", "*.succeeded") as events:
        all_done = asyncio.Event()
        last_done = 0.0

        async def consume() -> None:
            nonlocal last_done
            while len(done_at) < jobs:
                event = await events.get()
                job_id = str(event.job_id)
                if event.status == "RUNNING":
                    running_at[job_id] = event.at.timestamp()
                elif event.status == "SUCCEEDED":
                    done_at[job_id] = event.at.timestamp()
                    last_done = time.time()
            all_done.set()

        consumer = asyncio.create_task(consume())
        first = time.time()
        for start in range(0, jobs, 500):
            chunk = messages[start:start + 500]
            now = time.time()
            for message in chunk:
                published[message["id"]] = now
            await client.submit_many(chunk)
        submit_s = time.time() - first
        try:
            await asyncio.wait_for(all_done.wait(), max(60.0, jobs / 100))
        except TimeoutError:
            consumer.cancel()
            raise TimeoutError(f"only {len(done_at)} of {jobs} jobs succeeded in time") from None
    run_latency = [running_at[j] - published[j] for j in running_at if j in published]
    done_latency = [done_at[j] - published[j] for j in done_at if j in published]
    return {
        "submit_per_s": round(jobs / submit_s, 1),
        "jobs_per_s": round(jobs / (last_done - first), 1),
        "run_latency_p50_ms": round(_percentile(run_latency, 0.50), 2),
        "run_latency_p99_ms": round(_percentile(run_latency, 0.99), 2),
        "done_latency_p50_ms": round(_percentile(done_latency, 0.50), 2),
        "done_latency_p99_ms": round(_percentile(done_latency, 0.99), 2),
    }


async def _pg_stat_statements(url: str, reset: bool) -> float | None:
    """Calls recorded by pg_stat_statements in the bench database, when it is loaded."""
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
        return None  # not in shared_preload_libraries
    finally:
        await conn.close()


async def _cleanup(amqp_url: str, namespace: str, admin_url: str, database: str) -> None:
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
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


def run_bench(settings: Settings, jobs: int, tenants: int, pool_size: int | None,
              json_only: bool, instances: int = 1) -> int:
    report = asyncio.run(bench_main(settings, jobs, tenants, instances, pool_size))
    if not json_only:
        table = Table(title=f"jobservice bench: {jobs} no-op jobs, {tenants} tenants, "
                            f"{instances} instance(s), pool {report.pool_size}, "
                            f"{report.cpus} CPUs")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for label, value in [
            ("submissions/s (confirmed publish)", report.submit_per_s),
            ("end-to-end jobs/s (first submit → last SUCCEEDED)", report.jobs_per_s),
            ("submit → RUNNING p50 / p99 (ms)",
             f"{report.run_latency_p50_ms} / {report.run_latency_p99_ms}"),
            ("submit → SUCCEEDED p50 / p99 (ms)",
             f"{report.done_latency_p50_ms} / {report.done_latency_p99_ms}"),
            ("SQL statements per job (service count)", report.statements_per_job),
            ("statements per job (pg_stat_statements)",
             report.pg_stat_statements_per_job
             if report.pg_stat_statements_per_job is not None
             else "n/a (pg_stat_statements not loaded)"),
        ]:
            table.add_row(label, str(value))
        Console().print(table)
    print(json.dumps(asdict(report)))
    return 0
