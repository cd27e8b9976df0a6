"""Progress-heavy jobs: many `ctx.advance()` calls must cost at most one completion write per
job per second, and leave the throughput of the other jobs alone."""

from __future__ import annotations

import asyncio
import time

from jobservice.bench.flow import all_ended, noop_messages, publish
from jobservice.bench.harness import EventLog, bench_target, collect, running
from jobservice.bench.options import BenchOptions, ScenarioResult
from jobservice.client import JobClient
from jobservice.config import Settings


async def _noop_throughput(client: JobClient, events_log: EventLog, o: BenchOptions) -> float:
    messages = noop_messages(o.jobs, o.tenants)
    published: dict[str, float] = {}
    ids = {m["id"] for m in messages}
    first = time.time()
    await publish(client, messages, published)
    await events_log.wait_for(all_ended(ids), max(60.0, o.jobs / 50))
    return round(o.jobs / (max(events_log.received_at[j] for j in ids) - first), 1)


async def progress(settings: Settings, o: BenchOptions) -> ScenarioResult:
    """Phase 1: no-op throughput alone. Phase 2: the progress jobs run (all at once, in a pool
    large enough for them plus the default pool), and the same no-op load again."""
    pool = o.progress_jobs + (o.pool_size or settings.pool_size)
    log = EventLog()
    async with bench_target(settings, o.database) as target, \
            running(target, 1, JOBSERVICE_POOL_SIZE=str(pool)) as services, \
            JobClient(settings.amqp_url, target.namespace) as client, \
            client.subscribe("#") as events:
        feeder = asyncio.create_task(collect(events, log, lambda _: False, 3600))
        try:
            alone = await _noop_throughput(client, log, o)
            heavy = noop_messages(o.progress_jobs, o.tenants, "bench.advance",
                                  {"steps": o.progress_steps, "seconds": o.progress_seconds})
            heavy_ids = {m["id"] for m in heavy}
            await publish(client, heavy, {})
            await log.wait_for(lambda log: heavy_ids.issubset(log.at("RUNNING")), 120)
            writes_before = await services.scrape("jobservice_completion_writes_total")
            alongside = await _noop_throughput(client, log, o)
            await log.wait_for(all_ended(heavy_ids), o.progress_seconds * 4 + 60)
            writes = await services.scrape("jobservice_completion_writes_total") - writes_before
        finally:
            feeder.cancel()
    return _result(o, pool, log, heavy_ids, alone, alongside, writes)


def _result(o: BenchOptions, pool: int, log: EventLog, heavy_ids: set[str], alone: float,
            alongside: float, writes: float) -> ScenarioResult:
    rates = []
    for job in heavy_ids:
        run_s = log.at("SUCCEEDED")[job] - log.at("RUNNING")[job]
        rates.append(log.progress.get(job, 0) / max(run_s, 1.0))
    figures = {
        "progress_jobs": o.progress_jobs, "advances_per_job": o.progress_steps,
        "progress_job_seconds": o.progress_seconds, "pool_size": pool, "noop_jobs": o.jobs,
        "completion_writes_per_job_per_s_max": round(max(rates), 3),
        "completion_writes_per_job_per_s_mean": round(sum(rates) / len(rates), 3),
        "completion_statements": int(writes),
        "noop_jobs_per_s_alone": alone, "noop_jobs_per_s_alongside": alongside,
        "throughput_drop_pct": round(100 * (1 - alongside / alone), 1) if alone else None,
    }
    return ScenarioResult(
        "progress", f"progress-heavy: {o.progress_jobs} jobs x {o.progress_steps} advances over "
                    f"{o.progress_seconds:g} s, with {o.jobs} no-op jobs; pool {pool}",
        [("completion writes per job per second, max / mean",
          f"{figures['completion_writes_per_job_per_s_max']} / "
          f"{figures['completion_writes_per_job_per_s_mean']}"),
         ("completion statements (all jobs, while they ran)", figures["completion_statements"]),
         ("no-op jobs/s alone", alone),
         ("no-op jobs/s alongside the progress jobs", alongside),
         ("throughput drop (%)", figures["throughput_drop_pct"])],
        figures)
