"""`jobservice bench --scenario ...`: the service measured from outside, as users run it.

Each scenario prints a human table and one JSON line (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.table import Table

from jobservice.bench.fairness import flood
from jobservice.bench.flow import BenchReport, bench_main, idle, latency, throughput
from jobservice.bench.options import SCENARIOS, BenchOptions, ScenarioResult
from jobservice.bench.progress import progress
from jobservice.bench.tables import memory, scale
from jobservice.config import Settings

__all__ = ["SCENARIOS", "BenchOptions", "BenchReport", "ScenarioResult", "bench_main",
           "print_result", "run_bench", "run_scenario"]

Scenario = Callable[[Settings, BenchOptions], Awaitable[ScenarioResult]]

_RUNNERS: dict[str, Scenario] = {
    "throughput": throughput, "latency": latency, "idle": idle, "flood": flood,
    "progress": progress, "scale": scale, "memory": memory,
}


async def run_scenario(settings: Settings, scenario: str, options: BenchOptions
                       ) -> ScenarioResult:
    return await _RUNNERS[scenario](settings, options)


def print_result(result: ScenarioResult, json_only: bool, console: Console | None = None
                 ) -> None:
    if not json_only:
        console = console or Console()
        console.print(f"jobservice bench: {result.title}", highlight=False, soft_wrap=True)
        table = Table()
        table.add_column("figure")
        table.add_column("value", justify="right")
        for label, value in result.rows:
            table.add_row(label, str(value))
        console.print(table)
    print(json.dumps({"scenario": result.scenario, **result.figures}), flush=True)


def run_bench(settings: Settings, scenario: str, options: BenchOptions,
              json_only: bool = False) -> int:
    # the bench client runs on the service's event loop too (uvloop by default): its own CPU
    # shares the machine with what it measures
    if settings.use_uvloop():
        import uvloop

        result = uvloop.run(run_scenario(settings, scenario, options))
    else:
        result = asyncio.run(run_scenario(settings, scenario, options))
    print_result(result, json_only)
    return 0
