"""A dedicated database connection: LISTEN for wake-ups from other instances, and hold the
outbox relay's leadership lock. Reconnects with backoff when the database goes away."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from jobservice.batching import TRANSIENT_DB_ERRORS
from jobservice.store import Store

log = logging.getLogger(__name__)


class DatabaseListener:
    def __init__(self, store: Store, handlers: dict[str, Callable[[str], None]],
                 check_interval_s: float, on_connect: Callable[[], None],
                 catch_up: Callable[[], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._handlers = handlers
        self._check_interval = check_interval_s
        self._on_connect = on_connect
        # After each (re)connection, once listening: redo what missed notifications asked.
        self._catch_up = catch_up
        self.is_relay_leader = False
        self.connected = False
        self.first_connection = anyio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, backoff)
            finally:
                self.connected = False
                self.is_relay_leader = False
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _listen(self) -> None:
        conn = await self._store.connect_listener()
        lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            for channel, handler in self._handlers.items():
                await conn.add_listener(channel, _callback(handler))
            self.connected = True
            self.first_connection.set()
            self._on_connect()  # we may have missed notifications while away
            if self._catch_up is not None:
                await self._catch_up()
            while not lost.is_set():
                if not self.is_relay_leader:
                    self.is_relay_leader = await self._store.try_relay_leadership(conn)
                    if self.is_relay_leader:
                        log.info("this instance now relays the event outbox")
                        self._on_connect()
                else:
                    await conn.fetchval("SELECT 1")  # notice a dead connection
                with anyio.move_on_after(self._check_interval):
                    await lost.wait()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=2)
                except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError):
                    conn.terminate()


def _callback(handler: Callable[[str], None]) -> Callable[[Any, int, str, object], None]:
    def on_notify(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
        handler(str(payload))

    return on_notify
