"""Tenant access control and limits on hostile input."""

from __future__ import annotations

import json

import asyncpg

from jobservice.client import JobClient
from tests.conftest import AMQP_URL, ServiceFactory, wait_for_status, wait_until
from tests.support.amqp import read_queue


async def test_tenant_access_control_by_amqp_user(
    start_service: ServiceFactory, namespace: str, db: asyncpg.Connection
) -> None:
    await start_service(tenant_acl={"guest": ["alpha"]})
    async with JobClient(AMQP_URL, namespace, user_id="guest") as guest, \
            JobClient(AMQP_URL, namespace) as anonymous:
        async with guest.subscribe("#") as events:
            ok = await guest.submit("alpha", "jobservice.noop")
            assert ok is not None and ok.ok and ok.id is not None
            await wait_for_status(events, ok.id, "SUCCEEDED")
        other = await guest.submit("beta", "jobservice.noop", check=False)
        assert other is not None and other.error is not None
        assert other.error.code == "forbidden" and "beta" in other.error.message
        unnamed = await anonymous.submit("alpha", "jobservice.noop", check=False)
        assert unnamed is not None and unnamed.error is not None
        assert unnamed.error.code == "forbidden"
        # control needs the job's tenant to be allowed too
        refused = await anonymous.control("retry", ok.id, check=False)
        assert refused is not None and refused.error is not None
        assert refused.error.code == "forbidden"
    dead = await read_queue(f"{namespace}.submit.dlq", 2)
    assert all(str(m.headers["x-jobservice-error"]).startswith("forbidden") for m in dead)
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 1


async def test_bulk_submissions_carry_the_user_id(
    start_service: ServiceFactory, namespace: str, db: asyncpg.Connection
) -> None:
    """submit_many (one broker transaction) sets the user id like submit does."""
    await start_service(tenant_acl={"guest": ["alpha"]})
    async with JobClient(AMQP_URL, namespace, user_id="guest") as guest:
        await guest.submit_many([{"tenant": "alpha", "job_class": "jobservice.noop"}] * 3
                                + [{"tenant": "beta", "job_class": "jobservice.noop"}])
    dead = await read_queue(f"{namespace}.submit.dlq", 1)
    assert str(dead[0].headers["x-jobservice-error"]).startswith("forbidden")

    async def alpha_jobs_stored() -> bool:  # two intake batches run at once: either may end first
        return await db.fetchval("SELECT count(*) FROM t_job_info WHERE tenant = 'alpha'") == 3

    await wait_until(alpha_jobs_stored)


async def test_too_many_parameters_are_refused(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(max_parameters=10)
    reply = await client.submit_raw(json.dumps({
        "tenant": "alpha", "job_class": "tests.echo",
        "parameters": {f"p{n}": n for n in range(11)}}).encode())
    assert reply is not None and reply.error is not None
    assert reply.error.code == "invalid_parameters" and "limit is 10" in reply.error.message
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0
