"""CompletionThrottle decisions with a fake clock."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from jobservice.jobs.base import JobContext
from jobservice.progress import CompletionThrottle
from jobservice.store import CompletionWrite


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ctx(count: int = 100) -> JobContext:
    return JobContext(uuid.uuid4(), "t", "x", 1, None, count)


async def test_at_most_one_write_per_job_per_period_and_all_due_jobs_in_one_batch() -> None:
    clock = Clock()
    batches: list[list[CompletionWrite]] = []

    async def write(writes: Sequence[CompletionWrite]) -> None:
        batches.append(list(writes))

    throttle = CompletionThrottle(1.0, write, clock)
    a, b, idle = ctx(), ctx(), ctx()
    for job in (a, b, idle):
        throttle.track(job)
    a.advance(10)
    b.advance(20)
    clock.now += 0.5
    assert await throttle.flush_due() == 0  # not a period since start yet
    clock.now += 0.5
    assert await throttle.flush_due() == 2  # a and b, one statement; idle did not change
    assert [{w.id for w in batch} for batch in batches] == [{a.job_id, b.job_id}]
    assert {w.percent for w in batches[0]} == {10, 20}
    a.advance(50)
    clock.now += 0.99
    assert await throttle.flush_due() == 0  # a changed, but written less than a period ago
    clock.now += 0.01
    assert await throttle.flush_due() == 1
    assert batches[-1] == [CompletionWrite(a.job_id, 1, 60)]
    assert await throttle.flush_due() == 0  # nothing new
    assert throttle.writes == 2 and throttle.rows == 3


async def test_ten_thousand_advances_in_three_seconds_make_about_three_writes() -> None:
    clock = Clock()
    written: list[int] = []

    async def write(writes: Sequence[CompletionWrite]) -> None:
        written.extend(w.percent for w in writes)

    throttle = CompletionThrottle(1.0, write, clock)
    job = ctx(10_000)
    throttle.track(job)
    for _ in range(300):  # the flusher ticks every 10 ms of fake time
        for _ in range(33):
            job.advance()
        clock.now += 0.01
        await throttle.flush_due()
    throttle.untrack(job.job_id)
    assert 2 <= len(written) <= 3  # plus the final write made with the final status
    assert written == sorted(written)


def test_untracked_job_is_not_written() -> None:
    async def write(writes: Sequence[CompletionWrite]) -> None:
        raise AssertionError("no write expected")

    throttle = CompletionThrottle(1.0, write, Clock())
    job = ctx()
    throttle.track(job)
    throttle.untrack(job.job_id)
    job.advance(50)
    assert throttle.due() == []


def test_percent_is_capped_and_floored() -> None:
    job = ctx(4)
    job.advance(10)
    assert job.percent_completed == 100
    assert ctx(0).percent_completed == 0


async def test_a_new_message_alone_is_written_throttled_like_completion() -> None:
    clock = Clock()
    batches: list[list[CompletionWrite]] = []

    async def write(writes: Sequence[CompletionWrite]) -> None:
        batches.append(list(writes))

    throttle = CompletionThrottle(1.0, write, clock)
    job = ctx()
    throttle.track(job)
    job.message("import.progress", done=1, count=3)
    clock.now += 1
    assert await throttle.flush_due() == 1
    assert batches[-1] == [CompletionWrite(job.job_id, 1, 0, "import.progress",
                                           '{"done": 1, "count": 3}')]
    assert await throttle.flush_due() == 0  # unchanged
    job.message("import.progress", done=2, count=3)
    job.message("import.progress", done=3, count=3)
    clock.now += 0.5
    assert await throttle.flush_due() == 0  # within the period
    clock.now += 0.5
    assert await throttle.flush_due() == 1  # only the latest
    assert batches[-1][0].message_params_json == '{"done": 3, "count": 3}'
