"""The stop flag a job and its steps share (pure logic: no database, no broker)."""

from __future__ import annotations

import uuid

import pytest

from jobservice.jobs.base import JobContext, JobStopped
from jobservice.jobs.steps import StepContext
from jobservice.model import Step


def _job() -> JobContext:
    return JobContext(uuid.uuid4(), "t", "jobservice.steps", 1, None, 10)


def test_advance_raises_once_a_stop_is_requested() -> None:
    ctx = _job()
    ctx.advance()
    assert not ctx.stop_requested
    ctx.request_stop()
    assert ctx.stop_requested
    with pytest.raises(JobStopped):
        ctx.advance()
    assert ctx.completed == 2  # the work counted before the stop surfaced


def test_a_step_sees_its_jobs_stop_and_a_stop_through_the_step_stops_the_job() -> None:
    job = _job()
    step = StepContext(job, 0, Step(name="a", job_class="jobservice.noop"), 5, {})
    job.request_stop()
    assert step.stop_requested
    with pytest.raises(JobStopped):
        step.advance()

    other_job = _job()
    other_step = StepContext(other_job, 0, Step(name="b", job_class="jobservice.noop"), 5, {})
    other_step.request_stop()
    assert other_job.stop_requested and other_step.stop_requested
