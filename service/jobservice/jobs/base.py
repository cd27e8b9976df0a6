"""What a job type implements, and what a running job can call (`JobContext`)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class NoParameters(BaseModel):
    """Parameter model of job types that take none: any parameter is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=BaseModel)


class JobStopped(Exception):
    """Raised by `ctx.advance()` inside a blocking job once a `stop` arrived for it."""


class JobContext:
    """Handed to `Job.run`: the job's identity and its progress counter.

    `advance()` is cheap (a counter increment); the completion throttle decides when the
    percentage is written. Safe to call from the job's thread for blocking jobs.
    """

    def __init__(self, job_id: UUID, tenant: str, job_class: str, attempt: int,
                 owner: str | None, completion_count: int) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.job_class = job_class
        self.attempt = attempt
        self.owner = owner
        self.completion_count = max(1, completion_count)
        self.completed = 0
        self._stop = threading.Event()

    def advance(self, n: int = 1) -> None:
        """Count `n` units of work done (out of the job's `completion_count`)."""
        self.completed += n
        if self._stop.is_set():
            raise JobStopped(f"job {self.job_id} was stopped")

    @property
    def percent_completed(self) -> int:
        return max(0, min(100, (self.completed * 100) // self.completion_count))

    @property
    def stop_requested(self) -> bool:
        """True once `stop` arrived; blocking jobs may poll it between units of work."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()


class Job(Generic[P]):
    """Base class of every job type.

    Set `name` (the `job_class` producers send) and `Parameters` (a pydantic model), and
    implement `run(ctx)`: `async def` runs on the event loop, a plain `def` runs in a worker
    thread. Return a JSON-serializable result (kept on the job), or raise to fail it.
    """

    name: ClassVar[str] = ""
    Parameters: ClassVar[type[BaseModel]] = NoParameters
    # Units of work in a run: `ctx.advance()` calls that make 100 %. May be set per instance.
    completion_count: int = 100
    # When the instance running the job dies, the job goes back to QUEUED and runs again
    # (it was interrupted, not failed). Set True for work that must never run twice: a lost
    # run then ends FAILED with error type `lost`, for a person (or a `retry`) to decide.
    run_at_most_once: ClassVar[bool] = False

    def __init__(self, parameters: P) -> None:
        self.parameters = parameters

    def run(self, ctx: JobContext) -> Any:
        raise NotImplementedError
