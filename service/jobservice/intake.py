"""Submissions: parse and validate each message, store a batch in one transaction, then
reply and acknowledge. Invalid input is dead-lettered with its reason; nothing is dropped."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import ValidationError

from jobservice.batching import retry_transient
from jobservice.bus import Broker, Delivery
from jobservice.config import Settings
from jobservice.jobs.registry import JobRegistry
from jobservice.logs import log_transition
from jobservice.metrics import ServiceMetrics
from jobservice.model import SubmitMessage
from jobservice.store import InsertOutcome, NewJob, Store
from jobservice.submission import SubmissionRefused, build_job, dependency_rejections

log = logging.getLogger(__name__)

# Intake batches handled at once: the next is stored while the previous statement runs.
BATCHES_IN_FLIGHT = 2


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
                     max_parameters: int = 1000, max_jobs: int = 100) -> NewJob | Rejection:
    """Pure validation of one submission: wire schema, the job type's parameters (and each
    step's config), the on_success submissions, and the dependencies that can be judged
    without the database (cycles). Unknown dependencies are checked by the intake."""
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
    try:
        return build_job(message, registry, max_parameters, max_jobs)
    except SubmissionRefused as refused:
        return Rejection(refused.code, str(refused), refused.details, job_id)


@dataclass(eq=False)
class BatchTurn:
    """One intake batch's place in line: `ended` once it was handled, `ok` if in full."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ok: bool = False

    async def handled(self) -> bool:
        """Wait for the batch to end; True if it was handled in full."""
        await self.ended.wait()
        return self.ok


class Intake:
    """Takes deliveries from the submit queue and stores them in batches."""

    def __init__(self, store: Store, broker: Broker, registry: JobRegistry,
                 metrics: ServiceMetrics, settings: Settings,
                 store_jobs: Callable[[Sequence[NewJob], bool], Awaitable[InsertOutcome]]
                 ) -> None:
        """`store_jobs(batch, more_waiting)` stores a batch and wakes whoever claims
        (Scheduler.store_jobs, which may also claim in the same round trip when no other
        submission waits)."""
        self._store = store
        self._broker = broker
        self._registry = registry
        self._metrics = metrics
        self._settings = settings
        self._dlq = settings.submit_dlq
        self._batch_size = settings.intake_batch_size
        self._store_jobs = store_jobs
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        # A channel on which a message was deliberately left unacknowledged (to come back):
        # no multiple ack there, it would take that message with it.
        self._unsafe_channel: object | None = None

    async def receive(self, delivery: Delivery) -> None:
        """Consumer callback: hand the message to the batch loop."""
        self._queue.put_nowait(delivery)

    async def run(self) -> None:
        """Take batches off the queue, up to BATCHES_IN_FLIGHT at once: the next batch is
        parsed and stored while the previous one's statement runs, so a submission does not
        wait for the batch before it to commit (submit -> RUNNING at 750/s: p50 5.8 -> 4.3
        ms). After a full batch the next waits (a backlog). What must stay in order does
        (`handle_batch`)."""
        in_flight = anyio.Semaphore(BATCHES_IN_FLIGHT)
        previous: BatchTurn | None = None
        async with anyio.create_task_group() as batches:
            while True:
                await in_flight.acquire()
                batch = [await self._queue.get()]
                while len(batch) < self._batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                turn = BatchTurn()
                batches.start_soon(self._handle_in_turn, batch, previous, turn, in_flight)
                previous = turn
                if len(batch) >= self._batch_size:
                    # a backlog: the next batch fills up meanwhile, and one large statement
                    # costs less than two half ones (-3.5 % jobs/s when they overlapped)
                    await turn.ended.wait()

    async def _handle_in_turn(self, batch: Sequence[Delivery], previous: BatchTurn | None,
                              turn: BatchTurn, in_flight: anyio.Semaphore) -> None:
        try:
            await self.handle_batch(batch, previous)
            turn.ok = True
        finally:
            in_flight.release()
            turn.ended.set()

    async def handle_batch(self, deliveries: Sequence[Delivery],
                           previous: BatchTurn | None = None) -> None:
        """Store, answer, acknowledge one batch. `previous` (the turn of the batch taken
        before this one) orders what must be: a batch that names
        dependencies or holds composite jobs is checked only after the batches before it
        committed (a job may depend on one submitted just before), and acknowledgements go
        out in batch order, so a multiple ack never covers a message of an earlier batch
        that is not committed yet; if that batch failed, this one acknowledges nothing
        (its messages come back and are stored again, idempotently)."""
        parsed = [(d, self._parse(d)) for d in deliveries]
        if previous is not None and any(
                isinstance(r, NewJob) and (r.external_dependencies or r.spec is not None)
                for _, r in parsed):
            if not await previous.handled():
                return
            previous = None
        parsed = await self._check_dependencies(parsed)
        unique: dict[uuid.UUID, NewJob] = {}
        for _, result in parsed:
            if isinstance(result, NewJob) and result.id not in unique:
                unique[result.id] = result
        outcome = InsertOutcome(frozenset(), {})
        if unique:
            outcome = await retry_transient(
                "store submissions",
                lambda: self._store_jobs(list(unique.values()), not self._queue.empty()))
        done = await self._answer_all(parsed, outcome)
        if previous is not None and not await previous.handled():
            return
        await self._ack_batch(deliveries, done)

    async def _answer_all(self, parsed: Sequence[tuple[Delivery, NewJob | Rejection]],
                          outcome: InsertOutcome) -> list[Delivery]:
        """Reply to (or dead-letter) each message; returns those done (to acknowledge)."""
        created, existing = outcome.created, outcome.existing
        answered: set[uuid.UUID] = set()
        done: list[Delivery] = []
        for delivery, result in parsed:
            if isinstance(result, Rejection):
                if await self._reject(delivery, result):
                    done.append(delivery)
                continue
            first_time = result.id in created and result.id not in answered
            answered.add(result.id)
            status = (outcome.statuses or {}).get(result.id, result.status) \
                if result.id in created else existing.get(result.id)
            m = self._metrics
            m.child(m.submissions, "accepted" if first_time else "duplicate", "").inc()
            if first_time and status is not None:
                m.child(m.transitions, status.value).inc()
                log_transition(result.id, result.tenant, result.job_class, status.value,
                               detail="submitted")
            if not delivery.reply_to or await answer(self._broker, delivery, {
                    "ok": True, "id": str(result.id),
                    "status": status.value if status else result.status.value}):
                done.append(delivery)  # (no reply asked: no reply built, ~3 us a job)
        return done

    async def _ack_batch(self, deliveries: Sequence[Delivery], done: list[Delivery]) -> None:
        """After the commit and the replies: acknowledge what is done (see `plan_acks`)."""
        through, singles, self._unsafe_channel = plan_acks(deliveries, done,
                                                           self._unsafe_channel)
        if through is not None:
            try:
                await through.ack(multiple=True)
            except Exception as exc:
                log.warning("ack failed (%s); the messages will be redelivered", exc)
        for delivery in singles:
            await ack(delivery)

    def _parse(self, delivery: Delivery) -> NewJob | Rejection:
        s = self._settings
        result = parse_submission(delivery.body, self._registry, s.max_message_bytes,
                                  s.max_parameters, s.max_jobs_per_submission)
        if isinstance(result, NewJob):
            for tenant in sorted(result.tenants):
                if not s.may_use_tenant(delivery.user_id, tenant):
                    return Rejection("forbidden", f"AMQP user {delivery.user_id!r} may not "
                                     f"submit for tenant {tenant!r}", [], str(result.id))
        return result

    async def _check_dependencies(
        self, parsed: list[tuple[Delivery, NewJob | Rejection]]
    ) -> list[tuple[Delivery, NewJob | Rejection]]:
        """Refuse submissions that depend on jobs that do not exist (nor come earlier in
        this batch). Jobs are never deleted, so what exists now still exists at commit."""
        jobs = [r for _, r in parsed if isinstance(r, NewJob)]
        wanted = {d for job in jobs for d in job.external_dependencies}
        if not wanted:
            return parsed
        existing = await retry_transient(
            "check dependencies", lambda: self._store.existing_job_ids(list(wanted)))
        refusals = iter(dependency_rejections(jobs, existing))
        checked: list[tuple[Delivery, NewJob | Rejection]] = []
        for delivery, result in parsed:
            if isinstance(result, NewJob):
                refusal = next(refusals)
                if refusal is not None:
                    result = Rejection(refusal.code, str(refusal), refusal.details,
                                       str(result.id))
            checked.append((delivery, result))
        return checked

    async def _reject(self, delivery: Delivery, rejection: Rejection) -> bool:
        """Dead-letter and answer; False when the message must come back (not acked)."""
        log.warning("submission refused: %s", rejection.reason(),
                    extra={"job_id": rejection.job_id, "error_code": rejection.code})
        self._metrics.submissions.labels("rejected", rejection.code).inc()
        try:
            await self._broker.dead_letter(self._dlq, delivery, rejection.reason())
        except Exception as exc:  # broker away: not acked, so it comes back and is refused again
            log.warning("dead-lettering failed (%s); the message will be redelivered", exc)
            return False
        return await answer(self._broker, delivery, rejection.reply())


def plan_acks(deliveries: Sequence[Delivery], done: Sequence[Delivery],
              unsafe_channel: object | None
              ) -> tuple[Delivery | None, list[Delivery], object | None]:
    """How to acknowledge a handled batch: one multiple ack (one frame) through its last
    message when all of it is done, all on one channel, and that channel holds no message
    left unacknowledged on purpose (it must come back; a multiple ack would take it along).
    Otherwise each message done on its own. Returns (ack-through message or None, messages
    to ack one by one, the channel that now holds a message left to come back)."""
    last = max(deliveries, key=lambda d: d.delivery_tag)
    if len(done) < len(deliveries):
        return None, list(done), last.channel
    if all(d.channel is last.channel for d in deliveries) and last.channel is not unsafe_channel:
        return last, [], unsafe_channel
    return None, list(done), unsafe_channel


async def answer_and_ack(broker: Broker, delivery: Delivery, reply: dict[str, Any]) -> None:
    """Reply (when asked) and acknowledge, after the effect is committed. If the broker went
    away meanwhile, the message is redelivered later and handled again (idempotently)."""
    if await answer(broker, delivery, reply):
        await ack(delivery)


async def answer(broker: Broker, delivery: Delivery, reply: dict[str, Any]) -> bool:
    """Reply when asked; False when that failed (then the message must not be acked)."""
    try:
        await broker.reply(delivery, reply)
    except Exception as exc:
        log.warning("reply failed (%s); the message will be redelivered", exc)
        return False
    return True


async def ack(delivery: Delivery) -> None:
    try:
        await delivery.ack()
    except Exception as exc:
        log.warning("ack failed (%s); the message will be redelivered", exc)
