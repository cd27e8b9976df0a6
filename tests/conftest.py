"""Shared fixtures: a database per test (cloned from a migrated template), an AMQP namespace
per test, a running service instance and a client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from jobservice.client import JobClient
from jobservice.config import Settings
from jobservice.model import EventMessage
from jobservice.service import JobService
from jobservice.store import Store

PG_ADMIN_URL = os.environ.get("JOBSERVICE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
AMQP_URL = os.environ.get("JOBSERVICE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TEST_JOB_MODULES = ["tests.support.jobs"]


def _db_url(name: str) -> str:
    return f"{PG_ADMIN_URL}/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_db_url("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database with every migration applied; each test clones it (fast)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"jst_template_{worker}_{os.getpid()}"

    async def create() -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{name}"')
        await _admin(f'CREATE DATABASE "{name}"')
        store = await Store.connect(_db_url(name), size=2)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(create())
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    name = f"jst_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _db_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A Store on the test's own database."""
    store = await Store.connect(database_url, size=4)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A uuid-named AMQP namespace; its queues and exchange are deleted afterwards."""
    ns = f"jst-{uuid.uuid4().hex[:12]}"
    yield ns
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for queue in ("submit", "submit.dlq", "control", "control.dlq"):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(f"{ns}.{queue}")
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(f"{ns}.events")
    finally:
        await connection.close()


@pytest.fixture
def settings(database_url: str, namespace: str) -> Settings:
    return make_settings(database_url, namespace)


def make_settings(database_url: str, namespace: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "amqp_url": AMQP_URL, "namespace": namespace,
        "http_port": 0, "http_host": "127.0.0.1", "pool_size": 4,
        "job_modules": TEST_JOB_MODULES, "instance_id": f"test-{uuid.uuid4().hex[:8]}",
        "shutdown_grace_s": 2.0, "metrics_refresh_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


ServiceFactory = Callable[..., Awaitable[JobService]]


@pytest.fixture
async def start_service(database_url: str, namespace: str) -> AsyncIterator[ServiceFactory]:
    """`await start_service(pool_size=2)` starts an instance; all are stopped at teardown."""
    running: list[tuple[JobService, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> JobService:
        service = JobService(make_settings(database_url, namespace, **overrides))
        task = asyncio.create_task(service.run())
        running.append((service, task))
        ready = asyncio.create_task(service.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=30,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what stopped it
        assert ready in done, "service did not become ready in 30 s"
        return service

    yield start
    for service, task in reversed(running):
        service.request_stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def service(start_service: ServiceFactory) -> JobService:
    return await start_service()


@pytest.fixture
async def client(namespace: str) -> AsyncIterator[JobClient]:
    async with JobClient(AMQP_URL, namespace, reply_timeout_s=15) as job_client:
        yield job_client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for assertions."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def next_event(events: asyncio.Queue[EventMessage], timeout: float = 10.0
                     ) -> EventMessage:
    return await asyncio.wait_for(events.get(), timeout)


async def wait_for_status(events: asyncio.Queue[EventMessage], job_id: uuid.UUID | str,
                          status: str, timeout: float = 15.0) -> list[EventMessage]:
    """Consume events until `job_id` reaches `status`; returns that job's events seen."""
    seen: list[EventMessage] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await asyncio.wait_for(events.get(), max(0.01, deadline - loop.time()))
        if str(event.job_id) == str(job_id):
            seen.append(event)
            if event.status == status and event.previous_status != status:
                return seen


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0,
                     interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def wait_for_all(events: asyncio.Queue[EventMessage], job_ids: Iterable[uuid.UUID | str],
                       status: str, timeout: float = 15.0) -> dict[str, list[EventMessage]]:
    """Consume events until every job in `job_ids` reached `status`; events seen per job."""
    waiting = {str(j) for j in job_ids}
    seen: dict[str, list[EventMessage]] = {j: [] for j in waiting}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while waiting:
        event = await asyncio.wait_for(events.get(), max(0.01, deadline - loop.time()))
        job_id = str(event.job_id)
        if job_id in seen:
            seen[job_id].append(event)
            if event.status == status and event.previous_status != status:
                waiting.discard(job_id)
    return seen


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.support.report import RESULTS, render

    if RESULTS:
        terminalreporter.write_sep("=", "fault-test report (losses and duplicates must be 0)")
        terminalreporter.write_line(render(RESULTS))
