"""The progress scenario's long jobs outlast its no-op load on a slow machine too."""

from __future__ import annotations

from jobservice.bench.options import BenchOptions
from jobservice.bench.progress import long_job_seconds


def test_a_fast_machine_keeps_the_asked_duration() -> None:
    # 5,000 no-op jobs at 1,400/s: 3.6 s alone, at most ~7.5 s beside the long jobs
    assert long_job_seconds(BenchOptions(jobs=5000, progress_seconds=15.0), 1400.0) == 15.0


def test_a_slow_machine_gets_long_jobs_that_outlast_the_load() -> None:
    # 5,000 at 500/s: 10 s alone; beside the long jobs up to 2.1x that (21 s) > 15 s
    seconds = long_job_seconds(BenchOptions(jobs=5000, progress_seconds=15.0), 500.0)
    assert seconds == 30.0 and seconds > 2.1 * 5000 / 500


def test_no_measured_rate_does_not_divide_by_zero() -> None:
    assert long_job_seconds(BenchOptions(jobs=10, progress_seconds=1.0), 0.0) == 30.0
