"""When a failed or rescheduled job runs again: pure decisions, no I/O (unit-tested alone)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def backoff_delay(retry: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Seconds before automatic retry number `retry` (1 for the first).

    Exponential (`base_s * 2**(retry - 1)`), capped at `cap_s`, with "equal jitter": the
    delay lies uniformly in [d/2, d] (`jitter` in [0, 1] picks where), so retries of many
    jobs that failed together spread out while each still waits at least half its step."""
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, not {retry}")
    jitter = min(1.0, max(0.0, jitter))
    # 2**exponent overflows a float long before it matters: cap the exponent first
    step = min(cap_s, base_s * 2.0 ** min(retry - 1, 1000))
    return step / 2 + jitter * step / 2


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """`delay_s` None: no retry left, the job ends FAILED (until kicked)."""

    delay_s: float | None

    @property
    def retry(self) -> bool:
        return self.delay_s is not None


def after_failure(failures: int, max_retries: int, base_s: float, cap_s: float,
                  rand: Callable[[], float] = random.random) -> RetryDecision:
    """A run failed after `failures` earlier automatic retries of the job."""
    if failures >= max_retries:
        return RetryDecision(None)
    return RetryDecision(backoff_delay(failures + 1, base_s, cap_s, rand()))


def reschedule_allowed(reschedules: int, max_reschedules: int) -> bool:
    """A run asked to be rescheduled after `reschedules` earlier reschedules of the job."""
    return reschedules < max_reschedules
