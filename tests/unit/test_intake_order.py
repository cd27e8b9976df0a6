"""Two intake batches in flight (Intake.run): the second is stored while the first's
statement runs (unless the first was full: a backlog), but acknowledgements go out in batch
order, so a multiple ack never covers a
message of an earlier batch that is not committed; a batch after a failed one acknowledges
nothing. Pure logic: fake deliveries, a fake store, a broker that is never asked to reply."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from jobservice.bus import Delivery
from jobservice.config import Settings
from jobservice.intake import Intake
from jobservice.jobs.registry import JobRegistry
from jobservice.metrics import ServiceMetrics
from jobservice.store import InsertOutcome, NewJob


class FakeChannel:
    """The channel the deliveries came on: records their acknowledgements in a test's log."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.log.append(f"ack {delivery_tag}{' multiple' if multiple else ''}")


# one channel per test's log (the log is kept here, so its id stays its own)
_channels: dict[int, FakeChannel] = {}


def delivery(tag: int, log: list[str], **fields: Any) -> Delivery:
    body = json.dumps({"id": str(uuid.uuid4()), "tenant": "t", "job_class": "jobservice.noop",
                       **fields}).encode()
    channel = _channels.setdefault(id(log), FakeChannel(log))
    return Delivery(body, None, None, None, {}, channel, tag)  # type: ignore[arg-type]


class SlowFirstStore:
    """Stores batches; the first one's statement only returns once `release` is set."""

    def __init__(self, log: list[str], fail_first: bool = False) -> None:
        self.log = log
        self.release = asyncio.Event()
        self.fail_first = fail_first
        self.calls = 0

    async def store_jobs(self, jobs: Sequence[NewJob], more_waiting: bool) -> InsertOutcome:
        self.calls += 1
        call = self.calls
        self.log.append(f"store {call} begins")
        if call == 1:
            await self.release.wait()
            if self.fail_first:
                raise RuntimeError("the first batch's statement failed")
        self.log.append(f"store {call} committed")
        return InsertOutcome(frozenset(j.id for j in jobs), {})


class NoReplies:
    async def reply(self, delivery: Delivery, payload: dict[str, Any]) -> None:
        """No reply_to in these messages: nothing to send."""


def make_intake(store: SlowFirstStore, batch_size: int = 3) -> Intake:
    """Batches of 2 below: not full, so the next one may start while one is open."""
    settings = Settings(intake_batch_size=batch_size)
    return Intake(None, NoReplies(), JobRegistry.default(),  # type: ignore[arg-type]
                  ServiceMetrics(), settings, store.store_jobs)


async def until(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def second_stored_while_first_open(store: SlowFirstStore) -> asyncio.Task[None]:
    """Batch 1 (tags 1-2) held open in its statement, batch 2 (tags 3-4) stored meanwhile;
    returns the intake's task."""
    intake = make_intake(store)
    runner = asyncio.create_task(intake.run())
    for tag in (1, 2):
        await intake.receive(delivery(tag, store.log))
    await until(lambda: "store 1 begins" in store.log)
    for tag in (3, 4):
        await intake.receive(delivery(tag, store.log))
    await until(lambda: "store 2 committed" in store.log)
    return runner


async def test_the_second_batch_is_stored_meanwhile_but_acked_after_the_first() -> None:
    log: list[str] = []
    store = SlowFirstStore(log)
    runner = await second_stored_while_first_open(store)
    assert not any(line.startswith("ack") for line in log)  # 2 waits for 1, which is open
    store.release.set()
    await until(lambda: "ack 4 multiple" in log)
    assert [line for line in log if line.startswith("ack")] == ["ack 2 multiple",
                                                                "ack 4 multiple"]
    runner.cancel()


async def test_after_a_failed_batch_the_next_acknowledges_nothing() -> None:
    log: list[str] = []
    store = SlowFirstStore(log, fail_first=True)
    runner = await second_stored_while_first_open(store)
    store.release.set()
    with pytest.raises(ExceptionGroup) as failure:  # the intake fails with the batch's error
        await asyncio.wait_for(runner, 5)
    assert failure.group_contains(RuntimeError, match="first batch")
    assert not any(line.startswith("ack") for line in log)


async def test_a_batch_with_dependencies_waits_for_the_batch_before_it() -> None:
    log: list[str] = []
    store = SlowFirstStore(log)
    intake = make_intake(store)
    intake._check_dependencies = _no_check  # type: ignore[method-assign]
    runner = asyncio.create_task(intake.run())
    for tag in (1, 2):
        await intake.receive(delivery(tag, log))
    await until(lambda: "store 1 begins" in log)
    await intake.receive(delivery(3, log, depends_on=[str(uuid.uuid4())]))
    for _ in range(50):
        await asyncio.sleep(0)
    assert "store 2 begins" not in log  # its dependency may be in the open batch
    store.release.set()
    await until(lambda: "ack 3 multiple" in log)
    assert log.index("store 1 committed") < log.index("store 2 begins")
    runner.cancel()


async def test_after_a_full_batch_the_next_waits_for_it() -> None:
    log: list[str] = []
    store = SlowFirstStore(log)
    intake = make_intake(store, batch_size=2)  # a backlog: one large statement at a time
    runner = asyncio.create_task(intake.run())
    for tag in (1, 2, 3, 4):
        await intake.receive(delivery(tag, log))
    await until(lambda: "store 1 begins" in log)
    for _ in range(50):
        await asyncio.sleep(0)
    assert "store 2 begins" not in log
    store.release.set()
    await until(lambda: "ack 4 multiple" in log)
    assert log.index("ack 2 multiple") < log.index("store 2 begins")
    runner.cancel()


async def _no_check(parsed: Any) -> Any:
    return parsed
