"""An intake batch stored with a claim (sql/010_insert_and_claim.sql, Scheduler.store_jobs):
the claim is the fair one over every queued job, within the instance's filters and free
slots; every transition keeps its event; duplicates and composite batches claim nothing; an
idle instance runs a submission without a claim statement of its own, a busy one leaves the
claim to its scheduler."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from jobservice.client import JobClient
from jobservice.intake import parse_submission
from jobservice.jobs.registry import JobRegistry
from jobservice.model import JobStatus
from jobservice.store import ClaimFilter, ClaimRequest, NewJob, Store
from tests.conftest import ServiceFactory, wait_for_all
from tests.integration.test_scheduling import insert_queued

RUNS_NOOP = ("jobservice.noop",)


def plain_job(tenant: str, job_id: uuid.UUID | None = None) -> NewJob:
    return NewJob(job_id or uuid.uuid4(), tenant, "jobservice.noop", JobStatus.QUEUED, 0,
                  None, None, None, {"note": tenant})


@pytest.fixture
async def store(store: Store, db: asyncpg.Connection) -> Store:
    """conftest's store, with a lease for instance i1 (its claims need one)."""
    await db.execute("SELECT jobservice_renew_lease('i1', 60)")
    return store


async def test_the_batch_is_stored_and_claimed_in_one_round_trip_with_every_event(
    store: Store, db: asyncpg.Connection
) -> None:
    job = plain_job("alpha")
    before = store.statements
    outcome = await store.insert_jobs([job], ClaimRequest("i1", 4, ClaimFilter(), RUNS_NOOP))
    assert store.statements - before == 1
    assert outcome.created == {job.id} and outcome.claim_limit == 4
    assert [(c.id, c.status, c.parameters) for c in outcome.claimed] == [
        (job.id, JobStatus.RUNNING, {"note": "alpha"})]
    row = await db.fetchrow("SELECT status, instance_id, attempt, transition_seq "
                            "FROM t_job_info WHERE id = $1", job.id)
    assert row is not None and tuple(row) == ("RUNNING", "i1", 1, 3)
    events = await db.fetch("SELECT seq, routing_key FROM t_job_event_outbox "
                            "WHERE job_id = $1 ORDER BY id, position", job.id)
    assert [(e["seq"], e["routing_key"]) for e in events] == [
        (1, "alpha.queued"), (2, "alpha.to_be_run"), (3, "alpha.running")]


async def test_the_claim_is_the_fair_one_over_all_queued_work_not_only_the_batch(
    store: Store, db: asyncpg.Connection
) -> None:
    older = await insert_queued(db, "beta", 3)
    job = plain_job("alpha")
    outcome = await store.insert_jobs([job], ClaimRequest("i1", 2, ClaimFilter(), RUNS_NOOP))
    claimed = {c.id: c.tenant for c in outcome.claimed}
    # one per tenant first (round robin), so the new tenant's job is not behind the others
    assert len(claimed) == 2 and job.id in claimed and set(claimed) - {job.id} <= set(older)


async def test_the_claim_keeps_to_the_instance_filters_and_free_slots(
    store: Store, db: asyncpg.Connection
) -> None:
    jobs = [plain_job("alpha"), plain_job("beta"), plain_job("beta")]
    outcome = await store.insert_jobs(
        jobs, ClaimRequest("i1", 1, ClaimFilter(tenants=("beta",)), RUNS_NOOP))
    assert outcome.created == {j.id for j in jobs}
    assert [c.tenant for c in outcome.claimed] == ["beta"]
    statuses = await db.fetch("SELECT tenant, status FROM t_job_info ORDER BY tenant, status")
    assert [tuple(r) for r in statuses] == [("alpha", "QUEUED"), ("beta", "QUEUED"),
                                            ("beta", "RUNNING")]


async def test_a_batch_of_duplicates_claims_nothing(store: Store, db: asyncpg.Connection) -> None:
    job = plain_job("alpha")
    await store.insert_jobs([job])
    await insert_queued(db, "beta", 1)
    outcome = await store.insert_jobs([job], ClaimRequest("i1", 4, ClaimFilter(), RUNS_NOOP))
    assert outcome.created == frozenset() and outcome.claimed == []
    assert outcome.existing == {job.id: JobStatus.QUEUED}
    assert await db.fetchval("SELECT count(*) FROM t_job_info WHERE status = 'QUEUED'") == 2


async def test_a_batch_with_a_composite_job_is_stored_without_a_claim(
    store: Store, db: asyncpg.Connection
) -> None:
    first = plain_job("beta")
    await store.insert_jobs([first])
    plain = plain_job("alpha")
    composite = parse_submission(json.dumps({
        "id": str(uuid.uuid4()), "tenant": "beta", "job_class": "jobservice.noop",
        "depends_on": [str(first.id)]}).encode(), JobRegistry.default(), 1_000_000)
    assert isinstance(composite, NewJob) and composite.spec is not None
    outcome = await store.insert_jobs([plain, composite],
                                      ClaimRequest("i1", 4, ClaimFilter(), RUNS_NOOP))
    assert outcome.created == {plain.id, composite.id}
    assert outcome.claimed == [] and outcome.claim_limit == 0
    assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1", plain.id) == "QUEUED"


async def test_an_idle_instance_runs_a_submission_with_the_claim_of_its_intake(
    start_service: ServiceFactory, client: JobClient
) -> None:
    service = await start_service(pool_size=4)
    assert service.scheduler is not None and service.pool is not None
    async with client.subscribe("#") as events:
        for _ in range(5):  # one at a time: the pool is idle when each arrives
            reply = await client.submit("alpha", "jobservice.noop")
            assert reply is not None and reply.id is not None
            seen = await wait_for_all(events, [reply.id], "SUCCEEDED")
            assert [e.status for e in seen[str(reply.id)]] == [
                "QUEUED", "TO_BE_RUN", "RUNNING", "SUCCEEDED"]
    # stored and claimed in one round trip (unless the scheduler's own claim, at start or
    # on its poll, held the free slots at that moment: not for all five)
    assert service.scheduler.intake_claims >= 1
    assert service.pool.free_slots == 4


async def test_a_busy_instance_stores_without_a_claim_and_its_scheduler_claims(
    start_service: ServiceFactory, client: JobClient
) -> None:
    service = await start_service(pool_size=4)
    assert service.scheduler is not None
    async with client.subscribe("#") as events:
        blocker = await client.submit("alpha", "tests.wait_forever")
        assert blocker is not None and blocker.id is not None
        await wait_for_all(events, [blocker.id], "RUNNING")
        claims_before = service.scheduler.intake_claims
        reply = await client.submit("beta", "jobservice.noop")
        assert reply is not None and reply.id is not None
        await wait_for_all(events, [reply.id], "SUCCEEDED")
        # a job runs: the intake only stored the submission, the scheduler claimed it
        assert service.scheduler.intake_claims == claims_before
        await client.stop(blocker.id)
        await wait_for_all(events, [blocker.id], "ABORTED")
