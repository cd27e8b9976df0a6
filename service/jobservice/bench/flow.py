"""No-op jobs through running instances: throughput (whole backlog at once), latency at a
steady rate, and the wake-up of an idle service (one job at a time)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from jobservice.bench.harness import (
    EventLog,
    bench_target,
    collect,
    cpu_by_pid,
    cpu_since,
    database_backends,
    observe,
    percentile_ms,
    pg_stat_statements_calls,
    running,
    wait_succeeded_in_database,
)
from jobservice.bench.options import COMPLETIONS, BenchOptions, ScenarioResult
from jobservice.client import JobClient
from jobservice.config import Settings

NOOP = "jobservice.noop"


@dataclass(frozen=True)
class BenchReport:
    jobs: int
    tenants: int
    instances: int
    pool_size: int
    cpus: int
    submit_per_s: float
    jobs_per_s: float
    done_latency_p50_ms: float
    done_latency_p99_ms: float
    statements_per_job: float
    pg_stat_statements_per_job: float | None
    service_cpu_ms_per_job: float  # user+system CPU of the instances, per job
    postgres_cpu_ms_per_job: float  # of the bench database's backends (approximate)
    # how the end was seen (options.COMPLETIONS); database: the outbox was empty this long
    # after the last SUCCEEDED (at most the poll interval late)
    completion: str = "database"
    outbox_empty_after_ms: float | None = None
    latency_clock: str = "SUCCEEDED time (database clock) minus publish time (same machine)"


def noop_messages(count: int, tenants: int, job_class: str = NOOP,
                  parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`count` submissions spread round robin over `tenants` tenants."""
    return [{"id": str(uuid.uuid4()), "tenant": f"t{n % tenants:02d}", "job_class": job_class,
             **({"parameters": parameters} if parameters else {})} for n in range(count)]


async def publish(client: JobClient, messages: list[dict[str, Any]],
                  published: dict[str, float], chunk: int = 500) -> None:
    """Publication in chunks, each one broker transaction; records each job's publish time."""
    for start in range(0, len(messages), chunk):
        part = messages[start:start + chunk]
        now = time.time()
        for message in part:
            published[message["id"]] = now
        await client.submit_many(part)


def latencies(times: dict[str, float], published: dict[str, float]) -> list[float]:
    """Each published job's time of a transition (`times`: job id -> epoch seconds, from
    its row or its event) minus its publish time."""
    return [at - published[job] for job, at in times.items() if job in published]


async def publish_steadily(client: JobClient, messages: list[dict[str, Any]], rate: float,
                           published: dict[str, float]) -> float:
    """Publication at `rate` per second, in ticks of 10 ms; the rate achieved."""
    start = time.time()
    sent = 0
    tick = 0
    while sent < len(messages):
        tick += 1
        due = min(len(messages), int(rate * 0.01 * tick))
        if due > sent:
            await publish(client, messages[sent:due], published)
            sent = due
        await asyncio.sleep(max(0.0, start + 0.01 * tick - time.time()))
    return len(messages) / max(1e-9, time.time() - start)


def all_ended(ids: set[str]) -> Callable[[EventLog], bool]:
    """Called after every event, so it only looks at the jobs that ended since its last call:
    a set comparison per event was quadratic, and took most of the bench client's CPU where
    one log serves several phases (progress: the client at 66-100 % of a core, measured)."""
    remaining = set(ids)
    seen = 0

    def done(log: EventLog) -> bool:
        nonlocal seen
        for job in log.ended[seen:]:
            remaining.discard(job)
        seen = len(log.ended)
        return not remaining

    return done


async def bench_main(settings: Settings, jobs: int, tenants: int, instances: int = 1,
                     pool_size: int | None = None, database: str = "jobservice_bench",
                     completion: str = "database") -> BenchReport:
    """The throughput scenario: the whole backlog published at once, drained. The end is
    the last SUCCEEDED, seen as `completion` says (options.COMPLETIONS)."""
    if completion not in COMPLETIONS:
        raise ValueError(f"completion: one of {COMPLETIONS}, not {completion!r}")
    pool = pool_size or settings.pool_size
    async with bench_target(settings, database) as target, \
            running(target, instances, JOBSERVICE_POOL_SIZE=str(pool)) as services:
        await pg_stat_statements_calls(target.url, reset=True)
        statements_before = await services.scrape("jobservice_db_statements_total")
        cpu_before = services.cpu_seconds(), cpu_by_pid(await database_backends(target.url))
        messages = noop_messages(jobs, tenants)
        published: dict[str, float] = {}
        timeout = max(60.0, jobs / 50)
        async with JobClient(settings.amqp_url, target.namespace) as client:
            if completion == "database":
                first = time.time()
                await publish(client, messages, published)
                submit_s = time.time() - first
                seen = await wait_succeeded_in_database(
                    target.url, [m["id"] for m in messages], timeout)
                ended_at, last_seen = seen.ended_at, max(seen.ended_at.values())
                outbox_lag: float | None = (seen.seen_at - last_seen) * 1000
            else:
                # only what it measures: first publish -> last SUCCEEDED (the latency
                # scenario measures submit -> RUNNING)
                log = EventLog()
                async with observe(target, "*.succeeded") as events:
                    watcher = asyncio.create_task(collect(
                        events, log, all_ended({m["id"] for m in messages}), timeout))
                    first = time.time()
                    await publish(client, messages, published)
                    submit_s = time.time() - first
                    await watcher
                ended_at, last_seen = log.at("SUCCEEDED"), max(log.received_at.values())
                outbox_lag = None
        statements = await services.scrape("jobservice_db_statements_total") - statements_before
        service_cpu = services.cpu_seconds() - cpu_before[0]
        # backends opened during the run (the pool grows under load) count too
        postgres_cpu = cpu_since(cpu_before[1],
                                 cpu_by_pid(await database_backends(target.url)))
        pg_calls = await pg_stat_statements_calls(target.url, reset=False)
    done_latency = latencies(ended_at, published)
    return BenchReport(
        jobs=jobs, tenants=tenants, instances=instances, pool_size=pool,
        cpus=os.cpu_count() or 0, submit_per_s=round(jobs / submit_s, 1),
        jobs_per_s=round(jobs / (last_seen - first), 1),
        done_latency_p50_ms=percentile_ms(done_latency, 0.5),
        done_latency_p99_ms=percentile_ms(done_latency, 0.99),
        statements_per_job=round(statements / jobs, 2),
        pg_stat_statements_per_job=None if pg_calls is None else round(pg_calls / jobs, 2),
        service_cpu_ms_per_job=round(service_cpu * 1000 / jobs, 3),
        postgres_cpu_ms_per_job=round(postgres_cpu * 1000 / jobs, 3),
        completion=completion,
        outbox_empty_after_ms=None if outbox_lag is None else round(outbox_lag, 1))


async def throughput(settings: Settings, o: BenchOptions) -> ScenarioResult:
    r = await bench_main(settings, o.jobs, o.tenants, o.instances, o.pool_size, o.database,
                         o.completion)
    return ScenarioResult(
        "throughput",
        f"throughput: {r.jobs} no-op jobs, {r.tenants} tenants, {r.instances} instance(s), "
        f"pool {r.pool_size}, {r.cpus} CPUs",
        [("submissions/s (published in broker transactions)", r.submit_per_s),
         ("end-to-end jobs/s (first submit → last SUCCEEDED)", r.jobs_per_s),
         ("submit → SUCCEEDED p50 / p99 (ms, backlog drain)",
          f"{r.done_latency_p50_ms} / {r.done_latency_p99_ms}"),
         ("SQL statements per job (service count)", r.statements_per_job),
         ("service CPU per job (ms, user+system)", r.service_cpu_ms_per_job),
         ("Postgres CPU per job (ms, the bench database's backends)",
          r.postgres_cpu_ms_per_job),
         ("statements per job (pg_stat_statements)",
          r.pg_stat_statements_per_job if r.pg_stat_statements_per_job is not None
          else "n/a (pg_stat_statements not loaded)")],
        asdict(r))


async def latency(settings: Settings, o: BenchOptions) -> ScenarioResult:
    """Submissions at a steady rate (ticks of 10 ms); submit → RUNNING per job."""
    pool = o.pool_size or settings.pool_size
    count = max(1, int(o.rate * o.duration_s))
    messages = noop_messages(count, o.tenants)
    published: dict[str, float] = {}
    timeout = max(60.0, count / 50)
    async with bench_target(settings, o.database) as target, \
            running(target, o.instances, JOBSERVICE_POOL_SIZE=str(pool)), \
            JobClient(settings.amqp_url, target.namespace) as client:
        if o.completion == "database":
            # the RUNNING times are the rows' started_at (the RUNNING events' `at`), read
            # after the run: no subscriber on the measured cores during it
            achieved = await publish_steadily(client, messages, o.rate, published)
            started_at = (await wait_succeeded_in_database(
                target.url, [m["id"] for m in messages], timeout)).started_at
        else:
            log = EventLog()
            async with observe(target, "*.running", "*.succeeded") as events:
                watcher = asyncio.create_task(collect(events, log, all_ended(
                    {m["id"] for m in messages}), timeout))
                achieved = await publish_steadily(client, messages, o.rate, published)
                await watcher
            started_at = log.at("RUNNING")
    run_latency = latencies(started_at, published)
    figures = {
        "jobs": count, "rate_target_per_s": o.rate, "rate_achieved_per_s": round(achieved, 1),
        "instances": o.instances, "pool_size": pool, "completion": o.completion,
        "run_latency_p50_ms": percentile_ms(run_latency, 0.5),
        "run_latency_p99_ms": percentile_ms(run_latency, 0.99),
        "run_latency_max_ms": percentile_ms(run_latency, 1.0),
    }
    return ScenarioResult(
        "latency", f"latency: {count} no-op jobs at {o.rate:g}/s over {o.tenants} tenants, "
                   f"pool {pool}",
        [("submissions/s achieved", figures["rate_achieved_per_s"]),
         ("submit → RUNNING p50 (ms)", figures["run_latency_p50_ms"]),
         ("submit → RUNNING p99 (ms)", figures["run_latency_p99_ms"]),
         ("submit → RUNNING max (ms)", figures["run_latency_max_ms"])],
        figures)


async def idle(settings: Settings, o: BenchOptions) -> ScenarioResult:
    """One job at a time into an idle service: how fast it wakes up and starts it."""
    pool = o.pool_size or settings.pool_size
    waits: list[float] = []
    async with bench_target(settings, o.database) as target, \
            running(target, 1, JOBSERVICE_POOL_SIZE=str(pool)), \
            JobClient(settings.amqp_url, target.namespace) as client, \
            observe(target, "*.running", "*.succeeded") as events:
        for message in noop_messages(o.lone_jobs, o.tenants):
            await asyncio.sleep(0.2)  # idle: the previous job ended, nothing in flight
            log = EventLog()
            published: dict[str, float] = {}
            await publish(client, [message], published)
            await collect(events, log, all_ended({message["id"]}), 30)
            waits.extend(latencies(log.at("RUNNING"), published))
    figures = {"jobs": len(waits), "pool_size": pool,
               "wakeup_p50_ms": percentile_ms(waits, 0.5),
               "wakeup_p99_ms": percentile_ms(waits, 0.99),
               "wakeup_max_ms": percentile_ms(waits, 1.0)}
    return ScenarioResult(
        "idle", f"idle wake-up: {len(waits)} single no-op jobs into an idle instance",
        [("submit → RUNNING p50 (ms)", figures["wakeup_p50_ms"]),
         ("submit → RUNNING p99 (ms)", figures["wakeup_p99_ms"]),
         ("submit → RUNNING max (ms)", figures["wakeup_max_ms"])],
        figures)
