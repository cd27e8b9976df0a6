"""The jobs' own log lines (`ctx.log`): buffered in memory, written to `t_job_log` in batches
(one statement per flush), and flushed before a job's final status is written."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

from jobservice.batching import retry_transient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobLogLine:
    job_id: UUID
    attempt: int
    at: datetime
    level: str
    message: str
    # lines of ctx.message: the untranslated key and parameters (rendered again per locale)
    message_key: str | None = None
    message_params: Mapping[str, Any] | None = None


class JobLogWriter:
    """Implements `JobLogSink`: `append` from any thread, writes every `interval_s`."""

    def __init__(self, write: Callable[[Sequence[JobLogLine]], Awaitable[None]],
                 interval_s: float = 0.5, max_batch: int = 1000) -> None:
        self._write = write
        self._interval = interval_s
        self._max_batch = max_batch
        self._pending: list[JobLogLine] = []
        self._lock = threading.Lock()
        self._writing = asyncio.Lock()
        self.written = 0

    def append(self, job_id: UUID, attempt: int, at: datetime, level: str,
               message: str, message_key: str | None = None,
               message_params: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self._pending.append(JobLogLine(job_id, attempt, at, level, message, message_key,
                                            message_params))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("job log lines could not be written")

    async def flush(self) -> None:
        """Write every line appended so far (waits for a write in progress)."""
        async with self._writing:
            while True:
                with self._lock:
                    batch = self._pending[: self._max_batch]
                    del self._pending[: self._max_batch]
                if not batch:
                    return
                await retry_transient("write job log", partial(self._write, batch))
                self.written += len(batch)
