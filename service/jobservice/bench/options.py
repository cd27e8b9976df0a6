"""Sizes of the bench scenarios (defaults: the issue's targets table) and their results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCENARIOS = ("throughput", "latency", "idle", "flood", "progress", "scale", "memory")
# throughput, latency: where the jobs' RUNNING/SUCCEEDED times come from and how the end of
# a run is seen. database: the rows (the events' `at` are those same times), Postgres polled
# for SUCCEEDED jobs and an empty outbox, as scripts/peers sees its peers finish; events: a
# subscriber receiving the events, on the cores being measured.
COMPLETIONS = ("database", "events")


@dataclass(frozen=True)
class BenchOptions:
    jobs: int = 5000  # throughput: no-op jobs; progress: no-op jobs per phase
    tenants: int = 10
    instances: int = 1
    pool_size: int | None = None  # None: the service default (JOBSERVICE_POOL_SIZE)
    rate: float = 750.0  # latency: submissions per second (half of the 1,500 jobs/s target)
    duration_s: float = 10.0  # latency: how long the steady rate lasts
    lone_jobs: int = 20  # idle: single jobs into an idle service, one after the other
    flood_jobs: int = 10_000  # flood: the big tenant's jobs
    small_jobs: int = 100  # flood: each of the 9 small tenants' jobs
    small_tenants: int = 9
    progress_jobs: int = 200
    progress_steps: int = 100_000  # ctx.advance() calls per progress job
    progress_seconds: float = 15.0  # how long each progress job runs
    # progress: the no-op phases hold enough jobs to last about this long at the reference
    # rate (at least `jobs`); 0: exactly `jobs`
    progress_phase_seconds: float = 8.0
    progress_rounds: int = 2  # progress: rounds of A B C C B A (each kind twice a round)
    small_rows: int = 10_000  # scale: queued rows, small table
    large_rows: int = 1_000_000  # scale: queued rows, large table
    memory_pool: int = 64
    memory_queued: int = 100_000
    completion: str = "database"  # throughput, latency: one of COMPLETIONS
    database: str = "jobservice_bench"


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's outcome: a human table (rows) and the JSON line (figures)."""

    scenario: str
    title: str
    rows: list[tuple[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)
