"""Test helpers around the broker and the HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
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


class EventTap:
    """A durable queue bound to every event of a namespace: survives a broker restart, read
    at the end. `async with EventTap(ns) as tap: ...; events = await tap.drain(n)`."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self.queue_name = f"{namespace}.test-tap-{id(self):x}"

    async def __aenter__(self) -> EventTap:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(f"{self._namespace}.events",
                                                      aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(self.queue_name, durable=True)
            await queue.bind(exchange, "#")
        finally:
            await connection.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            await (await connection.channel()).queue_delete(self.queue_name)
        finally:
            await connection.close()

    async def drain(self, at_least: int, timeout: float = 30.0) -> list[tuple[str, str, int, str]]:
        """(job_id, event_id, seq, status) of every event received, at least `at_least`."""
        messages = await read_queue(self.queue_name, at_least, timeout)
        out = []
        for message in messages:
            body = json.loads(message.body)
            seq = message.headers["x-jobservice-seq"]
            assert isinstance(seq, int)
            out.append((body["job_id"], body["event_id"], seq, body["status"]))
        # whatever else is there (redeliveries)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.queue_name, durable=True)
            while (message := await queue.get(fail=False)) is not None:
                await message.ack()
                body = json.loads(message.body)
                seq = message.headers["x-jobservice-seq"]
                assert isinstance(seq, int)
                out.append((body["job_id"], body["event_id"], seq, body["status"]))
        finally:
            await connection.close()
        return out
