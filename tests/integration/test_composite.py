"""Composite jobs: steps over selected elements, dependencies (depends_on), on_success
submissions, owner and context in events and runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from jobservice.client import JobClient
from jobservice.model import EventMessage
from jobservice.service import JobService
from tests.conftest import ServiceFactory, wait_for_all, wait_for_status, wait_until
from tests.support.amqp import read_queue
from tests.support.processes import cli_output

ELEMENTS = [{"type": "file", "id": 7}, {"type": "dataset", "id": "ds-1"}]
ENVIRONMENT = {"comment": "entered by a user", "threshold": 3}


def record(label: str, **extra: Any) -> dict[str, Any]:
    return {"name": label, "job_class": "tests.record_step", "config": {"label": label, **extra}}


async def submit_steps(client: JobClient, steps: list[dict[str, Any]], **fields: Any) -> uuid.UUID:
    reply = await client.submit("alpha", "jobservice.steps", steps=steps, **fields)
    assert reply is not None and reply.id is not None, reply
    return reply.id


async def test_three_steps_over_selected_elements_with_environment(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(completion_update_rate_ms=20)
    async with client.subscribe("#") as events:
        job_id = await submit_steps(
            client, [record("extract"), record("transform"), record("load")],
            selected_elements=ELEMENTS, environment=ENVIRONMENT, owner="alice")
        seen = await wait_for_status(events, job_id, "SUCCEEDED", timeout=30)
    final = seen[-1]
    assert final.result is not None
    steps = final.result["steps"]
    assert [s["name"] for s in steps] == ["extract", "transform", "load"]
    for index, step in enumerate(steps):
        result = step["result"]
        assert result["step"] == [index, step["name"]]
        assert result["environment"] == ENVIRONMENT
        assert result["elements"] == [["file", 7], ["dataset", "ds-1"]]
        assert result["owner"] == "alice" and result["context"] == "admin"
    # each step sees the results of the steps before it, by name
    assert steps[0]["result"]["earlier"] == {}
    assert list(steps[1]["result"]["earlier"]) == ["extract"]
    assert steps[2]["result"]["earlier"]["transform"]["label"] == "transform"
    # completion spans all steps: it rises through the run and ends at 100
    percents = [e.percent_completed for e in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert any(0 < p < 100 for p in percents), percents
    # the steps announce themselves through messages: in events, and in the log in English
    assert final.message is not None and final.message.key == "jobservice.steps.done"
    log = [r["message"] for r in await db.fetch(
        "SELECT message FROM t_job_log WHERE job_id = $1 ORDER BY at", job_id)]
    assert log == ["Step 1 of 3: extract", "Step 2 of 3: transform", "Step 3 of 3: load",
                   "All 3 steps done"]


async def test_a_failing_middle_step_fails_the_job_with_its_index_and_name(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    steps = [record("first", seconds=0), {"name": "middle", "job_class": "jobservice.fail",
                                          "config": {"message": "boom"}},
             record("last", seconds=0)]
    async with client.subscribe("#") as events:
        job_id = await submit_steps(client, steps)
        seen = await wait_for_status(events, job_id, "FAILED")
    error = seen[-1].error
    assert error is not None and error.type == "FailJobError"
    assert error.message is not None
    assert "step 1" in error.message and "'middle'" in error.message and "boom" in error.message
    assert error.stack_trace is not None and "FailJobError: boom" in error.stack_trace
    log = [r["message"] for r in await db.fetch(
        "SELECT message FROM t_job_log WHERE job_id = $1 ORDER BY at", job_id)]
    assert log == ["Step 1 of 3: first", "Step 2 of 3: middle"]  # the last step never ran


async def test_stop_during_a_step_cancels_it_at_once(
    start_service: ServiceFactory, client: JobClient
) -> None:
    service = await start_service(completion_update_rate_ms=20)
    steps = [record("quick", seconds=0),
             {"name": "endless", "job_class": "tests.wait_forever", "config": {}},
             record("never", seconds=0)]
    async with client.subscribe("#") as events:
        job_id = await submit_steps(client, steps)
        while True:  # until the second step has started
            event = await asyncio.wait_for(events.get(), 15)
            if (event.job_id == job_id and event.message is not None
                    and event.message.params.get("step") == 2):
                break
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await client.stop(job_id)
        seen = await wait_for_status(events, job_id, "ABORTED")
        assert loop.time() - asked < 5
    assert seen[-1].error is not None and seen[-1].error.type == "stopped"
    pool = service.pool
    assert pool is not None

    async def slot_freed() -> bool:
        # the final write's commit (and its event) may come before the pool's bookkeeping:
        # that write also claims in the same round trip (issue 7)
        return pool.busy == 0

    await wait_until(slot_freed, timeout=10)


async def test_steps_are_validated_at_submission(
    service: JobService, client: JobClient, db: asyncpg.Connection, namespace: str
) -> None:
    cases = [
        ({"steps": [{"name": "a", "job_class": "nobody.has.this"}]}, "unknown_job_class",
         "steps.0"),
        ({"steps": [{"name": "a", "job_class": "jobservice.sleep", "config": {"seconds": -1}}]},
         "invalid_parameters", "'a'"),
        ({"steps": [record("a"), record("a")]}, "invalid_message", "unique"),
        ({"steps": [{"name": "a", "job_class": "jobservice.steps"}]}, "invalid_message",
         "cannot be"),
    ]
    for fields, code, text in cases:
        reply = await client.submit_raw({"tenant": "alpha", "job_class": "jobservice.steps",
                                         **fields})
        assert reply is not None and reply.error is not None, fields
        assert reply.error.code == code, reply
        assert text in reply.error.message + str(reply.error.details), reply
    wrong_class = await client.submit_raw({"tenant": "alpha", "job_class": "jobservice.noop",
                                           "steps": [record("a")]})
    assert wrong_class is not None and wrong_class.error is not None
    assert "jobservice.steps" in str(wrong_class.error.details)
    await read_queue(f"{namespace}.submit.dlq", len(cases) + 1)
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0


async def collect_until(events: asyncio.Queue[EventMessage],
                        final: dict[uuid.UUID, str], timeout: float = 15) -> list[EventMessage]:
    """Every event until each job in `final` reached its status."""
    got: list[EventMessage] = []
    waiting = dict(final)
    while waiting:
        event = await asyncio.wait_for(events.get(), timeout)
        got.append(event)
        if waiting.get(event.job_id) == event.status:
            del waiting[event.job_id]
    return got


def _order(events: list[EventMessage], ids: dict[str, uuid.UUID]) -> list[str]:
    names = {v: k for k, v in ids.items()}
    return [f"{names[e.job_id]}:{e.status}" for e in events
            if e.job_id in names and e.previous_status != e.status]


async def test_a_chain_a_b_c_runs_in_order(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    ids: dict[str, uuid.UUID] = {}
    got: list[EventMessage] = []
    async with client.subscribe("#") as events:
        a = await client.submit("alpha", "jobservice.sleep", {"seconds": 0.3, "ticks": 1})
        assert a is not None and a.id is not None
        ids["A"] = a.id
        b = await client.submit("alpha", "jobservice.noop", depends_on=[a.id])
        assert b is not None and b.id is not None and b.status == "PENDING"
        ids["B"] = b.id
        c = await client.submit("alpha", "tests.echo", {"value": 3}, depends_on=[b.id])
        assert c is not None and c.id is not None and c.status == "PENDING"
        ids["C"] = c.id
        while not any(e.job_id == ids["C"] and e.status == "SUCCEEDED" for e in got):
            got.append(await asyncio.wait_for(events.get(), 15))
    order = _order(got, ids)
    assert order.index("A:SUCCEEDED") < order.index("B:QUEUED") < order.index("B:RUNNING")
    assert order.index("B:SUCCEEDED") < order.index("C:QUEUED") < order.index("C:RUNNING")
    assert [s.split(":")[1] for s in order if s.startswith("B:")] == [
        "PENDING", "QUEUED", "TO_BE_RUN", "RUNNING", "SUCCEEDED"]
    states = await db.fetch("SELECT id, dependency_state FROM t_job_info")
    assert {r["id"]: r["dependency_state"] for r in states} == {
        ids["A"]: None, ids["B"]: "satisfied", ids["C"]: "satisfied"}


async def test_a_failing_a_aborts_b_and_c_and_a_retry_of_a_brings_them_back(
    service: JobService, client: JobClient, db: asyncpg.Connection, database_url: str
) -> None:
    async with client.subscribe("#") as events:
        a = await client.submit("alpha", "tests.fail_first", pending=True)
        assert a is not None and a.id is not None
        b = await client.submit("alpha", "jobservice.noop", depends_on=[a.id])
        c = await client.submit("alpha", "jobservice.noop", depends_on=[b.id])  # type: ignore[union-attr]
        assert b is not None and c is not None and b.id is not None and c.id is not None
        await client.enqueue(a.id)
        aborted = await wait_for_all(events, [b.id, c.id], "ABORTED")
        b_error, c_error = aborted[str(b.id)][-1].error, aborted[str(c.id)][-1].error
        assert b_error is not None and b_error.type == "dependency_failed"
        assert b_error.message == f"dependency {a.id} ended FAILED"
        assert c_error is not None and c_error.type == "dependency_failed"
        assert c_error.message == f"dependency {b.id} ended ABORTED"
        assert await db.fetchval("SELECT status FROM t_job_info WHERE id = $1", a.id) == "FAILED"
        # C cannot be retried while B has not succeeded; the refusal says why
        refused = await client.control("retry", c.id, check=False)
        assert refused is not None and refused.error is not None
        assert str(b.id) in refused.error.message and "ABORTED" in refused.error.message
        # a bulk kick re-queues A only (B and C wait for it), and A's success re-queues B,
        # then C (chosen behaviour, see README)
        kicked = await cli_output(database_url, "jobs", "retry", "--tenant", "alpha")
        assert f"re-queued {a.id}" in kicked and "1 job(s) re-queued" in kicked
        revived = await wait_for_all(events, [a.id, b.id, c.id], "SUCCEEDED")
    rows = await db.fetch("SELECT id, status, dependency_state FROM t_job_info")
    assert {r["status"] for r in rows} == {"SUCCEEDED"}
    for job_id in (b.id, c.id):  # re-queued from ABORTED by themselves, then run
        assert [(e.previous_status, e.status) for e in revived[str(job_id)]][:2] == [
            ("ABORTED", "QUEUED"), ("QUEUED", "TO_BE_RUN")]


async def test_dependencies_already_final_at_submission(
    service: JobService, client: JobClient
) -> None:
    async with client.subscribe("#") as events:
        done = await client.submit("alpha", "jobservice.noop")
        assert done is not None and done.id is not None
        await wait_for_status(events, done.id, "SUCCEEDED")
        failed = await client.submit("alpha", "jobservice.fail")
        assert failed is not None and failed.id is not None
        await wait_for_status(events, failed.id, "FAILED")
        ready = await client.submit("alpha", "jobservice.noop", depends_on=[done.id])
        doomed = await client.submit("alpha", "jobservice.noop",
                                     depends_on=[done.id, failed.id])
        assert ready is not None and ready.status == "QUEUED" and ready.id is not None
        assert doomed is not None and doomed.status == "ABORTED" and doomed.id is not None
        got = await collect_until(events, {ready.id: "SUCCEEDED", doomed.id: "ABORTED"})
    ready_events = [e for e in got if e.job_id == ready.id]
    doomed_events = [e for e in got if e.job_id == doomed.id]
    assert (ready_events[0].previous_status, ready_events[0].status) == (None, "QUEUED")
    assert [e.status for e in doomed_events] == ["PENDING", "ABORTED"]
    assert doomed_events[-1].error is not None
    assert doomed_events[-1].error.type == "dependency_failed"


async def test_a_dependency_earlier_in_the_same_batch_is_known(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    await client.submit_many([
        {"id": str(first), "tenant": "alpha", "job_class": "jobservice.noop"},
        {"id": str(second), "tenant": "alpha", "job_class": "jobservice.noop",
         "depends_on": [str(first)]},
    ])
    async with client.subscribe("#") as events:
        await start_service()
        await wait_for_all(events, [first, second], "SUCCEEDED")


async def test_on_success_jobs_are_created_only_when_the_job_succeeds(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    child, grandchild, orphan = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with client.subscribe("#") as events:
        parent = await client.submit(
            "alpha", "jobservice.sleep", {"seconds": 0.2, "ticks": 1}, owner="bob",
            on_success=[{"id": str(child), "tenant": "beta", "job_class": "tests.echo",
                         "parameters": {"value": "child"}, "context": "portal",
                         "on_success": [{"id": str(grandchild), "tenant": "beta",
                                         "job_class": "jobservice.noop"}]}])
        assert parent is not None and parent.id is not None
        assert await db.fetchval("SELECT count(*) FROM t_job_info") == 1
        failing = await client.submit(
            "alpha", "jobservice.fail",
            on_success=[{"id": str(orphan), "tenant": "alpha", "job_class": "jobservice.noop"}])
        assert failing is not None and failing.id is not None
        await wait_for_status(events, failing.id, "FAILED")
        seen = await wait_for_all(events, [parent.id, child, grandchild], "SUCCEEDED")
    child_events = seen[str(child)]
    assert (child_events[0].previous_status, child_events[0].status) == (None, "QUEUED")
    assert child_events[-1].result == {"echo": "child"}
    assert all(e.context == "portal" and e.tenant == "beta" for e in child_events)
    # the parent's success came first; each created job depends on its parent
    parent_done = seen[str(parent.id)][-1].at
    assert child_events[0].at >= parent_done
    deps = await db.fetch("SELECT job_id, depends_on FROM t_job_dependency")
    assert {(r["job_id"], r["depends_on"]) for r in deps} == {
        (child, parent.id), (grandchild, child)}
    # the failed job's on_success submission was never created
    assert await db.fetchval("SELECT count(*) FROM t_job_info WHERE id = $1", orphan) == 0


@pytest.mark.parametrize("shape", ["unknown", "self", "own_on_success", "later_sibling",
                                   "nested_unknown"])
async def test_cycles_and_unknown_dependencies_are_refused(
    service: JobService, client: JobClient, db: asyncpg.Connection, namespace: str, shape: str
) -> None:
    job_id, child, sibling = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    noop = {"tenant": "alpha", "job_class": "jobservice.noop"}
    body: dict[str, Any] = {**noop, "id": str(job_id)}
    if shape == "unknown":
        missing = uuid.uuid4()
        body["depends_on"] = [str(missing)]
        code, text = "unknown_dependency", f"do not exist: {missing}"
    elif shape == "self":
        body["depends_on"] = [str(job_id)]
        code, text = "dependency_cycle", f"would wait for itself: {job_id} -> {job_id}"
    elif shape == "own_on_success":
        body["depends_on"] = [str(child)]
        body["on_success"] = [{**noop, "id": str(child)}]
        code, text = "dependency_cycle", f"{job_id} -> {child} -> {job_id}"
    elif shape == "later_sibling":
        body["on_success"] = [{**noop, "id": str(child), "depends_on": [str(sibling)]},
                              {**noop, "id": str(sibling)}]
        code, text = "unknown_dependency", "only created after it"
    else:
        missing = uuid.uuid4()
        body["on_success"] = [{**noop, "depends_on": [str(missing)]}]
        code, text = "unknown_dependency", str(missing)
    reply = await client.submit_raw(body)
    assert reply is not None and reply.error is not None
    assert reply.error.code == code and text in reply.error.message, reply.error
    [dead] = await read_queue(f"{namespace}.submit.dlq", 1)
    assert str(dead.headers["x-jobservice-error"]).startswith(code)
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0


async def test_owner_and_context_are_on_events_and_on_each_run(
    service: JobService, client: JobClient, db: asyncpg.Connection
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.fail_first", owner="carol",
                                    context="portal")
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "FAILED")
        await client.retry(reply.id)
        seen += await wait_for_status(events, reply.id, "SUCCEEDED")
    assert {(e.owner, e.context) for e in seen} == {("carol", "portal")}
    run = await db.fetchrow("SELECT owner, context FROM t_job_run WHERE job_id = $1", reply.id)
    assert run is not None and dict(run) == {"owner": "carol", "context": "portal"}


async def test_enqueue_does_not_bypass_dependencies(
    service: JobService, client: JobClient
) -> None:
    blocker = await client.submit("alpha", "jobservice.noop", pending=True)
    assert blocker is not None and blocker.id is not None
    waiting = await client.submit("alpha", "jobservice.noop", depends_on=[blocker.id])
    assert waiting is not None and waiting.id is not None and waiting.status == "PENDING"
    refused = await client.control("enqueue", waiting.id, check=False)
    assert refused is not None and refused.error is not None
    assert "waits for its dependencies" in refused.error.message
    async with client.subscribe("#") as events:
        await client.enqueue(blocker.id)
        await wait_for_status(events, waiting.id, "SUCCEEDED")


async def test_dependents_of_jobs_ending_at_once_on_two_instances_are_all_released(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    await start_service(pool_size=4)
    await start_service(pool_size=4)
    pairs, dependents = [], []
    for _ in range(16):
        a = await client.submit("alpha", "jobservice.noop", pending=True)
        b = await client.submit("beta", "jobservice.noop", pending=True)
        assert a is not None and b is not None and a.id is not None and b.id is not None
        d = await client.submit("gamma", "jobservice.noop", depends_on=[a.id, b.id])
        assert d is not None and d.id is not None
        pairs += [a.id, b.id]
        dependents.append(d.id)
    async with client.subscribe("#") as events:
        await asyncio.gather(*(client.enqueue(job_id) for job_id in pairs))
        await wait_for_all(events, dependents, "SUCCEEDED", timeout=60)
    assert await db.fetchval("SELECT count(DISTINCT instance_id) FROM t_job_info "
                             "WHERE id = ANY($1::uuid[])", pairs) == 2
