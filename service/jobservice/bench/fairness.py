"""Fairness under a flood: one tenant's big backlog is queued first, then nine small
tenants submit; all must share the pool while they compete."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from jobservice.bench.flow import NOOP, all_ended, publish
from jobservice.bench.harness import (
    EventLog,
    bench_target,
    collect,
    jain_index,
    observe,
    percentile_ms,
    running,
)
from jobservice.bench.options import BenchOptions, ScenarioResult
from jobservice.client import JobClient
from jobservice.config import Settings

FLOOD_TENANT = "flood"


def _messages(o: BenchOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    flood = [{"id": str(uuid.uuid4()), "tenant": FLOOD_TENANT, "job_class": NOOP}
             for _ in range(o.flood_jobs)]
    small = [{"id": str(uuid.uuid4()), "tenant": f"small{n % o.small_tenants:02d}",
              "job_class": NOOP} for n in range(o.small_jobs * o.small_tenants)]
    return flood, small


def competition_shares(log: EventLog) -> tuple[dict[str, int], float]:
    """Jobs started per tenant while every tenant had work: from the moment the last tenant
    got its first job queued to the moment the first tenant started its last job. Returns the
    shares and the window's length in seconds (database clock)."""
    queued, started = log.at("QUEUED"), log.at("RUNNING")
    first_queued: dict[str, float] = {}
    last_started: dict[str, float] = {}
    for job, at in queued.items():
        tenant = log.tenant_of[job]
        first_queued[tenant] = min(at, first_queued.get(tenant, at))
    for job, at in started.items():
        tenant = log.tenant_of[job]
        last_started[tenant] = max(at, last_started.get(tenant, at))
    begin, end = max(first_queued.values()), min(last_started.values())
    shares = dict.fromkeys(first_queued, 0)
    for job, at in started.items():
        if begin <= at <= end:
            shares[log.tenant_of[job]] += 1
    return shares, max(0.0, end - begin)


async def flood(settings: Settings, o: BenchOptions) -> ScenarioResult:
    pool = o.pool_size or settings.pool_size
    flood_msgs, small_msgs = _messages(o)
    published: dict[str, float] = {}
    log = EventLog()
    ids = {m["id"] for m in flood_msgs + small_msgs}
    async with bench_target(settings, o.database) as target, \
            running(target, o.instances, JOBSERVICE_POOL_SIZE=str(pool)), \
            JobClient(settings.amqp_url, target.namespace) as client, \
            observe(target, "*.queued", "*.running", "*.succeeded") as events:
        watcher = asyncio.create_task(collect(events, log, all_ended(ids),
                                              max(60.0, len(ids) / 50)))
        first = time.time()
        await publish(client, flood_msgs, published)
        await publish(client, small_msgs, published)
        await watcher
    shares, window_s = competition_shares(log)
    small_ids = {m["id"] for m in small_msgs}
    small_waits = [log.at("RUNNING")[j] - published[j] for j in small_ids]
    # from stored (QUEUED) to RUNNING: the scheduler's part, without the intake's FIFO
    small_queue_waits = [log.at("RUNNING")[j] - log.at("QUEUED")[j] for j in small_ids]
    started = log.at("RUNNING")
    last_small = max(started[j] for j in small_ids)
    flood_started_before = sum(1 for m in flood_msgs if started[m["id"]] <= last_small)
    flood_drain_s = max(started[m["id"]] for m in flood_msgs) - first
    figures = {
        "flood_jobs": o.flood_jobs, "small_tenants": o.small_tenants,
        "small_jobs_each": o.small_jobs, "pool_size": pool, "instances": o.instances,
        "jain_index": jain_index([float(x) for x in shares.values()]),
        "competition_window_s": round(window_s, 3), "shares": shares,
        "small_wait_p50_ms": percentile_ms(small_waits, 0.5),
        "small_wait_p99_ms": percentile_ms(small_waits, 0.99),
        "small_wait_max_ms": percentile_ms(small_waits, 1.0),
        "small_queued_to_running_p50_ms": percentile_ms(small_queue_waits, 0.5),
        "small_queued_to_running_p99_ms": percentile_ms(small_queue_waits, 0.99),
        "flood_drain_s": round(flood_drain_s, 2),
        "flood_started_before_last_small_pct": round(100 * flood_started_before
                                                      / max(1, o.flood_jobs), 1),
    }
    return ScenarioResult(
        "flood", f"fairness under a flood: {FLOOD_TENANT} queues {o.flood_jobs} jobs first, then "
                 f"{o.small_tenants} tenants {o.small_jobs} each; pool {pool}",
        [("Jain index of per-tenant share while all compete", figures["jain_index"]),
         ("jobs started per tenant in that window", " ".join(
             f"{t}={n}" for t, n in sorted(shares.items()))),
         ("small tenants: submit → RUNNING p50 / p99 / max (ms)",
          f"{figures['small_wait_p50_ms']} / {figures['small_wait_p99_ms']} / "
          f"{figures['small_wait_max_ms']}"),
         ("small tenants: QUEUED → RUNNING p50 / p99 (ms, after the intake)",
          f"{figures['small_queued_to_running_p50_ms']} / "
          f"{figures['small_queued_to_running_p99_ms']}"),
         ("flood: submit → last RUNNING (s)", figures["flood_drain_s"]),
         ("flood jobs started before the last small job (%)",
          figures["flood_started_before_last_small_pct"])],
        figures)
