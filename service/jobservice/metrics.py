"""Prometheus metrics of one instance, in a registry of its own (several services may share
a process in tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from jobservice import __version__

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                     300, 900, 3600)


M = TypeVar("M", bound=MetricWrapperBase)


class ServiceMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Gauge("jobservice_jobs", "Jobs in the database by tenant and status "
                          "(refreshed periodically).", ["tenant", "status"], registry=r)
        self.transitions = Counter("jobservice_transitions", "Status changes made by this "
                                   "instance.", ["status"], registry=r)
        self.submissions = Counter("jobservice_submissions", "Submission messages by outcome "
                                   "(accepted, duplicate, rejected) and rejection reason.",
                                   ["outcome", "reason"], registry=r)
        self.controls = Counter("jobservice_control_requests", "Control messages by action "
                                "and outcome.", ["action", "outcome"], registry=r)
        self.rescued = Counter("jobservice_jobs_rescued", "Jobs of lost instances taken back "
                               "(requeued, or failed_lost for at-most-once job types).",
                               ["outcome"], registry=r)
        self.taken_back = Counter("jobservice_jobs_taken_back", "Jobs recorded as claimed or "
                                  "running by this instance that it did not hold (after a "
                                  "crash of the database server, or a claim whose reply was "
                                  "lost), taken back: requeued, or failed_lost.", ["outcome"],
                                  registry=r)
        self.requeued = Counter("jobservice_jobs_requeued", "Runs that ended back in QUEUED "
                                "for another attempt: retry (failed, retries left), "
                                "reschedule, abort_worker.", ["reason"], registry=r)
        self.worker_aborts = Counter("jobservice_worker_aborts", "AbortWorker raised by a job "
                                     "of this instance (it then drains and exits non-zero).",
                                     registry=r)
        self.lease_age = Gauge("jobservice_instance_lease_age_seconds", "Seconds since this "
                               "instance last renewed its lease.", registry=r)
        self.pool_capacity = Gauge("jobservice_pool_capacity", "Jobs this instance may run at "
                                   "once.", registry=r)
        self.pool_busy = Gauge("jobservice_pool_busy", "Pool slots taken (claimed or running).",
                               registry=r)
        self.run_duration = Histogram("jobservice_job_run_duration_seconds", "RUNNING to final "
                                      "status.", ["job_class"], buckets=_DURATION_BUCKETS,
                                      registry=r)
        self.queue_wait = Histogram("jobservice_job_queue_wait_seconds", "QUEUED to claimed.",
                                    ["job_class"], buckets=_DURATION_BUCKETS, registry=r)
        self.completion_writes = Counter("jobservice_completion_writes", "Completion "
                                         "statements written.", registry=r)
        self.events_published = Counter("jobservice_events_published", "Events committed by "
                                        "the broker.", registry=r)
        self.events_failed = Counter("jobservice_events_publish_failures", "Event batches "
                                     "whose publication failed (retried).", registry=r)
        self.outbox_backlog = Gauge("jobservice_outbox_backlog", "Events stored, not yet "
                                    "published (refreshed periodically).", registry=r)
        self.outbox_lag = Gauge("jobservice_outbox_lag_seconds", "Age of the oldest event not "
                                "yet published (relay lag; refreshed periodically).", registry=r)
        self.db_up = Gauge("jobservice_database_up", "1 while the database answers.",
                           registry=r)
        self.broker_up = Gauge("jobservice_broker_up", "1 while the broker connection is "
                               "open.", registry=r)
        self.build = Info("jobservice_build", "Version of this instance.", registry=r)
        self.build.info({"version": __version__})

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, remembered: `labels` checks and locks on every call
        (~2 of its 2.7 us an increment, measured), and the pool and the intake count several
        times a job."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child  # type: ignore[return-value]

    def counter_from(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Export a count kept elsewhere (e.g. the store's statement count) as a counter."""
        self.registry.register(_CallbackCounter(name, documentation, read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CallbackCounter(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())
