"""The relay's batches are one at a time: at shutdown `drain` runs beside the relay's own
loop, and two interleaved reads would publish the same events twice."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import anyio
import anyio.lowlevel

from jobservice.metrics import ServiceMetrics
from jobservice.relay import OutboxRelay
from jobservice.store import OutboxEvent


class OutboxInMemory:
    """fetch_outbox's contract: delete `delete`, return the oldest others (after a yield, as
    a round trip would)."""

    def __init__(self, count: int) -> None:
        self.rows = [OutboxEvent(n, uuid.uuid4(), 1, "t.queued", "{}") for n in range(count)]

    async def fetch_outbox(self, limit: int, delete: Sequence[int] = ()) -> list[OutboxEvent]:
        await anyio.lowlevel.checkpoint()
        self.rows = [e for e in self.rows if e.id not in set(delete)]
        return self.rows[:limit]


class RecordingBroker:
    def __init__(self) -> None:
        self.published: list[int] = []

    async def publish_events(self, events: Sequence[OutboxEvent]) -> None:
        await anyio.lowlevel.checkpoint()
        self.published += [e.id for e in events]


async def test_two_callers_never_publish_a_batch_twice() -> None:
    outbox, broker = OutboxInMemory(5), RecordingBroker()
    relay = OutboxRelay(cast(Any, outbox), cast(Any, broker), cast(Any, None),
                        ServiceMetrics(), poll_interval_s=1.0, batch_size=2)

    async def drain() -> None:
        while await relay.publish_batch() > 0:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        tg.start_soon(drain)
    assert sorted(broker.published) == list(range(5))
    assert outbox.rows == []
