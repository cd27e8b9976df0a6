"""`jobservice bench --scenario ...` on tiny sizes: every scenario runs against real
instances and prints a table and one well-formed JSON line. No timing is asserted here:
the figures are the benchmark's business (docs/benchmarks.md)."""

from __future__ import annotations

import io
import json
import uuid
from contextlib import redirect_stdout

import pytest
from rich.console import Console

from jobservice.bench import SCENARIOS, BenchOptions, print_result, run_scenario
from jobservice.bench.fairness import competition_shares
from jobservice.bench.harness import EventLog, check_loopback, jain_index
from jobservice.bench.options import COMPLETIONS
from jobservice.cli import COMPLETION_NAMES, SCENARIO_NAMES
from tests.conftest import make_settings

TINY = BenchOptions(
    jobs=40, tenants=3, rate=40, duration_s=1, lone_jobs=3, flood_jobs=60, small_jobs=5,
    small_tenants=3, progress_jobs=3, progress_steps=3000, progress_seconds=2.5,
    progress_phase_seconds=0, progress_rounds=1,
    small_rows=200, large_rows=2000, memory_pool=4, memory_queued=300)

EXPECTED = {
    "throughput": {"jobs_per_s", "statements_per_job", "done_latency_p99_ms",
                   "service_cpu_ms_per_job", "postgres_cpu_ms_per_job",
                   "stored_all_after_s", "jobs_per_s_while_storing",
                   "jobs_per_s_after_stored"},
    "latency": {"run_latency_p50_ms", "run_latency_p99_ms", "rate_achieved_per_s",
                "stored_latency_p50_ms", "stored_to_running_p50_ms"},
    "idle": {"wakeup_p50_ms", "wakeup_p99_ms"},
    "flood": {"jain_index", "shares", "small_wait_p99_ms", "flood_drain_s"},
    "progress": {"completion_writes_per_job_per_s_max", "noop_jobs_per_s_pool_empty",
                 "noop_jobs_per_s_beside_sleeping", "noop_jobs_per_s_beside_spinning",
                 "noop_jobs_per_s_beside_progress", "throughput_drop_pct",
                 "throughput_drop_vs_spinning_pct"},
    "scale": {"small_claim_ms_median", "large_claim_ms_median", "small_claim_buffers",
              "large_claim_buffers", "time_ratio", "small_filtered_claim_buffers",
              "large_filtered_claim_buffers", "filtered_time_ratio"},
    "memory": {"rss_mb", "peak_rss_mb"},
}


def test_the_cli_offers_every_scenario() -> None:
    assert set(SCENARIO_NAMES) == set(SCENARIOS) == set(EXPECTED)


def test_the_cli_offers_every_way_to_see_the_end() -> None:
    assert COMPLETION_NAMES == COMPLETIONS


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_each_scenario_runs_small_and_prints_a_table_and_a_json_line(
    database_url: str, namespace: str, scenario: str
) -> None:
    settings = make_settings(database_url, namespace)
    options = BenchOptions(**{**TINY.__dict__,
                              "database": f"jst_bench_{uuid.uuid4().hex[:8]}"})
    result = await run_scenario(settings, scenario, options)
    console = Console(file=io.StringIO(), width=200)
    out = io.StringIO()
    with redirect_stdout(out):
        print_result(result, json_only=False, console=console)
    table = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"jobservice bench: {result.title}" in table
    assert all(label in table for label, _ in result.rows)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["scenario"] == scenario
    assert EXPECTED[scenario] <= line.keys()
    check_figures(scenario, line)


async def test_latency_read_from_a_subscriber_too(database_url: str, namespace: str) -> None:
    """--completion events: the RUNNING times from the events, as received."""
    settings = make_settings(database_url, namespace)
    options = BenchOptions(**{**TINY.__dict__, "completion": "events",
                              "database": f"jst_bench_{uuid.uuid4().hex[:8]}"})
    result = await run_scenario(settings, "latency", options)
    assert result.figures["completion"] == "events"
    assert result.figures["jobs"] == 40
    assert 0 < result.figures["run_latency_p50_ms"] <= result.figures["run_latency_max_ms"]


def check_figures(scenario: str, line: dict[str, object]) -> None:
    """Sanity of the figures (not their speed)."""
    if scenario == "flood":
        shares = line["shares"]
        assert isinstance(shares, dict) and len(shares) == 4  # the flood + 3 small tenants
        assert 0 < float(line["jain_index"]) <= 1  # type: ignore[arg-type]
    elif scenario == "progress":
        # 2.5 s jobs advancing all the time: at most one write per period (1 s) each, and
        # their progress events were seen (held by the broker, read after the phases)
        writes = float(line["completion_writes_per_job_per_s_max"])  # type: ignore[arg-type]
        assert 0 < writes <= 1.0
        runs = line["noop_jobs_per_s_each_run"]
        assert isinstance(runs, dict) and all(len(r) == 2 for r in runs.values())  # one round
    elif scenario == "throughput":
        assert 0 < float(line["stored_all_after_s"]) < 60  # type: ignore[arg-type]
    elif scenario == "latency":
        # stored before RUNNING: the two parts are within the whole
        assert float(line["stored_latency_p50_ms"]) > 0  # type: ignore[arg-type]
        assert float(line["stored_to_running_p50_ms"]) >= 0  # type: ignore[arg-type]
    elif scenario == "scale":
        assert int(line["small_claim_buffers"]) > 0  # type: ignore[call-overload]
        # (that a claim of one job type does not read the others is tested at a size where
        # it shows: tests/integration/test_scheduling.py)
        assert int(line["large_filtered_claim_buffers"]) > 0  # type: ignore[call-overload]
    elif scenario == "memory":
        assert float(line["rss_mb"]) > 10  # type: ignore[arg-type]


def test_jain_index_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() -> None:
    assert jain_index([5, 5, 5, 5]) == 1.0
    assert jain_index([12, 0, 0, 0]) == 0.25
    assert 0.25 < jain_index([9, 1, 1, 1]) < 1


def test_competition_window_runs_from_the_last_first_queue_to_the_first_last_start() -> None:
    log = EventLog()
    # tenant a queued at 0, b at 1; a starts at 2, 3, 10; b starts at 4 (its last)
    for job, tenant in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]:
        log.tenant_of[job] = tenant
    log.first["QUEUED"] = {"a1": 0, "a2": 0, "a3": 0, "b1": 1}
    log.first["RUNNING"] = {"a1": 2, "a2": 3, "a3": 10, "b1": 4}
    shares, window = competition_shares(log)
    assert shares == {"a": 2, "b": 1} and window == 3


def test_the_bench_refuses_anything_but_loopback() -> None:
    check_loopback("postgresql://postgres@127.0.0.1:5432/x", "amqp://guest:guest@localhost/")
    with pytest.raises(ValueError, match="loopback only"):
        check_loopback("postgresql://postgres@db.example.com:5432/x")
