"""Pure logic of the bench: how long the progress scenario's long jobs run, when a
phase's jobs have all ended, CPU counted over a run, and what the observer reads of an
event."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from jobservice.bench.flow import all_ended, phase_rates
from jobservice.bench.harness import EventLog, ObservedEvent, cpu_since
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


def test_the_observer_reads_an_event_as_the_contract_writes_it() -> None:
    body = json.dumps({
        "event_id": str(uuid.uuid4()), "job_id": "0b0e0c5e-0000-4000-8000-000000000001",
        "tenant": "project-a", "job_class": "jobservice.noop", "status": "RUNNING",
        "previous_status": "TO_BE_RUN", "percent_completed": 0,
        "at": "2026-11-24T10:00:00.123456Z", "owner": None, "error": None, "result": None,
    }).encode()
    event = ObservedEvent.parse(body)
    assert (event.job_id, event.tenant, event.status, event.previous_status) == (
        "0b0e0c5e-0000-4000-8000-000000000001", "project-a", "RUNNING", "TO_BE_RUN")
    assert event.at == datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC).timestamp()
    log = EventLog()
    log.add(event)
    log.add(ObservedEvent.parse(body.replace(b'"TO_BE_RUN"', b'"RUNNING"')))  # progress
    assert log.at("RUNNING") == {event.job_id: event.at}
    assert log.progress == {event.job_id: 1} and log.ended == []


def test_phase_rates_split_the_run_at_the_last_stored_submission() -> None:
    # published at 0; rows stored until 2 s; 2 jobs ended by then, 6 in the 3 s after
    created = [0.5, 1.0, 2.0, 1.5]
    ended = [1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert phase_rates(0.0, created, ended) == (2.0, 1.0, 2.0)


def test_phase_rates_with_nothing_left_after_the_last_store() -> None:
    assert phase_rates(0.0, [1.0, 2.0], [1.5, 2.0]) == (2.0, 1.0, None)
