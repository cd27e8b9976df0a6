"""How an intake batch is acknowledged (pure logic, fake deliveries)."""

from __future__ import annotations

from jobservice.bus import Delivery
from jobservice.intake import plan_acks


def deliveries(channel: object, tags: range) -> list[Delivery]:
    return [Delivery(b"{}", None, None, None, {}, channel, t)  # type: ignore[arg-type]
            for t in tags]


def test_a_batch_all_done_on_one_channel_is_acked_once_through_its_last_message() -> None:
    channel = object()
    batch = deliveries(channel, range(1, 6))
    through, singles, unsafe = plan_acks(batch, batch, None)
    assert through is batch[-1] and singles == [] and unsafe is None


def test_a_message_left_to_come_back_stops_multiple_acks_on_its_channel() -> None:
    channel = object()
    batch = deliveries(channel, range(1, 6))
    done = batch[:2] + batch[3:]  # the third must be redelivered
    through, singles, unsafe = plan_acks(batch, done, None)
    assert through is None and singles == done and unsafe is channel
    later = deliveries(channel, range(6, 9))
    through, singles, unsafe = plan_acks(later, later, unsafe)
    assert through is None and singles == later and unsafe is channel  # would ack tag 3 too
    reconnected = deliveries(object(), range(1, 4))  # a new channel after reconnection
    through, singles, _ = plan_acks(reconnected, reconnected, unsafe)
    assert through is reconnected[-1] and singles == []
