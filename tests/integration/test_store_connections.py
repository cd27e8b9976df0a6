"""The relay and the final writes keep a pool connection each (Store._HeldConnection): a
held connection that dies is replaced, a small pool holds none, and closing the store
returns them."""

from __future__ import annotations

import asyncio

import asyncpg

from jobservice.store import Store


async def relay_backend(db: asyncpg.Connection) -> int | None:
    return await db.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'jobservice' AND query LIKE '%t_job_event_batch%'")


async def test_a_held_connection_that_died_is_replaced(database_url: str,
                                                       db: asyncpg.Connection) -> None:
    store = await Store.connect(database_url, size=4)
    try:
        assert await store.fetch_outbox(10) == []
        first = await relay_backend(db)
        assert first is not None
        await db.execute("SELECT pg_terminate_backend($1)", first)
        await asyncio.sleep(0.2)  # the client reads the server's goodbye; the pool takes it
        assert await store.fetch_outbox(10) == []
        assert await relay_backend(db) not in (None, first)
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_one_connection_is_held_per_caller_and_none_in_a_small_pool(
    database_url: str,
) -> None:
    for size, held in ((4, 1), (2, 0)):
        store = await Store.connect(database_url, size=size)
        try:
            await store.fetch_outbox(10)
            await store.fetch_outbox(10)
            pool = store._pool
            assert pool.get_size() - pool.get_idle_size() == held, size
        finally:
            await asyncio.wait_for(store.close(), 10)


async def test_a_statement_that_fails_gives_its_held_connection_back(
    database_url: str, db: asyncpg.Connection,
) -> None:
    """A statement killed mid-way (here: cancelled by the server) hands the connection back;
    the next statement runs on a fresh one."""
    store = await Store.connect(database_url, size=4)
    try:
        await store.fetch_outbox(10)
        first = await relay_backend(db)
        await db.execute("SELECT pg_terminate_backend($1)", first)
        try:  # no pause: the statement may meet the dying connection
            await store.fetch_outbox(10)
        except Exception:  # which error depends on the race; the next call counts
            pass
        assert await store.fetch_outbox(10) == []
    finally:
        await asyncio.wait_for(store.close(), 10)
