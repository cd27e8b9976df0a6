"""What a job type implements, and what a running job can call (`JobContext`)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class NoParameters(BaseModel):
    """Parameter model of job types that take none: any parameter is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=BaseModel)


class JobStopped(Exception):
    """Raised by `ctx.advance()` inside a blocking job once a `stop` arrived for it."""


class Reschedule(Exception):
    """Raise from `run` when something the job needs is not ready yet: the job goes back to
    QUEUED and runs again after `delay` (seconds or a timedelta). Not a failure, but capped
    (`JOBSERVICE_MAX_RESCHEDULES`, then FAILED `rescheduled_too_often`)."""

    def __init__(self, delay: float | timedelta, reason: str = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not seconds >= 0:
            raise ValueError(f"reschedule delay must be >= 0 seconds, not {delay!r}")
        self.delay_s = seconds
        self.reason = reason
        super().__init__(f"rescheduled in {seconds:g}s" + (f": {reason}" if reason else ""))


class AbortWorker(Exception):
    """Raise from `run` when this instance itself is unfit (a connection all its jobs need
    is broken): the job goes back to QUEUED, the instance stops claiming, drains and exits
    non-zero so that its orchestrator replaces it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level_name(level: int | str) -> str:
    """`logging.INFO`, "INFO", "info" -> "info"; unknown names are kept (lower case)."""
    if isinstance(level, int):
        return logging.getLevelName(level).lower()
    return level.strip().lower()[:20] or "info"


class JobLogSink(Protocol):
    """Receives the lines of `ctx.log` (from any thread); writes them in batches."""

    def append(self, job_id: UUID, attempt: int, at: datetime, level: str,
               message: str) -> None: ...


MAX_LOG_MESSAGE_CHARS = 4000


class JobContext:
    """Handed to `Job.run`: the job's identity and its progress counter.

    `advance()` is cheap (a counter increment); the completion throttle decides when the
    percentage is written. Safe to call from the job's thread for blocking jobs.
    """

    def __init__(self, job_id: UUID, tenant: str, job_class: str, attempt: int,
                 owner: str | None, completion_count: int, log_sink: JobLogSink | None = None,
                 max_log_lines: int = 1000) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.job_class = job_class
        self.attempt = attempt
        self.owner = owner
        self.completion_count = max(1, completion_count)
        self.completed = 0
        self._stop = threading.Event()
        self._log_sink = log_sink
        self._log_room = max_log_lines
        self._log_lock = threading.Lock()
        self.log_lines = 0  # written (or waiting to be) in this attempt
        self.log_lines_dropped = 0

    def log(self, level: int | str, message: str) -> None:
        """Write a line to this job's log (`t_job_log`, shown by `jobservice jobs show`).

        Cheap and safe from any thread: lines are written in batches. At most
        `JOBSERVICE_JOB_LOG_MAX_LINES` lines per attempt (the rest are counted, and the
        count is logged at the end) and 4000 characters per line."""
        with self._log_lock:
            if self._log_room <= 0:
                self.log_lines_dropped += 1
                return
            self._log_room -= 1
            self.log_lines += 1
        if self._log_sink is not None:
            self._log_sink.append(self.job_id, self.attempt, datetime.now(UTC),
                                  log_level_name(level), str(message)[:MAX_LOG_MESSAGE_CHARS])

    def close_log(self) -> None:
        """End of the attempt: say how many lines did not fit."""
        if self.log_lines_dropped and self._log_sink is not None:
            self.log_lines += 1
            self._log_sink.append(self.job_id, self.attempt, datetime.now(UTC), "warning",
                                  f"{self.log_lines_dropped} more log line(s) dropped "
                                  "(JOBSERVICE_JOB_LOG_MAX_LINES)")

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
    # Automatic retries after a failure (0: a failed job stays FAILED until kicked, since
    # running it again could corrupt data) and the base of their exponential backoff with
    # jitter. A submission may override both (`max_retries`, `retry_backoff_s`).
    max_retries: ClassVar[int] = 0
    retry_backoff_s: ClassVar[float] = 1.0

    def __init__(self, parameters: P) -> None:
        self.parameters = parameters

    def run(self, ctx: JobContext) -> Any:
        raise NotImplementedError
