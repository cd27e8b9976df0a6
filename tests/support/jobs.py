"""Job types used by the tests (registered through JOBSERVICE_JOB_MODULES)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import AbortWorker, Job, JobContext, NoParameters, Reschedule


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


class AttemptParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    succeed_on_attempt: int = Field(default=1, ge=1)
    delay: float = Field(default=0.0, ge=0)
    log_lines: int = Field(default=0, ge=0)


class FlakyError(RuntimeError):
    pass


class FlakyJob(Job[AttemptParameters]):
    """Fails (FlakyError) until its `succeed_on_attempt`-th attempt; logs what it does."""

    name = "tests.flaky"
    Parameters = AttemptParameters

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        for n in range(self.parameters.log_lines):
            ctx.log("info", f"line {n} of attempt {ctx.attempt}")
        if ctx.attempt < self.parameters.succeed_on_attempt:
            ctx.log("error", f"attempt {ctx.attempt} fails")
            raise FlakyError(f"attempt {ctx.attempt} failed")
        return {"attempt": ctx.attempt}


class RetryingByDefaultJob(FlakyJob):
    """The same, with a retry policy on the job type."""

    name = "tests.retrying_by_default"
    max_retries = 1
    retry_backoff_s = 0.1


class RescheduleJob(Job[AttemptParameters]):
    """Raises Reschedule(delay) until its `succeed_on_attempt`-th attempt (blocking job)."""

    name = "tests.reschedule"
    Parameters = AttemptParameters

    def run(self, ctx: JobContext) -> dict[str, Any]:
        if ctx.attempt < self.parameters.succeed_on_attempt:
            raise Reschedule(self.parameters.delay, "input not ready")
        return {"attempt": ctx.attempt}


class AbortWorkerJob(Job[AttemptParameters]):
    """Raises AbortWorker until its `succeed_on_attempt`-th attempt."""

    name = "tests.abort_worker"
    Parameters = AttemptParameters

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        if ctx.attempt < self.parameters.succeed_on_attempt:
            raise AbortWorker("lost the connection to the shared storage")
        return {"attempt": ctx.attempt}
class RecordParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    advances: int = Field(default=4, ge=1)
    seconds: float = Field(default=0.2, ge=0)


class RecordStepJob(Job[RecordParameters]):
    """Returns what it was given (a blocking step: runs in a worker thread)."""

    name = "tests.record_step"
    Parameters = RecordParameters

    def __init__(self, parameters: RecordParameters) -> None:
        super().__init__(parameters)
        self.completion_count = parameters.advances

    def run(self, ctx: JobContext) -> dict[str, Any]:
        for _ in range(self.parameters.advances):
            time.sleep(self.parameters.seconds / self.parameters.advances)
            ctx.advance()
        return {
            "label": self.parameters.label,
            "step": [ctx.step_index, ctx.step_name],
            "environment": dict(ctx.environment),
            "elements": [[e.type, e.id] for e in ctx.selected_elements],
            "earlier": dict(ctx.results),
            "context": ctx.context,
            "owner": ctx.owner,
        }


class MessagesParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[tuple[str, dict[str, Any]]] = Field(default_factory=list)


class MessagesJob(Job[MessagesParameters]):
    """Sets each message in turn (`ctx.message(key, **params)`)."""

    name = "tests.messages"
    Parameters = MessagesParameters

    async def run(self, ctx: JobContext) -> None:
        for key, params in self.parameters.messages:
            ctx.message(key, **params)
            await anyio.sleep(0.01)


class FailFirstJob(Job[NoParameters]):
    """Fails its first attempt, succeeds afterwards."""

    name = "tests.fail_first"

    async def run(self, ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"
