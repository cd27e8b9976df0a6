"""Batches published in one broker transaction (jobservice.amqp_tx), on the real RabbitMQ:
order, properties (of messages marshalled by pamqp and of events encoded by hand, mixed in
one batch), bodies larger than a frame and empty ones, and a new channel after a
reconnection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel

from jobservice.amqp_tx import OutgoingMessage, PersistentJsonMessage, TransactionalPublisher
from tests.conftest import AMQP_URL
from tests.support.amqp import read_queue


def _message(queue: str, body: bytes, n: int) -> OutgoingMessage:
    return OutgoingMessage(body, "", queue, aiormq.spec.Basic.Properties(
        content_type="application/json", delivery_mode=2, message_id=f"m{n}",
        headers={"x-jobservice-seq": n}))


def _either(queue: str, body: bytes, n: int) -> OutgoingMessage | PersistentJsonMessage:
    """The same message, marshalled by pamqp (odd n) or encoded by hand (even n, events)."""
    if n % 2:
        return _message(queue, body, n)
    return PersistentJsonMessage(body, "", queue, f"m{n}", {"x-jobservice-seq": n})


@asynccontextmanager
async def transactional(queue_name: str
                        ) -> AsyncIterator[tuple[aio_pika.abc.AbstractRobustConnection,
                                                 AbstractRobustChannel]]:
    """A robust connection and a channel without confirms, with `queue_name` declared."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.declare_queue(queue_name, durable=True)
        yield connection, channel
    finally:
        await connection.close()


async def test_a_batch_arrives_whole_in_order_with_its_properties(namespace: str) -> None:
    queue_name = f"{namespace}.tx-test"
    async with transactional(queue_name) as (_, channel):
        frame_max = (await channel.get_underlay_channel()).connection.connection_tune.frame_max
        bodies = [b'{"n": 0}', b"", b"x" * (3 * frame_max + 17), b'{"n": 3}']
        publisher = TransactionalPublisher(channel)
        await publisher.publish(_either(queue_name, body, n) for n, body in enumerate(bodies))
        # a channel that closed (as after a reconnection) is replaced by the robust channel
        # and put in transaction mode again before the next batch
        old = await channel.get_underlay_channel()
        await old.close()
        await channel.reopen()
        assert await channel.get_underlay_channel() is not old
        await publisher.publish([_either(queue_name, b'{"n": 4}', 4)])
        received = await read_queue(queue_name, 5)
        await channel.queue_delete(queue_name)
    assert [m.body for m in received] == [*bodies, b'{"n": 4}']
    assert [m.message_id for m in received] == [f"m{n}" for n in range(5)]
    assert [m.headers["x-jobservice-seq"] for m in received] == list(range(5))
    assert {m.content_type for m in received} == {"application/json"}
    assert {m.delivery_mode for m in received} == {aio_pika.DeliveryMode.PERSISTENT}


async def test_nothing_of_a_batch_is_taken_when_its_commit_fails(namespace: str) -> None:
    """Publishing to an exchange that does not exist closes the channel: the commit raises,
    and the broker took none of the batch (the relay then publishes it all again)."""
    queue_name = f"{namespace}.tx-test"
    async with transactional(queue_name) as (connection, channel):
        publisher = TransactionalPublisher(channel)
        good = _message(queue_name, b"{}", 0)
        bad = OutgoingMessage(b"{}", f"{namespace}.no-such-exchange", "x", good.properties)
        try:
            await publisher.publish([good, bad])
        except aiormq.exceptions.AMQPError:
            pass
        else:
            raise AssertionError("the commit should have failed")
        probe = await connection.channel()
        declared = await probe.declare_queue(queue_name, durable=True, passive=True)
        assert declared.declaration_result.message_count == 0
        await probe.queue_delete(queue_name)
