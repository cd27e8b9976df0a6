"""Job types of the bench scenarios; only the bench's own instances load this module
(`JOBSERVICE_JOB_MODULES`), so producers elsewhere cannot submit them."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import Job, JobContext, NoParameters


class AdvanceParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=100_000, ge=1, le=10_000_000)
    seconds: float = Field(default=5.0, ge=0, le=3600)


async def advance_evenly(advance: Callable[[], None], steps: int, seconds: float) -> None:
    """`advance()` `steps` times in chunks of 1,000, spread evenly over `seconds`."""
    chunk = 1000
    pause = seconds * chunk / steps
    done = 0
    while done < steps:
        for _ in range(min(chunk, steps - done)):
            advance()
        done += chunk
        await anyio.sleep(pause)


class AdvanceJob(Job[AdvanceParameters]):
    """Calls `ctx.advance()` `steps` times, spread evenly over `seconds` (progress-heavy)."""

    name = "bench.advance"
    Parameters = AdvanceParameters

    def __init__(self, parameters: AdvanceParameters) -> None:
        super().__init__(parameters)
        self.completion_count = parameters.steps

    async def run(self, ctx: JobContext) -> None:
        await advance_evenly(ctx.advance, self.parameters.steps, self.parameters.seconds)


class _Tally:
    """What `JobContext.advance` does for the job itself (count, check a stop flag), with
    nothing of the service behind it."""

    def __init__(self) -> None:
        self.completed = 0
        self.stop_requested = False

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self.stop_requested:
            raise RuntimeError("stopped")


class SpinJob(Job[AdvanceParameters]):
    """The control of `bench.advance`: the same loop, chunks and pauses, counting on a local
    tally instead of the job's context, so no progress reaches the service. The difference
    between the two is what progress reporting costs the instance."""

    name = "bench.spin"
    Parameters = AdvanceParameters

    async def run(self, ctx: JobContext) -> None:
        await advance_evenly(_Tally().advance, self.parameters.steps, self.parameters.seconds)


class SleepParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(default=5.0, ge=0, le=3600)


class SleepJob(Job[SleepParameters]):
    """Sleeps `seconds` without reporting progress: a slot taken, no work done (the
    progress scenario's control for its progress-heavy jobs)."""

    name = "bench.sleep"
    Parameters = SleepParameters

    async def run(self, ctx: JobContext) -> None:
        await anyio.sleep(self.parameters.seconds)


class HoldJob(Job[NoParameters]):
    """Holds its slot until stopped (or the instance shuts down): a busy pool."""

    name = "bench.hold"

    async def run(self, ctx: JobContext) -> None:
        await anyio.sleep_forever()
