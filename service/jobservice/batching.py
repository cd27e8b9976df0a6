"""Group commit: many tasks hand items to one writer, which writes them in one statement."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
    # A statement that meets a connection the server just closed can find the protocol in
    # the wrong state; the connection is given back, the retry runs on another.
    asyncpg.InternalClientError,
    # Rolled back as a whole; happens rarely when dependents are resolved while their
    # dependencies are submitted or finish in other transactions: just run it again.
    asyncpg.DeadlockDetectedError,
)


_GATHER_TURNS = 3


class BatchWriter(Generic[T, R]):
    """Writes whatever accumulated while the previous write ran: no added latency when
    idle, large batches under load. A write that fails for a transient reason (database
    away) is retried with backoff until it lands; each submitter awaits the batch result."""

    def __init__(
        self,
        name: str,
        write: Callable[[Sequence[T]], Awaitable[R]],
        max_batch: int = 500,
        max_backoff_s: float = 5.0,
        coming: Callable[[], int] = lambda: 0,
    ) -> None:
        """`coming()`: how many items are about to be submitted (see `_gather`)."""
        self._name = name
        self._write = write
        self._coming = coming
        self._max_batch = max_batch
        self._max_backoff = max_backoff_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self.batches = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return await future

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            await self._gather()
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._write_batch(batch)

    async def _gather(self) -> None:
        """Give items about to come a few turns of the event loop to join this batch. The
        pool's final writes: jobs started by the previous write that end at once (no-op,
        failing early) submit within two or three turns; without this, two groups of jobs
        that were claimed apart stay apart, each write taking half of them, at twice the
        statements per job (measured: 0.24 -> 0.47, -14 % jobs/s). Jobs that run longer are
        not waited for."""
        for _ in range(_GATHER_TURNS):
            if len(self._pending) >= self._max_batch or self._coming() <= 0:
                return
            await asyncio.sleep(0)

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        backoff = 0.05
        while True:
            try:
                result = await self._write([item for item, _ in batch])
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("%s: write of %d failed (%s); retrying in %.2fs",
                            self._name, len(batch), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception as exc:
                log.exception("%s: write of %d failed for good", self._name, len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            self.batches += 1
            for _, future in batch:
                if not future.done():
                    future.set_result(result)
            return


async def retry_transient(
    what: str, call: Callable[[], Awaitable[R]], max_backoff_s: float = 5.0
) -> R:
    """Run `call` until it gets past transient database errors (outage, restart)."""
    backoff = 0.05
    while True:
        try:
            return await call()
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("%s failed (%s); retrying in %.2fs", what, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
