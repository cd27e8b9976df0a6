"""The only code that speaks AMQP (aio-pika, and aiormq under it on the hot paths): topology,
consumers, replies, dead letters and event publication in broker transactions."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from jobservice.amqp_tx import TransactionalPublisher, encode_events
from jobservice.config import Settings, mask_url
from jobservice.store import OutboxEvent

log = logging.getLogger(__name__)

ERROR_HEADER = "x-jobservice-error"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message, without AMQP library types leaking out of this module."""

    body: bytes
    reply_to: str | None
    correlation_id: str | None
    user_id: str | None
    headers: dict[str, Any]
    _channel: aiormq.abc.AbstractChannel
    _tag: int

    async def ack(self, multiple: bool = False) -> None:
        """Acknowledge this message; with `multiple`, also every earlier unacknowledged
        message of its channel (one frame for a whole batch)."""
        await self._channel.basic_ack(self._tag, multiple=multiple)

    @property
    def channel(self) -> object:
        """The channel it came on (a reconnection opens a new one)."""
        return self._channel

    @property
    def delivery_tag(self) -> int:
        return self._tag

    async def requeue(self) -> None:
        await self._channel.basic_reject(self._tag, requeue=True)


class Broker:
    """A robust connection (reconnects by itself) with one channel per concern."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._events: TransactionalPublisher | None = None
        # consumers as (aiormq channel, tag); their robust channels with the callback that
        # consumes again after a reconnection
        self._consumers: list[tuple[aiormq.abc.AbstractChannel, str]] = []
        self._consumer_channels: list[
            tuple[AbstractRobustChannel, Callable[[object], Awaitable[None]]]] = []

    async def connect(self) -> None:
        s = self._settings
        log.info("connecting to AMQP %s", mask_url(s.amqp_url))
        self._connection = await aio_pika.connect_robust(
            s.amqp_url, client_properties={"connection_name": f"jobservice {s.instance_id}"})
        channel = await self._connection.channel(publisher_confirms=True)
        assert isinstance(channel, AbstractRobustChannel)
        self._publish_channel = channel
        await channel.declare_exchange(s.events_exchange, aio_pika.ExchangeType.TOPIC,
                                       durable=True)
        events_channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(events_channel, AbstractRobustChannel)
        self._events = TransactionalPublisher(events_channel)
        for queue in (s.submit_queue, s.submit_dlq, s.control_queue, s.control_dlq):
            await channel.declare_queue(queue, durable=True)

    @property
    def connected(self) -> bool:
        # `connected` is cleared while the robust connection is re-establishing itself.
        return (self._connection is not None and not self._connection.is_closed
                and self._connection.connected.is_set())

    async def consume(self, queue_name: str, prefetch: int,
                      handler: Callable[[Delivery], Awaitable[None]]) -> None:
        """Deliver each message of `queue_name` to `handler`; it must ack (or requeue) it.

        Consumes on aiormq's channel under the robust one: aio-pika's consumer wraps each
        delivery in an IncomingMessage and a second task, ~5 % of the instance's CPU at full
        load. The robust channel restores its prefetch after a reconnection but not this
        consumer, so its reopen callback consumes again on the new channel."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=prefetch)
        await channel.declare_queue(queue_name, durable=True)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            props = message.header.properties
            tag = message.delivery.delivery_tag  # type: ignore[union-attr]
            await handler(Delivery(message.body, props.reply_to, props.correlation_id,
                                   props.user_id, dict(props.headers or {}),
                                   message.channel, tag or 0))

        async def start(robust: object = None) -> None:
            underlay = await channel.get_underlay_channel()
            ok = await underlay.basic_consume(queue_name, on_message, no_ack=False)
            self._consumers.append((underlay, ok.consumer_tag or ""))

        channel.reopen_callbacks.add(start)
        self._consumer_channels.append((channel, start))
        await start()

    async def stop_consuming(self) -> None:
        """Stop taking new messages; unacked ones go back to the queue on close."""
        for channel, start in self._consumer_channels:
            channel.reopen_callbacks.discard(start)
        self._consumer_channels = []
        consumers, self._consumers = self._consumers, []
        for underlay, tag in consumers:
            if underlay.is_closed:
                continue  # its messages went back to the queue with it
            try:
                await underlay.basic_cancel(tag)
            except Exception:  # broker away: the channel's close returns them anyway
                log.debug("cancel of consumer %s failed", tag, exc_info=True)

    async def publish_events(self, events: Sequence[OutboxEvent]) -> None:
        """Publish in one broker transaction (jobservice.amqp_tx); returns once the broker
        committed them all, raises otherwise (the relay keeps them in the outbox and publishes
        them again: consumers dedupe on event_id). In list order on one channel, so one job's
        events reach the exchange in transition order. Straight on aiormq: aio-pika's Message
        and Exchange wrappers cost about a tenth of the instance's CPU at full load."""
        assert self._events is not None
        exchange = self._settings.events_exchange
        await self._events.publish_encoded(
            lambda number, chunk: encode_events(exchange, events, number, chunk))

    async def reply(self, delivery: Delivery, payload: dict[str, Any]) -> None:
        if not delivery.reply_to:
            return
        assert self._publish_channel is not None
        await self._publish_channel.default_exchange.publish(
            aio_pika.Message(json.dumps(payload).encode(), content_type="application/json",
                             correlation_id=delivery.correlation_id),
            routing_key=delivery.reply_to, mandatory=False,
        )

    async def dead_letter(self, queue_name: str, delivery: Delivery, reason: str) -> None:
        """Copy the message to its dead-letter queue with the reason (confirmed)."""
        assert self._publish_channel is not None
        headers = {k: v for k, v in delivery.headers.items() if k != ERROR_HEADER}
        headers[ERROR_HEADER] = reason[:4000]
        await self._publish_channel.default_exchange.publish(
            aio_pika.Message(delivery.body, headers=headers, reply_to=delivery.reply_to,
                             correlation_id=delivery.correlation_id,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name, mandatory=False,
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
