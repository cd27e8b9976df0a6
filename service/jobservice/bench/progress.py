"""Progress-heavy jobs: many `ctx.advance()` calls must cost at most one completion write per
job per second, and leave the throughput of the other jobs alone."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jobservice.bench.flow import NOOP, all_ended, noop_messages, publish
from jobservice.bench.harness import (
    BenchTarget,
    EventLog,
    bench_target,
    collect,
    held_events,
    observe,
    running,
    vacuum,
    wait_succeeded_in_database,
)
from jobservice.bench.options import BenchOptions, ScenarioResult
from jobservice.client import JobClient
from jobservice.config import Settings

# The long jobs' one tenant: with the default --completion the bench subscribes to its
# events only (their progress is what it counts), the no-op jobs' end is read from Postgres.
LONG_TENANT = "long00"


async def _noop_throughput(client: JobClient, target: BenchTarget, events_log: EventLog,
                           o: BenchOptions, jobs: int) -> float:
    messages = noop_messages(jobs, o.tenants)
    published: dict[str, float] = {}
    ids = {m["id"] for m in messages}
    timeout = max(60.0, jobs / 50)
    first = time.time()
    await publish(client, messages, published)
    if o.completion == "database":
        # the long jobs run on and write progress events meanwhile: only the no-op jobs
        # must have ended, the outbox may hold events
        seen = await wait_succeeded_in_database(target.url, ids, timeout, job_class=NOOP,
                                                outbox_may_hold=True)
        return round(jobs / (max(seen.ended_at.values()) - first), 1)
    await events_log.wait_for(all_ended(ids), timeout)
    return round(jobs / (max(events_log.received_at[j] for j in ids) - first), 1)


def phase_jobs(o: BenchOptions, probe_jobs_per_s: float) -> int:
    """No-op jobs per phase: enough to last `progress_phase_seconds` at the rate a first
    probe of `jobs` measured, at least `jobs`. Phases of a few seconds swung by tens of
    percent between runs: 5,000 jobs at 2,000/s gave drops of 31, 26 and 1 % in three."""
    return max(o.jobs, round(probe_jobs_per_s * o.progress_phase_seconds))


async def progress(settings: Settings, o: BenchOptions) -> ScenarioResult:
    """The same no-op load, in a pool large enough for the long jobs plus the default pool:
    with nothing else running (for reference), then beside 200 long jobs of three kinds:
    jobs that only sleep (same slots taken, no work); jobs that run the progress jobs' loop
    on a context the instance does not watch (same slots, same CPU, no progress reported);
    the progress jobs. The drop vs sleeping is the issue's figure (the jobs' own loop
    included); the drop vs the same loop is what progress reporting alone costs the
    instance. Each kind runs twice a round, in the order of PHASES (A B C C B A), and counts
    with the mean of its runs, so that a drift over the scenario (the database grows phase
    after phase) weighs on every kind alike. Each phase starts on a vacuumed database: the
    dead rows of the phases before, and autovacuum (a minute apart) landing in whichever
    phase ran then, made the rate fall by up to a fifth over the scenario and the two runs
    of one kind differ as much; vacuumed, within 8 % (JSON `noop_jobs_per_s_each_run`).
    With the default `--completion`, the no-op jobs' times are read from Postgres and the
    bench subscribes to the long jobs' events only (their progress is what it counts), as
    in the throughput and latency scenarios: no subscriber receives the no-op jobs' four
    events each on the cores being measured."""
    pool = o.progress_jobs + (o.pool_size or settings.pool_size)
    log = EventLog()
    rates: dict[str, list[float]] = {kind: [] for kind in LONG_JOBS}
    heavy_ids: set[str] = set()
    writes = 0.0
    live, held = _bindings(o)
    async with bench_target(settings, o.database) as target, \
            running(target, 1, JOBSERVICE_POOL_SIZE=str(pool)) as services, \
            JobClient(settings.amqp_url, target.namespace) as client, \
            observe(target, *live) as events, held_events(target, *held) as progress_events:
        feeder = asyncio.create_task(collect(events, log, lambda _: False, 3600))
        try:
            jobs = o.jobs
            if o.progress_phase_seconds > 0:
                jobs = phase_jobs(o, await _noop_throughput(client, target, log, o, o.jobs))
            empty = await _noop_throughput(client, target, log, o, jobs)
            seconds = long_job_seconds(o, jobs, empty)
            for kind in PHASES * o.progress_rounds:
                await vacuum(target.url)
                job_class, with_steps = LONG_JOBS[kind]
                parameters: dict[str, Any] = {"seconds": seconds}
                if with_steps:
                    parameters["steps"] = o.progress_steps
                long_jobs = [{**m, "tenant": LONG_TENANT} for m in noop_messages(
                    o.progress_jobs, 1, job_class, parameters)]
                before = await services.scrape("jobservice_completion_writes_total")
                rates[kind].append(
                    await _alongside(client, target, log, seconds, o, jobs, long_jobs))
                if kind == "progress":
                    writes += await services.scrape("jobservice_completion_writes_total") \
                        - before
                    heavy_ids.update(m["id"] for m in long_jobs)
            for event in await progress_events.read():
                log.add(event)
        finally:
            feeder.cancel()
    return _result(o, jobs, seconds, pool, log, heavy_ids, empty, rates, writes)


def _bindings(o: BenchOptions) -> tuple[list[str], list[str]]:
    """(received live, held until the end): with the default `--completion`, the long jobs'
    transitions live (the bench waits for them to run and end) and their progress events
    held (counted after the last phase: receiving 200 a second beside the progress jobs only
    took ~1.5 % of a core from the phases measured); with `--completion events`, all live."""
    if o.completion == "database":
        return ([f"{LONG_TENANT}.{status}" for status in ("running", "succeeded", "failed",
                                                          "aborted")],
                [f"{LONG_TENANT}.progress"])
    return ["#"], []


# kind -> (job class, whether it takes `steps`)
LONG_JOBS = {"sleeping": ("bench.sleep", False), "spinning": ("bench.spin", True),
             "progress": ("bench.advance", True)}
# One round; `--progress-rounds` of them (default 2: four runs of each kind). A phase's rate
# scatters by ~8 % from one to the next on this shared machine; with two runs a kind, the
# drop of one kind against another read -19 to +26 % over a day where the same code gave a
# mean near its target.
PHASES = ("sleeping", "spinning", "progress", "progress", "spinning", "sleeping")


def long_job_seconds(o: BenchOptions, jobs: int, empty_jobs_per_s: float) -> float:
    """How long the long jobs run: `--progress-seconds`, or longer where the no-op load
    would not end before them (a slow machine): 2.5 times the no-op phase with the pool
    otherwise empty (beside the long jobs it ran up to 2.1 times slower, measured), plus 5 s
    for publishing it."""
    return max(o.progress_seconds, round(2.5 * jobs / max(empty_jobs_per_s, 1.0) + 5, 1))


async def _alongside(client: JobClient, target: BenchTarget, log: EventLog, seconds: float,
                     o: BenchOptions, jobs: int, long_jobs: list[dict[str, Any]]) -> float:
    """No-op throughput while `long_jobs` run (all started first); waits for them to end."""
    ids = {m["id"] for m in long_jobs}
    await publish(client, long_jobs, {})
    await log.wait_for(lambda log: ids.issubset(log.at("RUNNING")), 120)
    throughput = await _noop_throughput(client, target, log, o, jobs)
    noop_end = time.time()
    await log.wait_for(all_ended(ids), seconds * 4 + 60)
    if min(log.received_at[j] for j in ids) < noop_end:
        raise RuntimeError("bench: long jobs ended before the no-op load did; "
                           "raise --progress-seconds or lower --jobs")
    return throughput


def _result(o: BenchOptions, jobs: int, seconds: float, pool: int, log: EventLog,
            heavy_ids: set[str], empty: float, rates: dict[str, list[float]],
            writes: float) -> ScenarioResult:
    beside_sleeping, beside_spinning, beside_heavy = (
        round(sum(rates[kind]) / len(rates[kind]), 1) for kind in LONG_JOBS)
    write_rates = []
    for job in heavy_ids:
        run_s = log.at("SUCCEEDED")[job] - log.at("RUNNING")[job]
        write_rates.append(log.progress.get(job, 0) / max(run_s, 1.0))
    drop = round(100 * (1 - beside_heavy / beside_sleeping), 1) if beside_sleeping else None
    drop_vs_spin = (round(100 * (1 - beside_heavy / beside_spinning), 1) if beside_spinning
                    else None)
    figures = {
        "progress_jobs": o.progress_jobs, "advances_per_job": o.progress_steps,
        "progress_job_seconds": seconds, "pool_size": pool, "noop_jobs": jobs,
        "completion_writes_per_job_per_s_max": round(max(write_rates), 3),
        "completion_writes_per_job_per_s_mean": round(sum(write_rates) / len(write_rates), 3),
        "completion_statements": int(writes),
        "noop_jobs_per_s_pool_empty": empty,
        "noop_jobs_per_s_beside_sleeping": beside_sleeping,
        "noop_jobs_per_s_beside_spinning": beside_spinning,
        "noop_jobs_per_s_beside_progress": beside_heavy,
        "throughput_drop_pct": drop,
        "throughput_drop_vs_spinning_pct": drop_vs_spin,
        "noop_jobs_per_s_each_run": {kind: rates[kind] for kind in LONG_JOBS},
    }
    return ScenarioResult(
        "progress", f"progress-heavy: {o.progress_jobs} jobs x {o.progress_steps} advances over "
                    f"{seconds:g} s, with {jobs} no-op jobs a phase; pool {pool}",
        [("completion writes per job per second, max / mean",
          f"{figures['completion_writes_per_job_per_s_max']} / "
          f"{figures['completion_writes_per_job_per_s_mean']}"),
         ("completion statements (progress jobs' phases)", figures["completion_statements"]),
         ("no-op jobs/s, pool otherwise empty (reference)", empty),
         (f"no-op jobs/s beside {o.progress_jobs} sleeping jobs (control; each kind: the "
          "mean of its runs)", beside_sleeping),
         (f"no-op jobs/s beside {o.progress_jobs} jobs running the same loop without "
          "ctx.advance (control)", beside_spinning),
         (f"no-op jobs/s beside {o.progress_jobs} progress jobs", beside_heavy),
         ("throughput drop vs sleeping (%): the jobs' loop and progress", drop),
         ("throughput drop vs the same loop (%): progress reporting alone", drop_vs_spin)],
        figures)
