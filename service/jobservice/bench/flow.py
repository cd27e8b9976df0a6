"""No-op jobs through running instances: throughput (whole backlog at once), latency at a
steady rate, and the wake-up of an idle service (one job at a time)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Collection
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
    # the run's two phases (database completion only; see `phase_rates`)
    stored_all_after_s: float | None = None
    jobs_per_s_while_storing: float | None = None
    jobs_per_s_after_stored: float | None = None


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


def phase_rates(first: float, created: Collection[float], ended: Collection[float]
                ) -> tuple[float, float, float | None]:
    """The run in two phases: while submissions are still being stored (first publish ->
    the last row created), when the instances share the cores between their intake and
    their pools, and after, when they only run jobs. Returns the first phase's length (s)
    and the jobs ended per second in each (None: nothing ended after the last store)."""
    stored, last = max(created), max(ended)
    before = sum(1 for at in ended if at <= stored)
    while_storing = before / (stored - first) if stored > first else 0.0
    after = (len(ended) - before) / (last - stored) if last > stored else None
    return stored - first, while_storing, after


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
                phases: tuple[float, float, float | None] | None = phase_rates(
                    first, seen.created_at.values(), ended_at.values())
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
                outbox_lag = phases = None
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
        outbox_empty_after_ms=None if outbox_lag is None else round(outbox_lag, 1),
        stored_all_after_s=None if phases is None else round(phases[0], 2),
        jobs_per_s_while_storing=None if phases is None else round(phases[1], 1),
        jobs_per_s_after_stored=(None if phases is None or phases[2] is None
                                 else round(phases[2], 1)))


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
         ("all submissions stored after (s) / jobs/s meanwhile / jobs/s after",
          "n/a (--completion events)" if r.stored_all_after_s is None else
          f"{r.stored_all_after_s} / {r.jobs_per_s_while_storing} / "
          f"{r.jobs_per_s_after_stored}"),
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
            seen = await wait_succeeded_in_database(
                target.url, [m["id"] for m in messages], timeout)
            started_at = seen.started_at
            # where the time goes: publish -> stored (broker, intake, insert), then
            # stored -> RUNNING (waiting for a slot and a claim)
            stored = latencies(seen.created_at, published)
            waited = [started_at[job] - at for job, at in seen.created_at.items()
                      if job in started_at]
        else:
            log = EventLog()
            async with observe(target, "*.running", "*.succeeded") as events:
                watcher = asyncio.create_task(collect(events, log, all_ended(
                    {m["id"] for m in messages}), timeout))
                achieved = await publish_steadily(client, messages, o.rate, published)
                await watcher
            started_at = log.at("RUNNING")
            stored, waited = [], []
    run_latency = latencies(started_at, published)
    figures: dict[str, Any] = {
        "jobs": count, "rate_target_per_s": o.rate, "rate_achieved_per_s": round(achieved, 1),
        "instances": o.instances, "pool_size": pool, "completion": o.completion,
        "run_latency_p50_ms": percentile_ms(run_latency, 0.5),
        "run_latency_p99_ms": percentile_ms(run_latency, 0.99),
        "run_latency_max_ms": percentile_ms(run_latency, 1.0),
        "stored_latency_p50_ms": percentile_ms(stored, 0.5) if stored else None,
        "stored_to_running_p50_ms": percentile_ms(waited, 0.5) if waited else None,
    }
    return ScenarioResult(
        "latency", f"latency: {count} no-op jobs at {o.rate:g}/s over {o.tenants} tenants, "
                   f"pool {pool}",
        [("submissions/s achieved", figures["rate_achieved_per_s"]),
         ("submit → RUNNING p50 (ms)", figures["run_latency_p50_ms"]),
         ("submit → RUNNING p99 (ms)", figures["run_latency_p99_ms"]),
         ("submit → RUNNING max (ms)", figures["run_latency_max_ms"]),
         ("of which submit → stored p50 / stored → RUNNING p50 (ms)",
          "n/a (--completion events)" if not stored else
          f"{figures['stored_latency_p50_ms']} / {figures['stored_to_running_p50_ms']}")],
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
