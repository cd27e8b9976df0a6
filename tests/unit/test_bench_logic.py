"""Pure logic of the bench: how long the progress scenario's long jobs run, when a
phase's jobs have all ended, and CPU counted over a run."""

from __future__ import annotations

import pytest

from jobservice.bench.flow import all_ended
from jobservice.bench.harness import EventLog, cpu_since
from jobservice.bench.options import BenchOptions
from jobservice.bench.progress import long_job_seconds, phase_jobs


def test_a_fast_machine_keeps_the_asked_duration() -> None:
    # 5,000 no-op jobs at 1,400/s: 3.6 s alone, at most ~7.5 s beside the long jobs
    assert long_job_seconds(BenchOptions(progress_seconds=15.0), 5000, 1400.0) == 15.0


def test_a_slow_machine_gets_long_jobs_that_outlast_the_load() -> None:
    # 5,000 at 500/s: 10 s alone; beside the long jobs up to 2.1x that (21 s) > 15 s
    seconds = long_job_seconds(BenchOptions(progress_seconds=15.0), 5000, 500.0)
    assert seconds == 30.0 and seconds > 2.1 * 5000 / 500


def test_no_measured_rate_does_not_divide_by_zero() -> None:
    assert long_job_seconds(BenchOptions(progress_seconds=1.0), 10, 0.0) == 30.0


def test_a_fast_machine_gets_phases_long_enough_to_compare() -> None:
    # a probe of 5,000 at 2,000/s: 8 s phases hold 16,000 jobs
    assert phase_jobs(BenchOptions(jobs=5000, progress_phase_seconds=8.0), 2000.0) == 16_000


def test_a_slow_machine_keeps_at_least_the_asked_jobs() -> None:
    assert phase_jobs(BenchOptions(jobs=5000, progress_phase_seconds=8.0), 400.0) == 5000


def _end(log: EventLog, *jobs: str) -> None:
    for job in jobs:
        log.received_at[job] = 0.0
        log.ended.append(job)


def test_all_ended_waits_for_its_own_jobs_not_for_a_count() -> None:
    log = EventLog()
    _end(log, *(f"earlier{n}" for n in range(5)))  # a previous phase, same log
    done = all_ended({"a", "b"})
    assert not done(log)
    _end(log, "a", "x")
    assert not done(log)
    _end(log, "a")  # a duplicate final event
    assert not done(log)
    _end(log, "b")
    assert done(log) and done(log)


def test_all_ended_sees_jobs_that_ended_before_it_was_made() -> None:
    log = EventLog()
    _end(log, "a")
    done = all_ended({"a", "b"})
    _end(log, "b")
    assert done(log)


def test_cpu_since_counts_processes_started_during_the_run() -> None:
    """The pool opens backends under load: all of a new one's CPU is the run's (the figure
    counted only backends connected at the start before, and read low)."""
    before = {1: 1.0, 2: 2.0}
    after = {1: 1.5, 3: 0.7}  # 2 ended (its share is lost), 3 started
    assert cpu_since(before, after) == pytest.approx(1.2)
