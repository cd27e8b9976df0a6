"""A small async producer/subscriber library: submit and control jobs, follow events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Self

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from jobservice.amqp_tx import PersistentJsonMessage, TransactionalPublisher
from jobservice.model import EventMessage, ReplyMessage


class JobServiceError(Exception):
    """A refused request: `code` and `message` come from the service's reply."""

    def __init__(self, reply: ReplyMessage) -> None:
        assert reply.error is not None
        super().__init__(f"{reply.error.code}: {reply.error.message}")
        self.reply = reply
        self.code = reply.error.code


class JobClient:
    """`async with JobClient(url, namespace) as client: await client.submit(...)`."""

    def __init__(self, amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
                 namespace: str = "jobservice", reply_timeout_s: float = 30.0,
                 user_id: str | None = None) -> None:
        """`user_id`: set on every message (RabbitMQ checks it is the login); needed when the
        service enforces tenant access control."""
        self._url = amqp_url
        self._user_id = user_id
        self._ns = namespace
        self._timeout = reply_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._reply_queue: str | None = None
        self._waiting: dict[str, asyncio.Future[ReplyMessage]] = {}
        self._bulk: TransactionalPublisher | None = None  # submit_many's channel

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        # Declared here too, so that submissions made before the service starts are kept.
        for name in (f"{self._ns}.submit", f"{self._ns}.control"):
            await self._channel.declare_queue(name, durable=True)
        replies = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await replies.consume(self._on_reply, no_ack=True)
        self._reply_queue = replies.name

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
            self._bulk = None

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(ReplyMessage.model_validate_json(message.body))

    async def _request(self, routing_key: str, payload: dict[str, Any] | bytes,
                       wait: bool) -> ReplyMessage | None:
        assert self._channel is not None, "call connect() first"
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[ReplyMessage] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = future
        await self._channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             reply_to=self._reply_queue if wait else None,
                             correlation_id=correlation_id if wait else None,
                             user_id=self._user_id),
            routing_key=routing_key,
        )
        if future is None:
            return None
        try:
            return await asyncio.wait_for(future, self._timeout)
        finally:
            self._waiting.pop(correlation_id, None)

    async def submit(
        self,
        tenant: str,
        job_class: str,
        parameters: dict[str, Any] | None = None,
        *,
        id: uuid.UUID | None = None,
        priority: int = 0,
        description: str | None = None,
        owner: str | None = None,
        expiration_date: datetime | None = None,
        pending: bool = False,
        max_retries: int | None = None,
        retry_backoff_s: float | None = None,
        run_after: datetime | None = None,
        context: str | None = None,
        depends_on: Sequence[uuid.UUID | str] | None = None,
        wait: bool = True,
        check: bool = True,
        **composite: Any,
    ) -> ReplyMessage | None:
        """Submit one job; with `wait`, return the service's reply (raise if refused and
        `check`). `composite`: the other submission fields as JSON data (`steps`,
        `selected_elements`, `environment`, `on_success`)."""
        message: dict[str, Any] = {
            "id": str(id or uuid.uuid4()), "tenant": tenant, "job_class": job_class,
            "priority": priority, "parameters": parameters or {},
            "initial_status": "PENDING" if pending else "QUEUED",
        }
        for key, value in (("description", description), ("owner", owner)):
            if value is not None:
                message[key] = value
        if expiration_date is not None:
            message["expiration_date"] = expiration_date.isoformat()
        if max_retries is not None:
            message["max_retries"] = max_retries
        if retry_backoff_s is not None:
            message["retry_backoff_s"] = retry_backoff_s
        if run_after is not None:
            message["run_after"] = run_after.isoformat()
        if context is not None:
            message["context"] = context
        if depends_on:
            message["depends_on"] = [str(d) for d in depends_on]
        message.update(composite)
        return self._checked(await self._request(f"{self._ns}.submit", message, wait), check)

    async def submit_raw(self, body: dict[str, Any] | bytes, wait: bool = True
                         ) -> ReplyMessage | None:
        """Publish a submission as given (no checks): tests and tools."""
        return await self._request(f"{self._ns}.submit", body, wait)

    async def submit_many(self, messages: Sequence[dict[str, Any]]) -> None:
        """Publish many submissions without waiting for replies (bulk load), in one broker
        transaction: when this returns, the broker holds them all (jobservice.amqp_tx)."""
        assert self._connection is not None, "call connect() first"
        if self._bulk is None:
            channel = await self._connection.channel(publisher_confirms=False)
            assert isinstance(channel, AbstractRobustChannel)
            self._bulk = TransactionalPublisher(channel)
        routing_key = f"{self._ns}.submit"
        await self._bulk.publish(
            PersistentJsonMessage(json.dumps(m).encode(), "", routing_key,
                                  user_id=self._user_id)
            for m in messages)

    async def control(self, action: str, job_id: uuid.UUID | str, *, wait: bool = True,
                      check: bool = True) -> ReplyMessage | None:
        reply = await self._request(f"{self._ns}.control",
                                    {"action": action, "id": str(job_id)}, wait)
        return self._checked(reply, check)

    async def stop(self, job_id: uuid.UUID | str) -> ReplyMessage | None:
        return await self.control("stop", job_id)

    async def enqueue(self, job_id: uuid.UUID | str) -> ReplyMessage | None:
        return await self.control("enqueue", job_id)

    async def retry(self, job_id: uuid.UUID | str) -> ReplyMessage | None:
        return await self.control("retry", job_id)

    @asynccontextmanager
    async def subscribe(self, *bindings: str) -> AsyncIterator[asyncio.Queue[EventMessage]]:
        """Bind a private queue to the events exchange with each binding key (default `#`;
        e.g. `*.failed`, `project-a.#`); yields an asyncio.Queue receiving every event."""
        assert self._connection is not None
        channel = await self._connection.channel()
        events: asyncio.Queue[EventMessage] = asyncio.Queue()
        exchange = await channel.declare_exchange(f"{self._ns}.events",
                                                  aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for binding in bindings or ("#",):
            await queue.bind(exchange, binding)

        async def on_event(message: AbstractIncomingMessage) -> None:
            events.put_nowait(EventMessage.model_validate_json(message.body))

        tag = await queue.consume(on_event, no_ack=True)
        try:
            yield events
        finally:
            await queue.cancel(tag)
            await channel.close()

    @staticmethod
    def _checked(reply: ReplyMessage | None, check: bool) -> ReplyMessage | None:
        if check and reply is not None and not reply.ok:
            raise JobServiceError(reply)
        return reply
