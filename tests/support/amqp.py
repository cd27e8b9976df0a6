"""Test helpers around the broker and the HTTP endpoints."""

from __future__ import annotations

import asyncio
import urllib.request

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from tests.conftest import AMQP_URL


async def read_queue(queue_name: str, count: int, timeout: float = 10.0
                     ) -> list[AbstractIncomingMessage]:
    """Take `count` messages from a durable queue (acknowledged)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True)
        messages: list[AbstractIncomingMessage] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(messages) < count:
            message = await queue.get(fail=False)
            if message is None:
                if loop.time() > deadline:
                    raise TimeoutError(f"{len(messages)} of {count} messages in {queue_name}")
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            messages.append(message)
        return messages
    finally:
        await connection.close()


async def queue_depth(queue_name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        assert queue.declaration_result.message_count is not None
        return int(queue.declaration_result.message_count)
    finally:
        await connection.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


async def http_get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, label_text = key.partition("{")
        if metric != name:
            continue
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if got == want:
            return float(value)
    return 0.0
