"""Job types used by the tests (registered through JOBSERVICE_JOB_MODULES)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import Job, JobContext, NoParameters


class SpinParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    advances: int = Field(default=10_000, ge=1)
    seconds: float = Field(default=3.0, ge=0)


class ProgressSpinJob(Job[SpinParameters]):
    """Advances `advances` times spread over `seconds` (async)."""

    name = "tests.progress_spin"
    Parameters = SpinParameters

    def __init__(self, parameters: SpinParameters) -> None:
        super().__init__(parameters)
        self.completion_count = parameters.advances

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        per_batch = max(1, self.parameters.advances // 300)
        pause = self.parameters.seconds / (self.parameters.advances / per_batch)
        done = 0
        while done < self.parameters.advances:
            for _ in range(min(per_batch, self.parameters.advances - done)):
                ctx.advance()
                done += 1
            await anyio.sleep(pause)
        return {"advances": done}


class BlockingSpinJob(Job[SpinParameters]):
    """The same work in a plain function: runs in a worker thread."""

    name = "tests.blocking_spin"
    Parameters = SpinParameters

    def __init__(self, parameters: SpinParameters) -> None:
        super().__init__(parameters)
        self.completion_count = parameters.advances

    def run(self, ctx: JobContext) -> dict[str, Any]:
        assert threading.current_thread() is not threading.main_thread()
        pause = self.parameters.seconds / self.parameters.advances
        for _ in range(self.parameters.advances):
            time.sleep(pause)
            ctx.advance()
        return {"thread": threading.current_thread().name != "MainThread"}


class WaitForeverJob(Job[NoParameters]):
    """Runs until cancelled."""

    name = "tests.wait_forever"

    async def run(self, ctx: JobContext) -> None:
        await anyio.sleep_forever()


class UnserializableResultJob(Job[NoParameters]):
    name = "tests.unserializable"

    async def run(self, ctx: JobContext) -> object:
        return object()


class EchoParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = None


class EchoJob(Job[EchoParameters]):
    """Returns its parameter as the result."""

    name = "tests.echo"
    Parameters = EchoParameters

    async def run(self, ctx: JobContext) -> Any:
        return {"echo": self.parameters.value}
