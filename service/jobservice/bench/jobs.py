"""Job types of the bench scenarios; only the bench's own instances load this module
(`JOBSERVICE_JOB_MODULES`), so producers elsewhere cannot submit them."""

from __future__ import annotations

import anyio
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import Job, JobContext, NoParameters


class AdvanceParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=100_000, ge=1, le=10_000_000)
    seconds: float = Field(default=5.0, ge=0, le=3600)


class AdvanceJob(Job[AdvanceParameters]):
    """Calls `ctx.advance()` `steps` times, spread evenly over `seconds` (progress-heavy)."""

    name = "bench.advance"
    Parameters = AdvanceParameters

    def __init__(self, parameters: AdvanceParameters) -> None:
        super().__init__(parameters)
        self.completion_count = parameters.steps

    async def run(self, ctx: JobContext) -> None:
        chunk = 1000
        pause = self.parameters.seconds * chunk / self.parameters.steps
        done = 0
        while done < self.parameters.steps:
            for _ in range(min(chunk, self.parameters.steps - done)):
                ctx.advance()
            done += chunk
            await anyio.sleep(pause)


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
