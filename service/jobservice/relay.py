"""Publishes the event outbox: oldest first, in batches, each a broker transaction; deletes
what the broker committed. One instance relays at a time (see DatabaseListener), so the
events of a job leave in transition order. Delivery is at least once."""

from __future__ import annotations

import logging

import anyio

from jobservice.batching import TRANSIENT_DB_ERRORS
from jobservice.bus import Broker
from jobservice.listener import DatabaseListener
from jobservice.metrics import ServiceMetrics
from jobservice.store import Store

log = logging.getLogger(__name__)

DELETE_LAG_S = 0.05


class OutboxRelay:
    def __init__(self, store: Store, broker: Broker, listener: DatabaseListener,
                 metrics: ServiceMetrics, poll_interval_s: float, batch_size: int = 500) -> None:
        self._store = store
        self._broker = broker
        self._listener = listener
        self._metrics = metrics
        self._poll_interval = poll_interval_s
        self._batch_size = batch_size
        self._wake = anyio.Event()
        self._remote_wake = anyio.Event()
        # batches published and committed, deleted with the next read
        self._committed: list[int] = []
        self._publishing = anyio.Lock()
        self.published = 0

    def kick(self) -> None:
        """Events were committed (by this instance or, through NOTIFY, another)."""
        self._wake.set()
        self._remote_wake.set()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            if not self._listener.is_relay_leader:
                await self._tell_leader()
                continue
            try:
                sent = await self.publish_batch()
                backoff = 0.05
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("outbox read failed (%s); retrying", exc)
                sent = -1
            except Exception as exc:  # broker away: events wait in the outbox
                self._metrics.events_failed.inc()
                log.warning("event publication failed (%s); retrying in %.2fs", exc, backoff)
                sent = -1
            if sent < 0:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            elif sent == 0:
                with anyio.move_on_after(self._poll_interval):
                    await self._wake.wait()
            elif sent < self._batch_size:
                # Caught up: the next read deletes this batch. Under load more events are
                # committed within milliseconds and that read takes them too, instead of a
                # statement that only deletes (measured: ~40 a second at full load); idle, the
                # published events are deleted at most DELETE_LAG_S later.
                with anyio.move_on_after(min(self._poll_interval, DELETE_LAG_S)):
                    await self._wake.wait()

    async def publish_batch(self) -> int:
        """Delete the previous batch (committed by the broker) and read the next in one
        statement, publish it. A caller goes on until it returns 0: that call has deleted the
        last batch. One call at a time: at shutdown `drain` runs beside `run`, and two
        interleaved calls would read (and publish) the same batch twice."""
        async with self._publishing:
            return await self._publish_batch()

    async def _publish_batch(self) -> int:
        self._wake = anyio.Event()
        committed, self._committed = self._committed, []
        try:
            events = await self._store.fetch_outbox(self._batch_size, committed)
        except BaseException:
            self._committed = committed  # not deleted: the statement did nothing
            raise
        if not events:
            return 0
        await self._broker.publish_events(events)
        self._committed = list(dict.fromkeys(e.id for e in events))  # their batches
        self.published += len(events)
        self._metrics.events_published.inc(len(events))
        return len(events)

    async def _tell_leader(self) -> None:
        """Not the leader: pass our wake-ups on through NOTIFY, at most one per 10 ms."""
        with anyio.move_on_after(self._poll_interval):
            await self._remote_wake.wait()
        if not self._remote_wake.is_set():
            return
        self._remote_wake = anyio.Event()
        try:
            await self._store.notify("notify_outbox")
        except TRANSIENT_DB_ERRORS:
            log.debug("outbox notify failed", exc_info=True)
        await anyio.sleep(0.01)

    async def drain(self) -> None:
        """Publish everything stored (shutdown), while the broker takes it."""
        if not self._listener.is_relay_leader:
            return
        while await self.publish_batch() > 0:
            pass
