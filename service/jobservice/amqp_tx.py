"""Many messages in one broker transaction, on a robust channel of aio-pika.

RabbitMQ's AMQP transactions are a batching feature: the broker takes responsibility for
every message of the batch when it answers `tx.commit` (routed, and stored in durable
queues). Per batch that is one round trip and no per-message acknowledgement, where publisher
confirms cost a confirmation (a frame, a future, a task) per message: measured with aiormq
at batches of 500, 19 us of client CPU per message instead of 95, and 17 us of broker CPU
instead of 55 (docs/benchmarks.md). Messages go out in the given order on one channel."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiormq
import pamqp.frame
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.encode import table_integer
from pamqp.header import ContentHeader


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    body: bytes
    exchange: str
    routing_key: str
    properties: aiormq.spec.Basic.Properties


@dataclass(frozen=True, slots=True)
class PersistentJsonMessage:
    """A persistent `application/json` message, optionally with integer headers, a message
    id and a user id: the shape of the events and of bulk submissions, encoded here straight
    into frame bytes (`encode`). pamqp's general marshalling (a validated object per frame
    and per property, type dispatch per field) was a tenth of the instance's CPU at full
    load; the bytes are the same (tests/unit)."""

    body: bytes
    exchange: str
    routing_key: str
    message_id: str | None = None
    headers: Mapping[str, int] | None = None
    user_id: str | None = None

    def encode(self, channel_number: int, max_body_size: int) -> bytes:
        """basic.publish, its content header and body frames (AMQP 0-9-1, section 4.2)."""
        method = b"".join((_BASIC_PUBLISH, _short_string(self.exchange),
                           _short_string(self.routing_key), b"\x00"))  # not mandatory/immediate
        # property flags and values, in the order of the wire (content-type, headers,
        # delivery-mode, message-id, user-id)
        flags = _CONTENT_TYPE_FLAG | _DELIVERY_MODE_FLAG
        values = [_APPLICATION_JSON]
        if self.headers is not None:
            flags |= _HEADERS_FLAG
            table = b"".join(_short_string(key) + table_integer(value)
                             for key, value in sorted(self.headers.items()))
            values += (_LONG.pack(len(table)), table)
        values.append(_PERSISTENT)
        if self.message_id is not None:
            flags |= _MESSAGE_ID_FLAG
            values.append(_short_string(self.message_id))
        if self.user_id is not None:
            flags |= _USER_ID_FLAG
            values.append(_short_string(self.user_id))
        header = _CONTENT_HEADER.pack(_BASIC_CLASS, 0, len(self.body), flags) + b"".join(values)
        parts: list[bytes] = []
        _add_frames(parts.append, channel_number, method, header, self.body, max_body_size)
        return b"".join(parts)


def _add_frames(add: Callable[[bytes], None], channel_number: int, method: bytes,
                header: bytes, body: bytes, max_body_size: int) -> None:
    """The method, content header and body frames of one publish, part by part."""
    frame_head = _FRAME_HEAD.pack
    add(frame_head(_METHOD_FRAME, channel_number, len(method)))
    add(method)
    add(_FRAME_END)
    add(frame_head(_HEADER_FRAME, channel_number, len(header)))
    add(header)
    add(_FRAME_END)
    for start in range(0, len(body), max_body_size):
        piece = body[start:start + max_body_size]
        add(frame_head(_BODY_FRAME, channel_number, len(piece)))
        add(piece)
        add(_FRAME_END)


_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_METHOD_FRAME, _HEADER_FRAME, _BODY_FRAME = 1, 2, 3
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
_BASIC_PUBLISH = struct.pack(">HHH", _BASIC_CLASS, 40, 0)  # class, method, reserved ticket
_CONTENT_HEADER = struct.Struct(">HHQH")  # class, weight, body size, property flags
_LONG = struct.Struct(">I")
# basic properties present (AMQP 0-9-1 basic class): bit 15 first
_CONTENT_TYPE_FLAG, _HEADERS_FLAG, _DELIVERY_MODE_FLAG = 1 << 15, 1 << 13, 1 << 12
_MESSAGE_ID_FLAG, _USER_ID_FLAG = 1 << 7, 1 << 4
_APPLICATION_JSON = b"\x10application/json"
_PERSISTENT = b"\x02"


class EventToPublish(Protocol):
    """One event as the relay reads it (jobservice.store.OutboxEvent has this shape)."""

    @property
    def event_id(self) -> object: ...  # its str() is the message id

    @property
    def seq(self) -> int: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> str: ...


_SEQ_HEADER = b"\x10x-jobservice-seq"  # the events' only header (a short string key)
_EVENT_FLAGS = _CONTENT_TYPE_FLAG | _HEADERS_FLAG | _DELIVERY_MODE_FLAG | _MESSAGE_ID_FLAG


def encode_events(exchange: str, events: Iterable[EventToPublish], channel_number: int,
                  max_body_size: int) -> bytes:
    """The frames of many events at once: the bytes of `PersistentJsonMessage(body,
    exchange, routing_key, str(event_id), {"x-jobservice-seq": seq}).encode(...)` for each
    (tests/unit), without two objects and a call per part and per event: 10.5-11.0 -> ~6 us
    an event (timeit, batches of 500), and the relay publishes four events per job."""
    method_prefix = _BASIC_PUBLISH + _short_string(exchange)
    content_header, long = _CONTENT_HEADER.pack, _LONG.pack
    parts: list[bytes] = []
    add = parts.append
    for event in events:
        body = event.body.encode()
        table = _SEQ_HEADER + table_integer(event.seq)
        header = b"".join((content_header(_BASIC_CLASS, 0, len(body), _EVENT_FLAGS),
                           _APPLICATION_JSON, long(len(table)), table, _PERSISTENT,
                           _short_string(str(event.event_id))))
        _add_frames(add, channel_number,
                    method_prefix + _short_string(event.routing_key) + b"\x00", header, body,
                    max_body_size)
    return b"".join(parts)


def _short_string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


class TransactionalPublisher:
    """Publishes batches in transactions on `channel` (opened without publisher confirms).
    A reconnection of the robust channel brings a new underlying channel, which is put in
    transaction mode before its first batch."""

    def __init__(self, channel: AbstractRobustChannel) -> None:
        self._channel = channel
        self._selected: aiormq.Channel | None = None

    async def publish(self, messages: Iterable[OutgoingMessage | PersistentJsonMessage]
                      ) -> None:
        """Returns once the broker committed them all; raises otherwise (then none of them
        was taken: publish them again).

        The whole batch is marshalled into one buffer and handed to the connection's writer
        at once (one socket write), instead of one `basic_publish` each: that call's
        timeout, lock and write-queue round per message cost as much as the marshalling.
        In transaction mode there is no delivery tag to track per message."""
        await self.publish_encoded(lambda number, chunk: b"".join(
            message.encode(number, chunk) if isinstance(message, PersistentJsonMessage)
            else _marshal(message, number, chunk) for message in messages))

    async def publish_encoded(self, encode: Callable[[int, int], bytes]) -> None:
        """`publish` of the frames `encode(channel number, max body size)` returns (the
        channel's number is known only here: a reconnection brings a new channel)."""
        channel = await self._channel.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        if channel is not self._selected:
            await channel.tx_select()
            self._selected = channel
        payload = encode(channel.number, channel.max_content_size)
        if payload:
            async with channel.lock:
                if channel.is_closed:
                    raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
                await channel.write_queue.put(ChannelFrame(payload=payload,
                                                           should_close=False))
        await channel.tx_commit()


def _marshal(message: OutgoingMessage, channel_number: int, max_body_size: int) -> bytes:
    """Any message, through pamqp."""
    frames: list[pamqp.frame.FrameTypes] = [
        aiormq.spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key),
        ContentHeader(properties=message.properties, body_size=len(message.body))]
    frames.extend(ContentBody(message.body[start:start + max_body_size])
                  for start in range(0, len(message.body), max_body_size))
    return b"".join(pamqp.frame.marshal(frame, channel_number) for frame in frames)
