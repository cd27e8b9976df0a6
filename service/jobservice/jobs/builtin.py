"""Built-in job types (CONTRACT section 7)."""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import Job, JobContext, NoParameters


class NoopJob(Job[NoParameters]):
    """Succeeds at once; for benchmarks."""

    name = "jobservice.noop"

    async def run(self, ctx: JobContext) -> None:
        return None


class SleepParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(ge=0, le=7 * 24 * 3600)
    ticks: int = Field(default=10, ge=1, le=1_000_000)


class SleepJob(Job[SleepParameters]):
    """Sleeps `seconds` in `ticks` steps, advancing completion at each."""

    name = "jobservice.sleep"
    Parameters = SleepParameters

    def __init__(self, parameters: SleepParameters) -> None:
        super().__init__(parameters)
        self.completion_count = parameters.ticks

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        step = self.parameters.seconds / self.parameters.ticks
        for _ in range(self.parameters.ticks):
            await anyio.sleep(step)
            ctx.advance()
        return {"slept_s": self.parameters.seconds}


class FailParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str = Field(default="failed on purpose", max_length=10_000)


class FailJobError(Exception):
    """Raised by `jobservice.fail`."""


class FailJob(Job[FailParameters]):
    """Raises; the job ends FAILED with the given message."""

    name = "jobservice.fail"
    Parameters = FailParameters

    async def run(self, ctx: JobContext) -> None:
        raise FailJobError(self.parameters.message)
