"""Control requests: stop, enqueue, retry (CONTRACT section 4)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError

from jobservice.batching import retry_transient
from jobservice.bus import Broker, Delivery
from jobservice.config import Settings
from jobservice.intake import (
    Rejection,
    answer_and_ack,
    decode_json_object,
    validation_details,
)
from jobservice.logs import log_transition
from jobservice.metrics import ServiceMetrics
from jobservice.model import ControlMessage, JobStatus
from jobservice.pool import WorkerPool
from jobservice.store import Store

log = logging.getLogger(__name__)


class ControlHandler:
    def __init__(self, store: Store, broker: Broker, pool: WorkerPool, metrics: ServiceMetrics,
                 settings: Settings, on_changed: Callable[[], None]) -> None:
        self._store = store
        self._broker = broker
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._instance_id = settings.instance_id
        self._dlq = settings.control_dlq
        self._max_bytes = settings.max_message_bytes
        self._on_changed = on_changed

    async def receive(self, delivery: Delivery) -> None:
        data = decode_json_object(delivery.body, self._max_bytes)
        if isinstance(data, Rejection):
            await self._refuse(delivery, "invalid", data)
            return
        try:
            message = ControlMessage.model_validate(data)
        except ValidationError as exc:
            await self._refuse(delivery, str(data.get("action", "invalid")), Rejection(
                "invalid_message", "the control message does not match the schema",
                validation_details(exc)))
            return
        if self._settings.tenant_acl is not None:
            refused = await retry_transient("control access",
                                            lambda: self._check_access(message, delivery))
            if refused is not None:
                await self._refuse(delivery, message.action, refused)
                return
        answer = await retry_transient(f"control {message.action}", lambda: self._apply(message))
        if isinstance(answer, Rejection):
            await self._refuse(delivery, message.action, answer)
            return
        self._on_changed()
        self._metrics.controls.labels(message.action, "ok").inc()
        await answer_and_ack(self._broker, delivery, {"ok": True, "id": str(message.id),
                                               "status": answer.value})

    async def _check_access(self, message: ControlMessage, delivery: Delivery
                            ) -> Rejection | None:
        tenant = await self._store.job_tenant(message.id)
        if tenant is None:
            return _not_found(message)
        if not self._settings.may_use_tenant(delivery.user_id, tenant):
            return Rejection("forbidden", f"AMQP user {delivery.user_id!r} may not control "
                             f"jobs of tenant {tenant!r}", [], str(message.id))
        return None

    async def _apply(self, message: ControlMessage) -> JobStatus | Rejection:
        if message.action == "stop":
            stopped = await self._store.stop_job(message.id)
            if stopped is None:
                return _not_found(message)
            if stopped.aborted_now:
                self._metrics.transitions.labels(JobStatus.ABORTED.value).inc()
                log_transition(message.id, stopped.job.tenant, stopped.job.job_class, "ABORTED",
                               detail="stopped before it ran")
            elif stopped.status is JobStatus.RUNNING and stopped.instance_id == self._instance_id:
                self._pool.cancel(message.id, "stop")  # the NOTIFY will say so too
            return stopped.status
        change = self._store.enqueue_job if message.action == "enqueue" else self._store.retry_job
        job = await change(message.id)
        if job is not None:
            self._metrics.transitions.labels(JobStatus.QUEUED.value).inc()
            log_transition(job.id, job.tenant, job.job_class, "QUEUED", detail=message.action)
            return JobStatus.QUEUED
        current = await self._store.job_status(message.id)
        if current is None:
            return _not_found(message)
        needed = "PENDING" if message.action == "enqueue" else "FAILED or ABORTED"
        fits = {JobStatus.PENDING} if message.action == "enqueue" else {JobStatus.FAILED,
                                                                          JobStatus.ABORTED}
        if current in fits:  # the status fits: its dependencies hold it back
            return await self._waiting_for_dependencies(message)
        return Rejection("invalid_status",
                         f"job {message.id} is {current.value}; {message.action} needs {needed}",
                         [], str(message.id))

    async def _waiting_for_dependencies(self, message: ControlMessage) -> Rejection:
        if message.action == "enqueue":
            text = (f"job {message.id} waits for its dependencies; it is queued by itself "
                    "when they all SUCCEEDED")
        else:
            unfinished = await self._store.unfinished_dependencies(message.id)
            text = (f"job {message.id} depends on job(s) that have not SUCCEEDED ("
                    + ", ".join(f"{d} {s.value}" for d, s in unfinished)
                    + "); retry them: this job is queued again when they all succeed")
        return Rejection("invalid_status", text, [], str(message.id))

    async def _refuse(self, delivery: Delivery, action: str, rejection: Rejection) -> None:
        log.warning("control refused: %s", rejection.reason(), extra={"job_id": rejection.job_id})
        self._metrics.controls.labels(action[:20], rejection.code).inc()
        try:
            await self._broker.dead_letter(self._dlq, delivery, rejection.reason())
        except Exception as exc:
            log.warning("dead-lettering failed (%s); the message will be redelivered", exc)
            return
        # Exactly the contract's error reply (section 3): the job id is in the message.
        await answer_and_ack(self._broker, delivery, rejection.reply())


def _not_found(message: ControlMessage) -> Rejection:
    return Rejection("not_found", f"no job with id {message.id}", [], str(message.id))
