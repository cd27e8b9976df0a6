"""The frames of events and bulk submissions, encoded by hand
(jobservice.amqp_tx.PersistentJsonMessage, and encode_events for a relay batch), are the
bytes pamqp marshals for the same publish, and pamqp reads them back."""

from __future__ import annotations

import uuid

import aiormq
import pamqp.frame
import pytest
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from jobservice.amqp_tx import PersistentJsonMessage, encode_events
from jobservice.store import OutboxEvent


def pamqp_bytes(message: PersistentJsonMessage, channel: int, max_body: int) -> bytes:
    properties = aiormq.spec.Basic.Properties(
        content_type="application/json", delivery_mode=2, message_id=message.message_id,
        headers=None if message.headers is None else dict(message.headers),
        user_id=message.user_id)
    frames: list[pamqp.frame.FrameTypes] = [
        aiormq.spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key),
        ContentHeader(properties=properties, body_size=len(message.body))]
    frames += [ContentBody(message.body[start:start + max_body])
               for start in range(0, len(message.body), max_body)]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31,
                                 2**32, 2**40])
def test_the_seq_header_of_any_size_encodes_as_pamqp_does(seq: int) -> None:
    message = PersistentJsonMessage(b'{"status": "RUNNING"}', "jobservice.events",
                                    "tenant-a.running", "6f1c0a54-1d7e-4f0e-9d61-0f5c3e0b8a11",
                                    {"x-jobservice-seq": seq})
    assert message.encode(1, 131_064) == pamqp_bytes(message, 1, 131_064)


@pytest.mark.parametrize("body", [b"", b"{}", b"x" * 1000, "é€".encode() * 700])
def test_bodies_empty_or_split_over_frames_encode_as_pamqp_does(body: bytes) -> None:
    message = PersistentJsonMessage(body, "ns.events", "Ünïcode-tenant.succeeded", "id-1",
                                    {"x-jobservice-seq": 4, "another": -3})
    assert message.encode(7, 512) == pamqp_bytes(message, 7, 512)


@pytest.mark.parametrize("user_id", [None, "producer-a", "é" * 40])
def test_a_bulk_submission_with_or_without_user_id_encodes_as_pamqp_does(
    user_id: str | None,
) -> None:
    message = PersistentJsonMessage(b'{"tenant": "a", "job_class": "jobservice.noop"}', "",
                                    "jobservice.submit", user_id=user_id)
    assert message.encode(2, 131_064) == pamqp_bytes(message, 2, 131_064)


def test_every_property_together_encodes_as_pamqp_does() -> None:
    message = PersistentJsonMessage(b"{}", "x", "y", "m-9", {"a": 1}, "u")
    assert message.encode(1, 131_064) == pamqp_bytes(message, 1, 131_064)


def test_pamqp_reads_the_frames_back() -> None:
    message = PersistentJsonMessage(b'{"n": 1}', "ex", "t.queued", "m-1",
                                    {"x-jobservice-seq": 1})
    data = message.encode(3, 131_064)
    read: list[object] = []
    while data:
        consumed, channel, frame = pamqp.frame.unmarshal(data)
        assert channel == 3
        read.append(frame)
        data = data[consumed:]
    publish, header, body = read
    assert isinstance(publish, aiormq.spec.Basic.Publish)
    assert (publish.exchange, publish.routing_key) == ("ex", "t.queued")
    assert isinstance(header, ContentHeader)
    assert header.body_size == 8
    assert header.properties.message_id == "m-1"
    assert header.properties.delivery_mode == 2
    assert header.properties.headers == {"x-jobservice-seq": 1}
    assert isinstance(body, ContentBody)
    assert body.value == b'{"n": 1}'


def test_a_name_over_255_bytes_is_refused() -> None:
    message = PersistentJsonMessage(b"{}", "ex", "t" * 256, "m", {})
    with pytest.raises(ValueError, match="255 bytes"):
        message.encode(1, 1000)


def test_a_batch_of_events_encodes_as_one_message_each() -> None:
    """The relay's path: the bytes of each event's PersistentJsonMessage, in order, with
    bodies empty, small, split over frames and not ASCII, and seq values of every size."""
    events = [OutboxEvent(7, uuid.UUID(f"6f1c0a54-0000-4f0e-9d61-{n:012d}"), seq,
                          f"tenant-{n}.running", body)
              for n, (seq, body) in enumerate([
                  (1, '{"status": "RUNNING"}'), (0, ""), (2**31, "x" * 1000),
                  (70_000, "é€" * 700), (-5, "{}")])]
    expected = b"".join(
        PersistentJsonMessage(e.body.encode(), "ns.events", e.routing_key, str(e.event_id),
                              {"x-jobservice-seq": e.seq}).encode(3, 512) for e in events)
    assert encode_events("ns.events", events, 3, 512) == expected
    assert encode_events("ns.events", events[:1], 3, 512) == pamqp_bytes(
        PersistentJsonMessage(events[0].body.encode(), "ns.events", events[0].routing_key,
                              str(events[0].event_id), {"x-jobservice-seq": 1}), 3, 512)
    assert encode_events("ns.events", [], 3, 512) == b""
