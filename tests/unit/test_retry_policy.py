"""Retry backoff and reschedule cap: pure decisions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobservice.jobs.base import Reschedule
from jobservice.retry import after_failure, backoff_delay, reschedule_allowed


def test_backoff_doubles_per_retry_within_equal_jitter_bounds() -> None:
    for retry, step in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)]:
        assert backoff_delay(retry, 0.5, 100, jitter=0.0) == step / 2
        assert backoff_delay(retry, 0.5, 100, jitter=1.0) == step
        assert step / 2 <= backoff_delay(retry, 0.5, 100, jitter=0.37) <= step


def test_backoff_is_capped_even_for_huge_retry_numbers() -> None:
    assert backoff_delay(5, 1.0, 10.0, jitter=1.0) == 10.0
    assert backoff_delay(100_000, 1.0, 10.0, jitter=0.0) == 5.0


def test_jitter_outside_zero_one_is_clamped_and_retry_numbers_start_at_one() -> None:
    assert backoff_delay(1, 2.0, 60, jitter=7.0) == 2.0
    assert backoff_delay(1, 2.0, 60, jitter=-1.0) == 1.0
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0, 60, jitter=0.5)


def test_no_retry_by_default_and_none_once_exhausted() -> None:
    assert not after_failure(0, 0, 1.0, 60).retry
    assert after_failure(0, 2, 1.0, 60, rand=lambda: 1.0).delay_s == 1.0
    assert after_failure(1, 2, 1.0, 60, rand=lambda: 1.0).delay_s == 2.0
    assert after_failure(2, 2, 1.0, 60).delay_s is None


def test_zero_backoff_retries_at_once() -> None:
    assert after_failure(0, 1, 0.0, 60).delay_s == 0.0


def test_reschedule_cap() -> None:
    assert reschedule_allowed(0, 3) and reschedule_allowed(2, 3)
    assert not reschedule_allowed(3, 3)
    assert not reschedule_allowed(0, 0)


def test_reschedule_takes_seconds_or_a_timedelta_and_refuses_negative_delays() -> None:
    assert Reschedule(2.5).delay_s == 2.5
    assert Reschedule(timedelta(minutes=1), "db not ready").delay_s == 60.0
    assert "db not ready" in str(Reschedule(1, "db not ready"))
    with pytest.raises(ValueError):
        Reschedule(-1)
    with pytest.raises(ValueError):
        Reschedule(float("nan"))
