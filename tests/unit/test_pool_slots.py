"""Pool slot bookkeeping: slots held for a claim in flight count against capacity but are not
shown as busy jobs on the gauge."""

from __future__ import annotations

from typing import Any, cast

from jobservice.jobs.registry import JobRegistry
from jobservice.metrics import ServiceMetrics
from jobservice.pool import WorkerPool


def _gauge(metrics: ServiceMetrics) -> float:
    value = metrics.registry.get_sample_value("jobservice_pool_busy")
    assert value is not None
    return value


def test_slots_held_for_a_claim_are_not_busy_jobs() -> None:
    metrics = ServiceMetrics()
    unused = cast(Any, None)  # the bookkeeping touches neither the store nor the writers
    pool = WorkerPool(4, "i-1", unused, JobRegistry(), unused, unused, metrics)
    pool.hold_for_claim(4)
    assert pool.free_slots == 0 and _gauge(metrics) == 0  # nothing claimed yet
    pool.settle_claim(4, 1)
    assert pool.free_slots == 3 and pool.busy == 1 and _gauge(metrics) == 1
    pool.hold_for_claim(3)
    assert pool.free_slots == 0 and _gauge(metrics) == 1
    pool.settle_claim(3, 0)  # an empty (or failed) claim gives every held slot back
    assert pool.free_slots == 3 and _gauge(metrics) == 1


def test_a_claim_cannot_hold_more_than_the_free_slots() -> None:
    unused = cast(Any, None)
    pool = WorkerPool(2, "i-1", unused, JobRegistry(), unused, unused, ServiceMetrics())
    pool.hold_for_claim(2)
    try:
        pool.hold_for_claim(1)
    except RuntimeError:
        pass
    else:
        raise AssertionError("held a slot beyond capacity")
