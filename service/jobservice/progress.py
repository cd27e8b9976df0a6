"""Completion throttle: collects `ctx.advance()` and `ctx.message()` and writes each job's
percentage and current message at most once per period, all due jobs in one statement."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio

from jobservice.jobs.base import JobContext
from jobservice.store import CompletionWrite

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tracked:
    ctx: JobContext
    written_percent: int
    written_at: float
    written_message: tuple[str, dict[str, Any]] | None = None


def message_fields(message: tuple[str, dict[str, Any]] | None) -> tuple[str | None, str | None]:
    """(key, params as JSON) of a job's current message, for the database."""
    if message is None:
        return None, None
    return message[0], json.dumps(message[1], default=str)


class CompletionThrottle:
    """At most one completion write per job per `period_s`; the final write is the finish's."""

    def __init__(
        self,
        period_s: float,
        write: Callable[[Sequence[CompletionWrite]], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._period = period_s
        self._write = write
        self._clock = clock
        self._jobs: dict[UUID, _Tracked] = {}
        self._has_jobs = anyio.Event()
        self.writes = 0  # statements issued
        self.rows = 0  # job percentages written

    def track(self, ctx: JobContext) -> None:
        """Start watching a running job; its first write comes one period after start."""
        self._jobs[ctx.job_id] = _Tracked(ctx, ctx.percent_completed, self._clock())
        self._has_jobs.set()

    def untrack(self, job_id: UUID) -> None:
        self._jobs.pop(job_id, None)

    def due(self) -> list[CompletionWrite]:
        """The writes owed now: changed since last written, and last written a period ago."""
        now = self._clock()
        owed: list[CompletionWrite] = []
        for job_id, tracked in self._jobs.items():
            percent = tracked.ctx.percent_completed
            message = tracked.ctx.current_message
            changed = percent != tracked.written_percent or message != tracked.written_message
            if changed and now - tracked.written_at >= self._period:
                key, params = message_fields(message)
                owed.append(CompletionWrite(job_id, tracked.ctx.attempt, percent, key, params))
        return owed

    def mark_written(self, writes: Sequence[CompletionWrite]) -> None:
        now = self._clock()
        for write in writes:
            tracked = self._jobs.get(write.id)
            if tracked is not None:
                tracked.written_percent = write.percent
                tracked.written_at = now
                if write.message_key is not None:
                    tracked.written_message = tracked.ctx.current_message

    async def flush_due(self) -> int:
        owed = self.due()
        if owed:
            await self._write(owed)
            self.writes += 1
            self.rows += len(owed)
            self.mark_written(owed)
        return len(owed)

    async def run(self) -> None:
        """Tick a few times per period while jobs run; sleep on an event while none do."""
        tick = min(self._period / 4, 0.25)
        while True:
            if not self._jobs:
                self._has_jobs = anyio.Event()
                await self._has_jobs.wait()
            await anyio.sleep(tick)
            try:
                await self.flush_due()
            except Exception:  # database away: the values stay owed and go out next tick
                log.warning("completion write failed; will retry", exc_info=True)
