"""The finisher gathers items about to come (BatchWriter `coming`): jobs that end within a
couple of event-loop turns join the batch in progress instead of making one of their own;
nothing is waited for when none is coming."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jobservice.batching import BatchWriter


async def _batches_of(coming: int) -> list[list[str]]:
    batches: list[list[str]] = []

    async def write(items: Sequence[str]) -> None:
        batches.append(list(items))

    expected = {"n": coming}
    writer: BatchWriter[str, None] = BatchWriter("test", write, coming=lambda: expected["n"])
    runner = asyncio.create_task(writer.run())

    async def late_job(name: str) -> None:
        await asyncio.sleep(0)  # ends a turn after the first one was submitted
        expected["n"] -= 1
        await writer.submit(name)

    lates = [asyncio.create_task(late_job(f"late{n}")) for n in range(coming)]
    await writer.submit("first")
    await asyncio.gather(*lates)
    runner.cancel()
    return batches


async def test_items_about_to_come_join_the_batch() -> None:
    assert await _batches_of(2) == [["first", "late0", "late1"]]


async def test_nothing_coming_is_written_at_once() -> None:
    assert await _batches_of(0) == [["first"]]
