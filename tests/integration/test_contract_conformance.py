"""Black-box conformance to CONTRACT.md, the way an outside acceptance test talks to the
service: raw aio-pika on the default exchange (`<ns>.submit`, `<ns>.control`), a queue bound
to `<ns>.events`, the dead-letter queue, the tables of section 6 and the HTTP endpoints.
Nothing here goes through `jobservice.client` or the pydantic wire models."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from jobservice.config import Settings
from tests.conftest import AMQP_URL, PG_ADMIN_URL, ServiceFactory
from tests.support.amqp import http_get, read_queue
from tests.support.processes import spawn_ready

STATUSES = {"PENDING", "QUEUED", "TO_BE_RUN", "RUNNING", "SUCCEEDED", "FAILED", "ABORTED"}
FINAL = {"SUCCEEDED", "FAILED", "ABORTED"}
EVENT_FIELDS = {"event_id", "job_id", "tenant", "job_class", "status", "previous_status",
                "percent_completed", "at", "owner", "error", "result"}
# Added by the composite-jobs issue (README "Composite jobs"); nothing else may appear.
EVENT_EXTENSION_FIELDS = {"context", "message"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
Json = dict[str, Any]


class Producer:
    """Publishes persistent JSON messages to the default exchange and collects replies on an
    exclusive queue by correlation id."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self._replies: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

    async def __aenter__(self) -> Producer:
        self._connection = await aio_pika.connect(AMQP_URL)
        self._channel = await self._connection.channel()
        reply_queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await reply_queue.consume(self._on_reply, no_ack=True)
        self.reply_to = reply_queue.name
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._replies.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message)

    async def publish(self, queue: str, body: bytes, *, reply: bool = True
                      ) -> AbstractIncomingMessage | None:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future())
        if reply:
            self._replies[correlation_id] = future
        await self._channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             reply_to=self.reply_to if reply else None,
                             correlation_id=correlation_id if reply else None),
            routing_key=f"{self.ns}.{queue}")
        if not reply:
            return None
        message = await asyncio.wait_for(future, 15)
        assert message.correlation_id == correlation_id
        return message

    async def submit(self, body: Json | bytes) -> Json:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message = await self.publish("submit", raw)
        assert message is not None
        assert message.content_type == "application/json"
        reply = json.loads(message.body)
        assert isinstance(reply, dict)
        return reply

    async def control(self, action: str, job_id: str) -> Json:
        message = await self.publish("control",
                                     json.dumps({"action": action, "id": job_id}).encode())
        assert message is not None
        reply = json.loads(message.body)
        assert isinstance(reply, dict)
        return reply


class Subscriber:
    """An exclusive queue bound to the events exchange with the given routing keys."""

    def __init__(self, namespace: str, *keys: str) -> None:
        self.exchange_name = f"{namespace}.events"
        self.keys = keys
        self.received: asyncio.Queue[tuple[AbstractIncomingMessage, Json]] = asyncio.Queue()
        self._unread: dict[str, list[tuple[AbstractIncomingMessage, Json]]] = {}
        self.log: list[tuple[str, str]] = []  # (job_id, routing key) in arrival order

    async def __aenter__(self) -> Subscriber:
        self._connection = await aio_pika.connect(AMQP_URL)
        channel = await self._connection.channel()
        # The contract: a durable topic exchange (declaring it differently would fail).
        exchange = await channel.declare_exchange(self.exchange_name,
                                                  aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in self.keys:
            await queue.bind(exchange, key)
        await queue.consume(self._on_event, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        self.log.append((event["job_id"], message.routing_key or ""))
        await self.received.put((message, event))

    async def until(self, job_id: str, status: str, timeout: float = 20.0
                    ) -> list[tuple[AbstractIncomingMessage, Json]]:
        """This job's events (status and progress) not read yet, until it reaches `status`;
        other jobs' events are kept for their own `until`."""
        pending = self._unread.setdefault(job_id, [])
        seen: list[tuple[AbstractIncomingMessage, Json]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not pending:
                message, event = await asyncio.wait_for(self.received.get(),
                                                        max(0.01, deadline - loop.time()))
                self._unread.setdefault(event["job_id"], []).append((message, event))
                continue
            message, event = pending.pop(0)
            seen.append((message, event))
            if event["status"] == status and message.routing_key != f"{event['tenant']}.progress":
                return seen

    def unread(self, job_id: str) -> list[tuple[AbstractIncomingMessage, Json]]:
        """Events of `job_id` received (so far) and not returned by `until`."""
        while not self.received.empty():
            message, event = self.received.get_nowait()
            self._unread.setdefault(event["job_id"], []).append((message, event))
        return self._unread.get(job_id, [])


def check_event(message: AbstractIncomingMessage, event: Json) -> None:
    """Section 5: the shape, the types and the message properties of one event."""
    assert EVENT_FIELDS <= set(event) <= EVENT_FIELDS | EVENT_EXTENSION_FIELDS, sorted(event)
    for key in ("event_id", "job_id"):
        assert str(uuid.UUID(event[key])) == event[key]
    assert message.message_id == event["event_id"]
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert event["status"] in STATUSES
    assert event["previous_status"] is None or event["previous_status"] in STATUSES
    assert type(event["percent_completed"]) is int and 0 <= event["percent_completed"] <= 100
    assert isinstance(event["at"], str) and RFC3339_UTC.match(event["at"]), event["at"]
    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=5)
    assert event["owner"] is None or isinstance(event["owner"], str)
    if event["error"] is not None:
        assert set(event["error"]) == {"type", "message", "stack_trace"}
        assert isinstance(event["error"]["type"], str)
    routing_suffix = message.routing_key.rpartition(".")[2] if message.routing_key else ""
    assert message.routing_key == f"{event['tenant']}.{routing_suffix}"
    assert routing_suffix in {"progress", event["status"].lower()}


def statuses(events: list[tuple[AbstractIncomingMessage, Json]]) -> list[str]:
    """The status changes among `events` (progress events left out)."""
    return [e["status"] for m, e in events if m.routing_key != f"{e['tenant']}.progress"]


def check_transition_chain(events: list[tuple[AbstractIncomingMessage, Json]]) -> None:
    """previous_status is null on the first event and the prior status after that."""
    previous: str | None = None
    for message, event in events:
        check_event(message, event)
        if message.routing_key == f"{event['tenant']}.progress":
            assert event["status"] == previous
            continue
        assert event["previous_status"] == previous, (previous, event)
        previous = event["status"]


@pytest.fixture
async def producer(namespace: str) -> AsyncIterator[Producer]:
    async with Producer(namespace) as p:
        yield p


def ok_reply(job_id: str, status: str) -> Json:
    return {"ok": True, "id": job_id, "status": status}


def check_error_reply(reply: Json, code: str | None = None) -> str:
    assert set(reply) == {"ok", "error"}, reply
    assert reply["ok"] is False
    error = reply["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    if code is not None:
        assert error["code"] == code, reply
    return str(error["code"])


# -- section 1: configuration ------------------------------------------------------------

CONTRACT_DEFAULTS: dict[str, tuple[str, Any, str, Any]] = {
    # env variable: (Settings field, default, a value to set, its parsed value)
    "JOBSERVICE_DATABASE_URL": ("database_url", "postgresql://postgres@127.0.0.1:5432/jobservice",
                                "postgresql://u@db:5432/x", "postgresql://u@db:5432/x"),
    "JOBSERVICE_AMQP_URL": ("amqp_url", "amqp://guest:guest@127.0.0.1:5672/",
                            "amqp://a:b@mq:5672/v", "amqp://a:b@mq:5672/v"),
    "JOBSERVICE_NAMESPACE": ("namespace", "jobservice", "other", "other"),
    "JOBSERVICE_POOL_SIZE": ("pool_size", 8, "3", 3),
    "JOBSERVICE_COMPLETION_UPDATE_RATE_MS": ("completion_update_rate_ms", 1000, "250", 250),
    "JOBSERVICE_HTTP_PORT": ("http_port", 8080, "9090", 9090),
    "JOBSERVICE_INSTANCE_ID": ("instance_id", None, "pod-7", "pod-7"),
    "JOBSERVICE_HEARTBEAT_S": ("heartbeat_s", 5, "2", 2),
    "JOBSERVICE_LEASE_TIMEOUT_S": ("lease_timeout_s", 30, "60", 60),
    "JOBSERVICE_SHUTDOWN_GRACE_S": ("shutdown_grace_s", 25, "10", 10),
    "JOBSERVICE_COMMAND_JOBS": ("command_jobs", False, "true", True),
}


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("JOBSERVICE_"):
            monkeypatch.delenv(name)


def test_settings_defaults_are_the_contract_s(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    settings = Settings()
    for variable, (field, default, _, _) in CONTRACT_DEFAULTS.items():
        if field == "instance_id":
            assert settings.instance_id == f"{socket.gethostname()}-{os.getpid()}"
            continue
        assert getattr(settings, field) == default, variable
    assert settings.submit_queue == "jobservice.submit"
    assert settings.submit_dlq == "jobservice.submit.dlq"
    assert settings.control_queue == "jobservice.control"
    assert settings.events_exchange == "jobservice.events"


@pytest.mark.parametrize("variable", sorted(CONTRACT_DEFAULTS))
def test_settings_read_the_contract_s_variable_names(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    _clean_environment(monkeypatch)
    field, _, raw, parsed = CONTRACT_DEFAULTS[variable]
    monkeypatch.setenv(variable, raw)
    assert getattr(Settings(), field) == parsed


# -- section 3: submitting -----------------------------------------------------------------

async def test_full_submission_reply_tables_and_events_of_a_sleep_job(
    start_service: ServiceFactory, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    await start_service(completion_update_rate_ms=50)
    job_id = str(uuid.uuid4())
    submission = {
        "id": job_id, "tenant": "project-a", "job_class": "jobservice.sleep", "priority": 10,
        "description": "nightly import", "owner": "alice",
        "parameters": {"seconds": 1.0, "ticks": 4},
        "expiration_date": "2099-12-01T00:00:00Z", "initial_status": "QUEUED",
    }
    async with Subscriber(namespace, "project-a.#") as events:
        assert await producer.submit(submission) == ok_reply(job_id, "QUEUED")
        seen = await events.until(job_id, "SUCCEEDED")
    check_transition_chain(seen)
    assert statuses(seen) == ["QUEUED", "TO_BE_RUN", "RUNNING", "SUCCEEDED"]
    for _, event in seen:
        assert (event["job_id"], event["tenant"], event["job_class"], event["owner"]) == (
            job_id, "project-a", "jobservice.sleep", "alice")
        assert event["error"] is None
    progress = [e for m, e in seen if m.routing_key == "project-a.progress"]
    assert progress, "ticks advance the completion: progress events on <tenant>.progress"
    assert all(e["status"] == "RUNNING" for e in progress)
    percents = [e["percent_completed"] for e in progress]
    assert percents == sorted(percents) and set(percents) <= {25, 50, 75, 100}
    final = seen[-1][1]
    assert final["percent_completed"] == 100 and final["result"] is not None
    assert seen[0][0].routing_key == "project-a.queued"
    # at is increasing along the transitions
    ats = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for _, e in seen]
    assert ats == sorted(ats)

    row = await db.fetchrow(
        "SELECT id, tenant, status, priority, job_class, percent_completed, expiration_date, "
        "description, owner, created_at, updated_at, error_type, error_message, stack_trace, "
        "result FROM t_job_info WHERE id = $1", uuid.UUID(job_id))
    assert row is not None
    assert (row["tenant"], row["status"], row["priority"], row["job_class"],
            row["percent_completed"], row["description"], row["owner"]) == (
        "project-a", "SUCCEEDED", 10, "jobservice.sleep", 100, "nightly import", "alice")
    assert row["expiration_date"] == datetime(2099, 12, 1, tzinfo=UTC)
    assert row["error_type"] is None and row["result"] is not None
    assert await db.fetchval(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 't_job_info' "
        "AND column_name = 'id'") == "uuid"
    parameters = await db.fetch("SELECT name, value FROM t_job_parameters WHERE job_id = $1",
                                uuid.UUID(job_id))
    assert {r["name"]: json.loads(r["value"]) for r in parameters} == {"seconds": 1.0,
                                                                       "ticks": 4}
    assert await db.fetchval(
        "SELECT data_type FROM information_schema.columns WHERE table_name = "
        "'t_job_parameters' AND column_name = 'value'") == "jsonb"


async def test_minimal_submission_gets_a_generated_id_and_defaults(
    service: object, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    async with Subscriber(namespace, "*.succeeded") as events:
        reply = await producer.submit({"tenant": "t1", "job_class": "jobservice.noop"})
        assert set(reply) == {"ok", "id", "status"}
        assert reply["ok"] is True and reply["status"] == "QUEUED"
        job_id = reply["id"]
        assert str(uuid.UUID(job_id)) == job_id
        [(message, event)] = await events.until(job_id, "SUCCEEDED")
    check_event(message, event)
    assert message.routing_key == "t1.succeeded"
    assert event["previous_status"] == "RUNNING" and event["owner"] is None
    row = await db.fetchrow("SELECT priority, description, owner, expiration_date "
                            "FROM t_job_info WHERE id = $1", uuid.UUID(job_id))
    assert row is not None and tuple(row) == (0, None, None, None)


async def test_resubmitting_an_id_changes_nothing(
    service: object, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    job_id = str(uuid.uuid4())
    first = {"id": job_id, "tenant": "t1", "job_class": "jobservice.noop"}
    async with Subscriber(namespace, "t1.pending") as events:
        assert await producer.submit({**first, "initial_status": "PENDING"}) == ok_reply(
            job_id, "PENDING")
        await events.until(job_id, "PENDING")
        again = await producer.submit({**first, "description": "changed", "priority": 5})
        assert again == ok_reply(job_id, "PENDING")
    row = await db.fetchrow("SELECT status, description, priority FROM t_job_info "
                            "WHERE id = $1", uuid.UUID(job_id))
    assert row is not None and tuple(row) == ("PENDING", None, 0)
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 1


async def test_pending_job_waits_for_enqueue_then_runs(
    service: object, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    job_id = str(uuid.uuid4())
    async with Subscriber(namespace, "#") as events:
        reply = await producer.submit({"id": job_id, "tenant": "t1",
                                       "job_class": "jobservice.noop",
                                       "initial_status": "PENDING"})
        assert reply == ok_reply(job_id, "PENDING")
        [(message, created)] = await events.until(job_id, "PENDING")
        assert message.routing_key == "t1.pending" and created["previous_status"] is None
        # a second, queued job runs through while the pending one stays put
        other = await producer.submit({"tenant": "t1", "job_class": "jobservice.noop"})
        await events.until(other["id"], "SUCCEEDED")
        assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                                 uuid.UUID(job_id)) == "PENDING"
        assert await producer.control("enqueue", job_id) == ok_reply(job_id, "QUEUED")
        seen = await events.until(job_id, "SUCCEEDED")
    check_transition_chain([(message, created), *seen])
    assert statuses(seen) == ["QUEUED", "TO_BE_RUN", "RUNNING", "SUCCEEDED"]


BAD_SUBMISSIONS: list[tuple[Any, str]] = [
    (b"{not json", "invalid_json"),
    ([1, 2], "invalid_message"),
    ({"job_class": "jobservice.noop"}, "invalid_message"),
    ({"tenant": "t1"}, "invalid_message"),
    ({"tenant": "", "job_class": "jobservice.noop"}, "invalid_message"),
    ({"tenant": "a" * 64, "job_class": "jobservice.noop"}, "invalid_message"),
    ({"tenant": "a.b", "job_class": "jobservice.noop"}, "invalid_message"),
    ({"tenant": "a b", "job_class": "jobservice.noop"}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "id": "not-a-uuid"}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "priority": -1}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "priority": 1001}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "priority": 1.5}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "priority": "10"}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "priority": True}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "description": "d" * 1001},
     "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "owner": "o" * 1001}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "parameters": [1]}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "expiration_date": "tomorrow"},
     "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "expiration_date": 1893456000},
     "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "initial_status": "RUNNING"},
     "invalid_message"),
    # the fields the contract names for later (now implemented): malformed values
    *[({"tenant": "t1", "job_class": "jobservice.noop", name: value}, "invalid_message")
      for name, value in (("steps", "extract"), ("selected_elements", [{"type": 1}]),
                          ("environment", []), ("depends_on", ["not-a-uuid"]),
                          ("on_success", {}), ("context", 5), ("max_retries", -1),
                          ("retry_backoff_s", "fast"), ("run_after", "soon"))],
    ({"tenant": "t1", "job_class": "no.such.job"}, "unknown_job_class"),
    ({"tenant": "t1", "job_class": "jobservice.sleep",
      "parameters": {"seconds": 1}, "max_retries": "2"}, "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "run_after": 1893456000},
     "invalid_message"),
    ({"tenant": "t1", "job_class": "jobservice.command", "parameters": {"argv": ["true"]}},
     "unknown_job_class"),
    ({"tenant": "t1", "job_class": "jobservice.sleep"}, "invalid_parameters"),
    ({"tenant": "t1", "job_class": "jobservice.sleep", "parameters": {"seconds": -1}},
     "invalid_parameters"),
    ({"tenant": "t1", "job_class": "jobservice.sleep",
      "parameters": {"seconds": 1, "ticks": 0}}, "invalid_parameters"),
    ({"tenant": "t1", "job_class": "jobservice.fail", "parameters": {"message": 3}},
     "invalid_parameters"),
    ({"tenant": "t1", "job_class": "jobservice.noop", "parameters": {"x": 1}},
     "invalid_parameters"),
]


async def test_invalid_submissions_are_answered_dead_lettered_and_change_nothing(
    service: object, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    for body, code in BAD_SUBMISSIONS:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = await producer.submit(raw)
        check_error_reply(reply, code)
        [dead] = await read_queue(f"{namespace}.submit.dlq", 1)
        assert dead.body == raw
        reason = dead.headers["x-jobservice-error"]
        assert isinstance(reason, str) and code in reason, (body, reason)
    # without reply_to: dead-lettered all the same, nothing to answer
    await producer.publish("submit", b"[]", reply=False)
    [dead] = await read_queue(f"{namespace}.submit.dlq", 1)
    assert dead.body == b"[]"
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0
    assert await db.fetchval("SELECT count(*) FROM t_job_parameters") == 0
    # the boundaries are accepted, and the service still serves
    for extra in ({"priority": 0}, {"priority": 1000}, {"tenant": "A-z_0" * 12 + "abc"},
                  {"description": "d" * 1000, "owner": "o" * 1000}):
        reply = await producer.submit({"tenant": "t1", "job_class": "jobservice.noop",
                                       "initial_status": "PENDING", **extra})
        assert reply["ok"] is True and reply["status"] == "PENDING", (extra, reply)


async def test_a_refused_message_is_never_dropped_without_reply_to(
    service: object, producer: Producer, namespace: str
) -> None:
    await producer.publish("submit", json.dumps({"tenant": "t1"}).encode(), reply=False)
    [dead] = await read_queue(f"{namespace}.submit.dlq", 1)
    assert str(dead.headers["x-jobservice-error"]).startswith("invalid_message")


# -- section 4: control ------------------------------------------------------------------

async def test_stop_of_queued_running_and_final_jobs(
    start_service: ServiceFactory, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    await start_service(pool_size=1)
    async with Subscriber(namespace, "t1.#") as events:
        running = (await producer.submit({"tenant": "t1", "job_class": "jobservice.sleep",
                                          "parameters": {"seconds": 300}}))["id"]
        await events.until(running, "RUNNING")
        queued = (await producer.submit({"tenant": "t1", "job_class": "jobservice.noop"}))["id"]
        pending = (await producer.submit({"tenant": "t1", "job_class": "jobservice.noop",
                                          "initial_status": "PENDING"}))["id"]

        assert await producer.control("stop", queued) == ok_reply(queued, "ABORTED")
        seen = await events.until(queued, "ABORTED")
        assert statuses(seen) == ["QUEUED", "ABORTED"]
        check_transition_chain(seen)
        assert seen[-1][0].routing_key == "t1.aborted"

        assert await producer.control("stop", pending) == ok_reply(pending, "ABORTED")
        seen = await events.until(pending, "ABORTED")
        assert statuses(seen) == ["PENDING", "ABORTED"]

        reply = await producer.control("stop", running)  # asynchronous
        assert set(reply) == {"ok", "id", "status"} and reply["ok"] is True
        assert reply["id"] == running
        seen = await events.until(running, "ABORTED")
        assert seen[-1][1]["previous_status"] == "RUNNING"
        check_event(*seen[-1])

        done = (await producer.submit({"tenant": "t1", "job_class": "jobservice.noop"}))["id"]
        await events.until(done, "SUCCEEDED")
        assert await producer.control("stop", done) == ok_reply(done, "SUCCEEDED")
        assert await producer.control("stop", queued) == ok_reply(queued, "ABORTED")
        # no event for what was left as it was (events leave in transition order: anything
        # the stops caused would arrive before the next job's first event)
        marker = (await producer.submit({"tenant": "t1", "job_class": "jobservice.noop"}))["id"]
        await events.until(marker, "QUEUED")
        assert events.unread(done) == [] and events.unread(queued) == []
    assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1",
                             uuid.UUID(done)) == "SUCCEEDED"


async def test_failed_and_aborted_jobs_are_retried_as_new_attempts(
    service: object, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    async with Subscriber(namespace, "*.failed", "*.queued", "*.aborted") as events:
        failed = (await producer.submit({"tenant": "t2", "job_class": "jobservice.fail",
                                         "parameters": {"message": "disk on fire"}}))["id"]
        seen = await events.until(failed, "FAILED")
        message, event = seen[-1]
        check_event(message, event)
        assert message.routing_key == "t2.failed"
        assert event["previous_status"] == "RUNNING" and event["result"] is None
        assert event["error"]["message"] == "disk on fire"
        assert isinstance(event["error"]["stack_trace"], str) and event["error"]["stack_trace"]
        row = await db.fetchrow("SELECT status, error_type, error_message, stack_trace "
                                "FROM t_job_info WHERE id = $1", uuid.UUID(failed))
        assert row is not None and row["status"] == "FAILED"
        assert row["error_message"] == "disk on fire" and row["stack_trace"]

        assert await producer.control("retry", failed) == ok_reply(failed, "QUEUED")
        seen = await events.until(failed, "FAILED")
        assert statuses(seen) == ["QUEUED", "FAILED"]
        assert seen[0][1]["previous_status"] == "FAILED" and seen[0][1]["error"] is None

        aborted = (await producer.submit({"tenant": "t2", "job_class": "jobservice.noop",
                                          "initial_status": "PENDING"}))["id"]
        await producer.control("stop", aborted)
        await events.until(aborted, "ABORTED")
        assert await producer.control("retry", aborted) == ok_reply(aborted, "QUEUED")
        [(message, event)] = await events.until(aborted, "QUEUED")
        assert event["previous_status"] == "ABORTED" and message.routing_key == "t2.queued"


async def test_refused_controls_get_an_error_reply(
    service: object, producer: Producer, namespace: str
) -> None:
    async with Subscriber(namespace, "*.succeeded") as events:
        done = (await producer.submit({"tenant": "t1", "job_class": "jobservice.noop"}))["id"]
        await events.until(done, "SUCCEEDED")
    pending = (await producer.submit({"tenant": "t1", "job_class": "jobservice.noop",
                                      "initial_status": "PENDING"}))["id"]
    check_error_reply(await producer.control("retry", done))      # SUCCEEDED: not retried
    check_error_reply(await producer.control("retry", pending))   # PENDING: not retried
    check_error_reply(await producer.control("enqueue", done))    # only PENDING
    check_error_reply(await producer.control("stop", str(uuid.uuid4())))
    check_error_reply(await producer.control("pause", pending))
    check_error_reply(await producer.control("stop", "not-a-uuid"))
    message = await producer.publish("control", b"not json")
    assert message is not None
    check_error_reply(json.loads(message.body))


# -- sections 2 and 5: expiry, ordering, priority ------------------------------------------

async def test_a_job_picked_after_its_expiration_date_fails_expired(
    service: object, producer: Producer, namespace: str
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    async with Subscriber(namespace, "#") as events:
        job_id = (await producer.submit({"tenant": "t3", "job_class": "jobservice.noop",
                                         "expiration_date": past}))["id"]
        seen = await events.until(job_id, "FAILED")
    check_transition_chain(seen)
    assert statuses(seen) == ["QUEUED", "FAILED"]
    message, event = seen[-1]
    assert message.routing_key == "t3.failed" and event["error"]["type"] == "expired"


async def test_higher_priority_runs_first_within_a_tenant(
    start_service: ServiceFactory, producer: Producer, namespace: str
) -> None:
    await start_service(pool_size=1)
    async with Subscriber(namespace, "*.running") as events:
        blocker = (await producer.submit({"tenant": "t4", "job_class": "jobservice.sleep",
                                          "parameters": {"seconds": 300}}))["id"]
        await events.until(blocker, "RUNNING")
        low = (await producer.submit({"tenant": "t4", "job_class": "jobservice.noop",
                                      "priority": 1}))["id"]
        high = (await producer.submit({"tenant": "t4", "job_class": "jobservice.noop",
                                       "priority": 1000}))["id"]
        await producer.control("stop", blocker)
        await events.until(low, "RUNNING")
        await events.until(high, "RUNNING")
    assert [job for job, _ in events.log] == [blocker, high, low]


# -- section 8: HTTP -------------------------------------------------------------------------

async def test_http_endpoints(service: Any, producer: Producer) -> None:
    port = service.http.port
    assert (await http_get(port, "/healthz"))[0] == 200
    assert (await http_get(port, "/readyz"))[0] == 200
    status, text = await http_get(port, "/metrics")
    assert status == 200
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert names and all(name.startswith("jobservice_") for name in names), names
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all(line.startswith("jobservice_") for line in samples)


# -- section 6: completion writes; section 1: `jobservice run`, migrations at start ---------

async def test_completion_is_written_at_most_once_per_period(
    start_service: ServiceFactory, producer: Producer, namespace: str
) -> None:
    rate_ms = 300
    await start_service(completion_update_rate_ms=rate_ms)
    async with Subscriber(namespace, "t5.running", "#.progress", "t5.succeeded") as events:
        job_id = (await producer.submit({"tenant": "t5", "job_class": "jobservice.sleep",
                                         "parameters": {"seconds": 1.5, "ticks": 30}}))["id"]
        seen = await events.until(job_id, "SUCCEEDED")
    assert seen[0][0].routing_key == "t5.running"
    progress = [e for m, e in seen if m.routing_key == "t5.progress"]
    assert 1 <= len(progress) <= 1.5 / (rate_ms / 1000) + 1, progress
    # RUNNING, then each progress write at least one period after the previous write
    ats = [datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
           for e in [seen[0][1], *progress]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ats)]
    assert all(gap >= rate_ms / 1000 - 0.01 for gap in gaps), gaps
    assert seen[-1][1]["percent_completed"] == 100  # the final write


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    name = f"jst_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{PG_ADMIN_URL}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_ADMIN_URL}/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_jobservice_run_migrates_an_empty_database_serves_and_stops_on_sigint(
    empty_database_url: str, namespace: str, producer: Producer
) -> None:
    proc = await spawn_ready(empty_database_url, namespace)
    try:
        async with Subscriber(namespace, "*.succeeded") as events:
            reply = await producer.submit({"tenant": "t6", "job_class": "jobservice.noop"})
            assert reply["ok"] is True
            await events.until(reply["id"], "SUCCEEDED")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = {r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"t_job_info", "t_job_parameters"} <= tables
        assert await conn.fetchval("SELECT status FROM t_job_info") == "SUCCEEDED"
    finally:
        await conn.close()


async def test_the_service_declares_durable_queues_and_a_durable_topic_exchange(
    service: object, namespace: str
) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in ("submit", "submit.dlq", "control"):
            channel = await connection.channel()
            # passive: it exists already; then the same declaration with durable=True is
            # accepted only if the queue is durable (PRECONDITION_FAILED otherwise)
            await channel.declare_queue(f"{namespace}.{name}", passive=True)
            await channel.declare_queue(f"{namespace}.{name}", durable=True)
        channel = await connection.channel()
        await channel.declare_exchange(f"{namespace}.events", passive=True)
        await channel.declare_exchange(f"{namespace}.events", aio_pika.ExchangeType.TOPIC,
                                       durable=True)
    finally:
        await connection.close()


async def test_builtin_job_types_and_their_parameters(
    service: object, producer: Producer, namespace: str, db: asyncpg.Connection
) -> None:
    async with Subscriber(namespace, "t7.succeeded", "t7.failed") as events:
        noop = await producer.submit({"tenant": "t7", "job_class": "jobservice.noop",
                                      "parameters": {}})
        sleep = await producer.submit({"tenant": "t7", "job_class": "jobservice.sleep",
                                       "parameters": {"seconds": 0}})  # ticks: default 10
        fail = await producer.submit({"tenant": "t7", "job_class": "jobservice.fail",
                                      "parameters": {"message": "as asked"}})
        assert (await events.until(noop["id"], "SUCCEEDED"))[-1][1]["result"] is None
        [(_, slept)] = await events.until(sleep["id"], "SUCCEEDED")
        [(_, failed)] = await events.until(fail["id"], "FAILED")
    assert slept["percent_completed"] == 100
    assert failed["error"]["message"] == "as asked"
    assert await db.fetchval("SELECT value FROM t_job_parameters WHERE job_id = $1 AND "
                             "name = 'ticks'", uuid.UUID(sleep["id"])) in (None, "10")


async def test_pool_size_bounds_the_jobs_run_at_once(
    start_service: ServiceFactory, producer: Producer, namespace: str
) -> None:
    await start_service(pool_size=2)
    async with Subscriber(namespace, "t8.#") as events:
        ids = [(await producer.submit({"tenant": "t8", "job_class": "jobservice.sleep",
                                       "parameters": {"seconds": 0.3, "ticks": 1}}))["id"]
               for _ in range(5)]
        for job_id in ids:
            await events.until(job_id, "SUCCEEDED")
    busy = peak = 0
    for _, routing_key in events.log:
        if routing_key == "t8.to_be_run":
            busy += 1
            peak = max(peak, busy)
        elif routing_key == "t8.succeeded":
            busy -= 1
    assert peak == 2
