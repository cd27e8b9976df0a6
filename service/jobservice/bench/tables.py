"""Large tables, filled in SQL (one INSERT ... SELECT generate_series, not over AMQP):
the claim's cost with a small and a large queued set, and an instance's memory while it
holds a full pool above a large backlog."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg

from jobservice.bench.harness import bench_target, rss_mb, running
from jobservice.bench.options import BenchOptions, ScenarioResult
from jobservice.config import Settings

_FILL = """
INSERT INTO t_job_info (id, tenant, job_class, status, priority, queued_at, transition_seq)
SELECT gen_random_uuid(), 't' || lpad((g % $3)::text, 2, '0'),
       CASE WHEN g % $6 = 0 THEN $5 ELSE $4 END, 'QUEUED', (g % 3) * 10,
       timestamptz '2026-01-01' + g * interval '1 millisecond', 1
  FROM generate_series($1::bigint, $2::bigint) AS g
"""
_INSTANCE = "bench-scale"
_CLAIMS = 30
# In the scale scenario one queued row in a hundred is of this job type: the claim of an
# instance that runs only it (JOBSERVICE_JOB_TYPES) must not read the other 99 % (sql/014).
_RARE = "bench.rare"
_RARE_EVERY = 100
_FILTERED_CLAIM = f"jobservice_claim_jobs($1, $2, NULL, NULL, ARRAY['{_RARE}'])"


async def _fill(conn: asyncpg.Connection, first: int, last: int, tenants: int,
                job_class: str, events: bool, rare_class: str | None = None) -> None:
    """Queued rows `first`..`last` of `job_class`, one in `_RARE_EVERY` of `rare_class` if given;
    without the triggers (no outbox rows) unless `events`."""
    if not events:
        await conn.execute("SET session_replication_role = replica")
    await conn.execute(_FILL, first, last, tenants, job_class, rare_class or job_class,
                       _RARE_EVERY)
    await conn.execute("RESET session_replication_role")
    await conn.execute("VACUUM ANALYZE t_job_info")


async def _claim_statement(conn: asyncpg.Connection) -> str:
    """The service's claim: claim-and-start where that function exists (migration 005)."""
    if await conn.fetchval("SELECT to_regproc('jobservice_claim_and_start') IS NOT NULL"):
        return "jobservice_claim_and_start($1, $2, NULL, NULL, NULL, ARRAY['jobservice.noop'])"
    return "jobservice_claim_jobs($1, $2)"


async def _claim_cost(conn: asyncpg.Connection, limit: int, claim: str | None = None
                      ) -> dict[str, float]:
    """Median time of the claim function (each claim rolled back, so every run sees the same
    table), and the buffers one claim touches (EXPLAIN ANALYZE BUFFERS). `claim`: the
    statement (default: the service's unfiltered claim)."""
    claim = claim or await _claim_statement(conn)
    times: list[float] = []
    for _ in range(_CLAIMS):
        tx = conn.transaction()
        await tx.start()
        started = time.perf_counter()
        rows = await conn.fetch(f"SELECT id FROM {claim}", _INSTANCE, limit)
        times.append(time.perf_counter() - started)
        await tx.rollback()
        if len(rows) != limit:
            raise RuntimeError(f"claim returned {len(rows)} rows, expected {limit}")
    tx = conn.transaction()
    await tx.start()
    plan = json.loads(await conn.fetchval(
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM {claim}",
        _INSTANCE, limit))[0]
    await tx.rollback()
    node = plan["Plan"]
    return {"claim_ms_median": round(statistics.median(times) * 1000, 3),
            "claim_ms_min": round(min(times) * 1000, 3),
            "claim_buffers": node["Shared Hit Blocks"] + node["Shared Read Blocks"],
            "explain_ms": round(plan["Execution Time"], 3), "and_start": "and_start" in claim}


async def scale(settings: Settings, o: BenchOptions) -> ScenarioResult:
    limit = o.pool_size or settings.pool_size
    async with bench_target(settings, o.database, migrate=True) as target:
        conn = await asyncpg.connect(target.url)
        try:
            await conn.execute("INSERT INTO t_instance (instance_id, lease_expires_at) "
                               "VALUES ($1, now() + interval '1 day')", _INSTANCE)
            started = time.monotonic()
            await _fill(conn, 1, o.small_rows, o.tenants, "jobservice.noop", events=False,
                        rare_class=_RARE)
            small = await _claim_cost(conn, limit)
            rare = min(limit, o.small_rows // _RARE_EVERY)
            small_filtered = await _claim_cost(conn, rare, _FILTERED_CLAIM)
            await _fill(conn, o.small_rows + 1, o.large_rows, o.tenants, "jobservice.noop",
                        events=False, rare_class=_RARE)
            fill_s = time.monotonic() - started
            large = await _claim_cost(conn, limit)
            large_filtered = await _claim_cost(conn, rare, _FILTERED_CLAIM)
        finally:
            await conn.close()
    # The fastest of the claims: the least disturbed by other processes on a shared machine.
    ratio = round(large["claim_ms_min"] / max(small["claim_ms_min"], 1e-6), 2)
    figures: dict[str, Any] = {
        "small_rows": o.small_rows, "large_rows": o.large_rows, "tenants": o.tenants,
        "claim_limit": limit, "fill_s": round(fill_s, 1),
        "claim_function": "jobservice_claim_and_start" if small["and_start"]
                          else "jobservice_claim_jobs",
        **{f"small_{k}": v for k, v in small.items() if k != "and_start"},
        **{f"large_{k}": v for k, v in large.items() if k != "and_start"}, "time_ratio": ratio,
        "buffers_ratio": round(large["claim_buffers"] / max(1, small["claim_buffers"]), 2),
        "filtered_claim_limit": rare,
        **{f"small_filtered_{k}": v for k, v in small_filtered.items() if k != "and_start"},
        **{f"large_filtered_{k}": v for k, v in large_filtered.items() if k != "and_start"},
        "filtered_time_ratio": round(large_filtered["claim_ms_min"]
                                     / max(small_filtered["claim_ms_min"], 1e-6), 2),
        "filtered_buffers_ratio": round(large_filtered["claim_buffers"]
                                        / max(1, small_filtered["claim_buffers"]), 2)}
    return ScenarioResult(
        "scale", f"claim cost: {o.small_rows:,} vs {o.large_rows:,} queued rows, "
                 f"{o.tenants} tenants, claims of {limit} (median of {_CLAIMS})",
        [("claim time median, small / large table (ms)",
          f"{small['claim_ms_median']} / {large['claim_ms_median']}"),
         ("claim time fastest, small / large table (ms)",
          f"{small['claim_ms_min']} / {large['claim_ms_min']}"),
         ("claim buffers (EXPLAIN), small / large table",
          f"{small['claim_buffers']} / {large['claim_buffers']}"),
         ("large / small time ratio (fastest claims)", ratio),
         ("large / small buffers ratio", figures["buffers_ratio"]),
         (f"claim of one job type (1 % of the rows, claims of {rare}): fastest, small / "
          "large table (ms)",
          f"{small_filtered['claim_ms_min']} / {large_filtered['claim_ms_min']}"),
         ("claim of one job type: buffers, small / large table",
          f"{small_filtered['claim_buffers']} / {large_filtered['claim_buffers']}")],
        figures)


async def memory(settings: Settings, o: BenchOptions) -> ScenarioResult:
    """RSS of one `jobservice run` holding a full pool of jobs that never end, above a large
    queued backlog whose QUEUED events it has relayed."""
    async with bench_target(settings, o.database, migrate=True) as target:
        conn = await asyncpg.connect(target.url)
        try:
            await _fill(conn, 1, o.memory_queued, o.tenants, "bench.hold", events=True)
        finally:
            await conn.close()
        async with running(target, 1, JOBSERVICE_POOL_SIZE=str(o.memory_pool),
                           JOBSERVICE_SHUTDOWN_GRACE_S="0") as services:
            expected_events = o.memory_queued + 2 * o.memory_pool
            deadline = time.monotonic() + max(120.0, o.memory_queued / 200)
            while (await services.scrape("jobservice_pool_busy") < o.memory_pool
                   or await services.scrape("jobservice_events_published_total")
                   < expected_events):
                if time.monotonic() > deadline:
                    raise TimeoutError("bench: the pool did not fill or the outbox not drain")
                await asyncio.sleep(0.5)
            samples = []
            for _ in range(5):
                samples.append(rss_mb(services.procs[0].pid))
                await asyncio.sleep(0.4)
    rss, peak = max(s[0] for s in samples), max(s[1] for s in samples)
    figures = {"pool_size": o.memory_pool, "queued_jobs": o.memory_queued,
               "rss_mb": rss, "peak_rss_mb": peak}
    return ScenarioResult(
        "memory", f"memory: one instance, pool {o.memory_pool} full, "
                  f"{o.memory_queued:,} jobs queued",
        [("RSS (MiB)", rss), ("peak RSS since start, VmHWM (MiB)", peak)], figures)
