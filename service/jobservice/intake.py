"""Submissions: parse and validate each message, store a batch in one transaction, then
reply and acknowledge. Invalid input is dead-lettered with its reason; nothing is dropped."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from jobservice.batching import retry_transient
from jobservice.bus import Broker, Delivery
from jobservice.config import Settings
from jobservice.jobs.registry import JobRegistry
from jobservice.logs import log_transition
from jobservice.metrics import ServiceMetrics
from jobservice.model import JobStatus, SubmitMessage
from jobservice.store import NewJob, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    message: str
    details: list[Any] = field(default_factory=list)
    job_id: str | None = None

    def reason(self) -> str:
        return f"{self.code}: {self.message}"

    def reply(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "message": self.message,
                                       "details": self.details}}


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)]


def decode_json_object(body: bytes, max_bytes: int) -> dict[str, Any] | Rejection:
    """The message body as a JSON object, or why it is not one."""
    if len(body) > max_bytes:
        return Rejection("message_too_large",
                         f"message is {len(body)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejection("invalid_json", f"body is not UTF-8: {exc}")
    except json.JSONDecodeError as exc:
        return Rejection("invalid_json", f"body is not JSON: {exc}")
    except RecursionError:
        return Rejection("invalid_json", "JSON is nested too deeply")
    if not isinstance(data, dict):
        return Rejection("invalid_message", "the message must be a JSON object")
    return data


def parse_submission(body: bytes, registry: JobRegistry, max_bytes: int,
                     max_parameters: int = 1000) -> NewJob | Rejection:
    """Pure validation of one submission: wire schema, then the job type's parameters."""
    data = decode_json_object(body, max_bytes)
    if isinstance(data, Rejection):
        return data
    raw_id = data.get("id")
    job_id = raw_id if isinstance(raw_id, str) else None
    try:
        message = SubmitMessage.model_validate(data)
    except ValidationError as exc:
        return Rejection("invalid_message", "the submission does not match the schema",
                         validation_details(exc), job_id)
    if len(message.parameters) > max_parameters:
        return Rejection("invalid_parameters",
                         f"{len(message.parameters)} parameters; the limit is {max_parameters}",
                         [], job_id)
    if message.job_class not in registry:
        return Rejection("unknown_job_class",
                         f"job_class {message.job_class!r} is not registered here", [], job_id)
    job_type = registry.get(message.job_class)
    try:
        parameters = job_type.Parameters.model_validate(message.parameters)
    except ValidationError as exc:
        return Rejection("invalid_parameters",
                         f"parameters do not fit {message.job_class}", validation_details(exc),
                         job_id)
    return NewJob(
        id=message.id or uuid.uuid4(),
        tenant=message.tenant,
        job_class=message.job_class,
        status=JobStatus(message.initial_status),
        priority=message.priority,
        description=message.description,
        owner=message.owner,
        expiration_date=message.expiration_date,
        parameters=parameters.model_dump(mode="json"),
        at_most_once=job_type.run_at_most_once,
        max_retries=(job_type.max_retries if message.max_retries is None
                     else message.max_retries),
        retry_backoff_s=(job_type.retry_backoff_s if message.retry_backoff_s is None
                         else message.retry_backoff_s),
        run_after=message.run_after,
    )


class Intake:
    """Takes deliveries from the submit queue and stores them in batches."""

    def __init__(self, store: Store, broker: Broker, registry: JobRegistry,
                 metrics: ServiceMetrics, settings: Settings,
                 on_stored: Callable[[], None]) -> None:
        self._store = store
        self._broker = broker
        self._registry = registry
        self._metrics = metrics
        self._settings = settings
        self._dlq = settings.submit_dlq
        self._batch_size = settings.intake_batch_size
        self._on_stored = on_stored
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()

    async def receive(self, delivery: Delivery) -> None:
        """Consumer callback: hand the message to the batch loop."""
        self._queue.put_nowait(delivery)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self.handle_batch(batch)

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        parsed = [(d, self._parse(d)) for d in deliveries]
        unique: dict[uuid.UUID, NewJob] = {}
        for _, result in parsed:
            if isinstance(result, NewJob) and result.id not in unique:
                unique[result.id] = result
        created: frozenset[uuid.UUID] = frozenset()
        existing: dict[uuid.UUID, JobStatus] = {}
        if unique:
            outcome = await retry_transient(
                "store submissions", lambda: self._store.insert_jobs(list(unique.values())))
            created, existing = outcome.created, outcome.existing
            if created:
                self._on_stored()
        answered: set[uuid.UUID] = set()
        for delivery, result in parsed:
            if isinstance(result, Rejection):
                await self._reject(delivery, result)
                continue
            first_time = result.id in created and result.id not in answered
            answered.add(result.id)
            status = result.status if result.id in created else existing.get(result.id)
            self._metrics.submissions.labels(
                "accepted" if first_time else "duplicate", "").inc()
            if first_time:
                self._metrics.transitions.labels(result.status.value).inc()
                log_transition(result.id, result.tenant, result.job_class, result.status.value,
                               detail="submitted")
            await answer_and_ack(self._broker, delivery, {
                "ok": True, "id": str(result.id),
                "status": status.value if status else result.status.value})

    def _parse(self, delivery: Delivery) -> NewJob | Rejection:
        s = self._settings
        result = parse_submission(delivery.body, self._registry, s.max_message_bytes,
                                  s.max_parameters)
        if isinstance(result, NewJob) and not s.may_use_tenant(delivery.user_id, result.tenant):
            return Rejection("forbidden", f"AMQP user {delivery.user_id!r} may not submit for "
                             f"tenant {result.tenant!r}", [], str(result.id))
        return result

    async def _reject(self, delivery: Delivery, rejection: Rejection) -> None:
        log.warning("submission refused: %s", rejection.reason(),
                    extra={"job_id": rejection.job_id, "error_code": rejection.code})
        self._metrics.submissions.labels("rejected", rejection.code).inc()
        try:
            await self._broker.dead_letter(self._dlq, delivery, rejection.reason())
        except Exception as exc:  # broker away: not acked, so it comes back and is refused again
            log.warning("dead-lettering failed (%s); the message will be redelivered", exc)
            return
        await answer_and_ack(self._broker, delivery, rejection.reply())


async def answer_and_ack(broker: Broker, delivery: Delivery, reply: dict[str, Any]) -> None:
    """Reply (when asked) and acknowledge, after the effect is committed. If the broker went
    away meanwhile, the message is redelivered later and handled again (idempotently)."""
    try:
        await broker.reply(delivery, reply)
        await delivery.ack()
    except Exception as exc:
        log.warning("reply/ack failed (%s); the message will be redelivered", exc)
