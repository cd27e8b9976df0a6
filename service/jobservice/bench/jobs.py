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


class SpinJob(Job[AdvanceParameters]):
    """The control of `bench.advance`: the same loop, chunks and pauses, the same
    `advance()`, but on a context of its own that the instance does not watch, so no
    progress reaches the service. The difference between the two is what progress reporting
    costs the instance."""

    name = "bench.spin"
    Parameters = AdvanceParameters

    async def run(self, ctx: JobContext) -> None:
        unwatched = JobContext(ctx.job_id, ctx.tenant, ctx.job_class, ctx.attempt, ctx.owner,
                               self.parameters.steps)
        await advance_evenly(unwatched.advance, self.parameters.steps, self.parameters.seconds)


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
