"""What a job type implements, and what a running job can call (`JobContext`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from jobservice.model import DEFAULT_CONTEXT

log = logging.getLogger(__name__)

# Renders a message key of a domain in English: (domain, key, params) -> text.
Renderer = Callable[[str, str, Mapping[str, Any]], str]


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
    """Receives the lines of `ctx.log` and `ctx.message` (from any thread); writes them in
    batches. A line of `ctx.message` keeps its key and parameters (to render it again in
    another locale)."""

    def append(self, job_id: UUID, attempt: int, at: datetime, level: str,
               message: str, message_key: str | None = None,
               message_params: Mapping[str, Any] | None = None) -> None: ...


MAX_LOG_MESSAGE_CHARS = 4000


@dataclass(frozen=True, slots=True)
class SelectedElement:
    """An element the user selected (`selected_elements` of the submission)."""

    type: str
    id: str | int


def _default_renderer(domain: str, key: str, params: Mapping[str, Any]) -> str:
    from jobservice.i18n import DEFAULT_CATALOGS

    return DEFAULT_CATALOGS.render(domain, key, params)


class JobContext:
    """Handed to `Job.run`: the job's identity and its progress counter.

    `advance()` is cheap (a counter increment); the completion throttle decides when the
    percentage is written. Safe to call from the job's thread for blocking jobs.
    """

    def __init__(self, job_id: UUID, tenant: str, job_class: str, attempt: int,
                 owner: str | None, completion_count: int, log_sink: JobLogSink | None = None,
                 max_log_lines: int = 1000, *,
                 context: str = DEFAULT_CONTEXT,
                 environment: Mapping[str, Any] | None = None,
                 selected_elements: Sequence[SelectedElement] = (),
                 renderer: Renderer | None = None) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.job_class = job_class
        self.attempt = attempt
        self.owner = owner
        self.completion_count = max(1, completion_count)
        self.completed = 0
        # A plain bool, not a threading.Event: progress-heavy jobs read it on every
        # `advance()` (20 million times in the progress bench); a bool written under the GIL
        # is seen by a job running in a thread on its next read.
        self._stop_requested = False
        self._log_sink = log_sink
        self._log_room = max_log_lines
        self._log_lock = threading.Lock()
        self.log_lines = 0  # written (or waiting to be) in this attempt
        self.log_lines_dropped = 0
        # Who the job is for (its message catalog domain), what the user entered and chose.
        self.context = context
        self.environment: Mapping[str, Any] = dict(environment or {})
        self.selected_elements: tuple[SelectedElement, ...] = tuple(selected_elements)
        # In a step of a multi-step job: its position and name, and the results of the
        # steps before it by step name. Outside steps: None, None and {}.
        self.step_index: int | None = None
        self.step_name: str | None = None
        self.results: Mapping[str, Any] = {}
        self._renderer = renderer or _default_renderer
        self._message: tuple[str, dict[str, Any]] | None = None

    def log(self, level: int | str, message: str) -> None:
        """Write a line to this job's log (`t_job_log`, shown by `jobservice jobs show`).

        Cheap and safe from any thread: lines are written in batches. At most
        `JOBSERVICE_JOB_LOG_MAX_LINES` lines per attempt (the rest are counted, and the
        count is logged at the end) and 4000 characters per line."""
        self._log(log_level_name(level), str(message), None, None)

    def _log(self, level: str, message: str, key: str | None,
             params: Mapping[str, Any] | None) -> None:
        with self._log_lock:
            if self._log_room <= 0:
                self.log_lines_dropped += 1
                return
            self._log_room -= 1
            self.log_lines += 1
        if self._log_sink is not None:
            self._log_sink.append(self.job_id, self.attempt, datetime.now(UTC), level,
                                  message[:MAX_LOG_MESSAGE_CHARS], key, params)

    def message(self, key: str, **params: Any) -> None:
        """Set the job's current message: a key of its context's catalog and parameters,
        stored untranslated (and sent in events), rendered in each reader's locale. Also
        appends the English rendering to the job's log (key and parameters kept)."""
        self._message = (key, dict(params))
        self._log("info", self._renderer(self.context, key, params), key, dict(params))

    @property
    def current_message(self) -> tuple[str, dict[str, Any]] | None:
        """(key, params) of the last `message()`, or None."""
        return self._message

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
        if self._stop_requested:
            raise JobStopped(f"job {self.job_id} was stopped")

    @property
    def percent_completed(self) -> int:
        return max(0, min(100, (self.completed * 100) // self.completion_count))

    @property
    def stop_requested(self) -> bool:
        """True once `stop` arrived; blocking jobs may poll it between units of work."""
        return self._stop_requested

    def request_stop(self) -> None:
        self._stop_requested = True


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
