"""Schemas, migrations, named queries, the transition table and the HTTP endpoints."""

from __future__ import annotations

import itertools
from pathlib import Path

import asyncpg

from jobservice.client import JobClient
from jobservice.model import ALLOWED_FROM, JobStatus
from jobservice.resources import resource_dir
from jobservice.schemas import drifted_schemas, render_schemas
from jobservice.service import JobService
from jobservice.store import QUERIES, Store
from tests.conftest import ServiceFactory, wait_for_all, wait_until
from tests.support.amqp import http_get, metric_value

ROOT = Path(__file__).resolve().parents[2]


def test_schemas_folder_matches_the_models() -> None:
    assert drifted_schemas(ROOT / "schemas") == [], "run `jobservice schemas` and commit"
    assert set(render_schemas()) == {p.name for p in (ROOT / "schemas").glob("*.json")}


def test_the_installed_package_ships_sql_and_schemas() -> None:
    assert (resource_dir("sql") / "001_init.sql").is_file()
    assert (resource_dir("sql") / "queries.sql").is_file()
    assert (resource_dir("schemas") / "submit.schema.json").is_file()
    import jobservice.i18n

    shipped = Path(jobservice.i18n.__file__).parent / "messages"
    assert "site-packages" in str(shipped)  # the installed package, not the checkout
    assert {"admin.en.yaml", "admin.de.yaml", "common.en.yaml"} <= {
        p.name for p in shipped.glob("*.yaml")}


async def test_every_named_query_prepares(db: asyncpg.Connection) -> None:
    assert len(QUERIES) >= 20
    for name, sql in QUERIES.items():
        try:
            await db.prepare(sql)
        except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message
            raise AssertionError(f"query {name} does not prepare: {exc}") from exc


async def test_migrations_are_recorded_and_run_once(database_url: str,
                                                    db: asyncpg.Connection) -> None:
    rows = await db.fetch("SELECT version, name FROM t_schema_migrations ORDER BY version")
    files = sorted(p.name for p in resource_dir("sql").glob("[0-9]*.sql"))
    assert [r["name"] for r in rows] == files
    store = await Store.connect(database_url, size=2)
    try:
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_migrations_apply_to_an_empty_database(template_db: str) -> None:
    # the template itself was built from nothing by Store.migrate(); check its tables
    from tests.conftest import _db_url

    conn = await asyncpg.connect(_db_url(template_db))
    try:
        tables = {r["name"] for r in await conn.fetch(
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' "
            "UNION ALL SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert {"t_job_info", "t_job_parameters", "t_job_run", "t_job_past_run",
            "t_job_event_outbox", "t_tenant_turn", "t_schema_migrations"} <= tables


async def test_transition_table_is_the_same_in_python_and_sql(db: asyncpg.Connection) -> None:
    for old, new in itertools.product(JobStatus, JobStatus):
        if old == new:
            continue
        in_sql = await db.fetchval("SELECT jobservice_transition_allowed($1, $2)",
                                   old.value, new.value)
        assert in_sql == (old in ALLOWED_FROM[new]), (old, new)


async def test_database_refuses_a_transition_outside_the_table(db: asyncpg.Connection) -> None:
    job_id = await db.fetchval("INSERT INTO t_job_info (id, tenant, job_class, status) "
                               "VALUES (gen_random_uuid(), 'a', 'x', 'SUCCEEDED') RETURNING id")
    try:
        await db.execute("UPDATE t_job_info SET status = 'RUNNING' WHERE id = $1", job_id)
    except asyncpg.CheckViolationError as exc:
        assert "SUCCEEDED -> RUNNING" in str(exc)
    else:
        raise AssertionError("SUCCEEDED -> RUNNING was accepted")


async def test_health_readiness_and_metrics(
    start_service: ServiceFactory, client: JobClient
) -> None:
    service: JobService = await start_service(pool_size=3)
    assert service.http is not None
    port = service.http.port
    assert (await http_get(port, "/healthz"))[0] == 200
    assert (await http_get(port, "/readyz"))[0] == 200
    assert (await http_get(port, "/nope"))[0] == 404
    async with client.subscribe("#") as events:
        # scraped while a job runs: the busy slot and its transitions show at once
        long = await client.submit("t1", "jobservice.sleep", {"seconds": 30, "ticks": 30})
        assert long is not None and long.id is not None
        await wait_for_all(events, [long.id], "RUNNING")

        async def one_busy() -> bool:
            # the claim starts the job in the database; the event may come before the pool
            # gave back the slots it reserved for that claim (issue 7)
            return metric_value((await http_get(port, "/metrics"))[1],
                                "jobservice_pool_busy") == 1

        await wait_until(one_busy, timeout=10)
        _, during = await http_get(port, "/metrics")
        assert metric_value(during, "jobservice_pool_busy") == 1
        assert metric_value(during, "jobservice_transitions_total", status="RUNNING") == 1
        assert "jobservice_job_run_duration_seconds_count" not in during
        await client.stop(long.id)
        await wait_for_all(events, [long.id], "ABORTED")
        # one after the other: a wait consumes the events of jobs it does not wait for
        failed = await client.submit("t0", "jobservice.fail")
        assert failed is not None and failed.id is not None
        await wait_for_all(events, [failed.id], "FAILED")
        ids = []
        for n in range(5):
            reply = await client.submit(f"t{n % 2}", "jobservice.noop")
            assert reply is not None and reply.id is not None
            ids.append(reply.id)
        await wait_for_all(events, ids, "SUCCEEDED")
    await client.submit_raw(b"garbage")

    async def all_published() -> bool:  # counted after the broker's confirm and the delete
        text = (await http_get(port, "/metrics"))[1]
        return (metric_value(text, "jobservice_events_published_total") >= 24
                and metric_value(text, "jobservice_pool_busy") == 0)

    await wait_until(all_published, timeout=10)
    status, text = await http_get(port, "/metrics")
    assert status == 200
    assert metric_value(text, "jobservice_pool_capacity") == 3
    assert metric_value(text, "jobservice_pool_busy") == 0
    assert metric_value(text, "jobservice_transitions_total", status="SUCCEEDED") == 5
    assert metric_value(text, "jobservice_transitions_total", status="FAILED") == 1
    assert metric_value(text, "jobservice_transitions_total", status="RUNNING") == 7
    assert metric_value(text, "jobservice_transitions_total", status="ABORTED") == 1
    assert metric_value(text, "jobservice_submissions_total", outcome="accepted", reason="") == 7
    assert metric_value(text, "jobservice_submissions_total", outcome="rejected",
                        reason="invalid_json") == 1
    assert metric_value(text, "jobservice_job_run_duration_seconds_count",
                        job_class="jobservice.noop") == 5
    assert metric_value(text, "jobservice_job_queue_wait_seconds_count",
                        job_class="jobservice.noop") == 5
    assert metric_value(text, "jobservice_events_published_total") >= 24
    assert metric_value(text, "jobservice_db_statements_total") > 0
    assert metric_value(text, "jobservice_database_up") == 1
    assert metric_value(text, "jobservice_broker_up") == 1
    assert 'jobservice_build_info{version="' in text
    assert 0 <= metric_value(text, "jobservice_instance_lease_age_seconds") < 30
    assert "jobservice_outbox_lag_seconds" in text and "jobservice_outbox_backlog" in text
    assert "jobservice_jobs_rescued_total" not in text or metric_value(
        text, "jobservice_jobs_rescued_total", outcome="requeued") == 0
    # the per-tenant gauge is refreshed every 0.2 s in tests
    import asyncio

    for _ in range(50):
        _, text = await http_get(port, "/metrics")
        if (metric_value(text, "jobservice_jobs", tenant="t0", status="SUCCEEDED") == 3
                and metric_value(text, "jobservice_jobs", tenant="t0", status="FAILED") == 1):
            break
        await asyncio.sleep(0.1)
    assert metric_value(text, "jobservice_jobs", tenant="t0", status="SUCCEEDED") == 3
    assert metric_value(text, "jobservice_jobs", tenant="t1", status="SUCCEEDED") == 2
    assert metric_value(text, "jobservice_jobs", tenant="t0", status="FAILED") == 1


async def test_readyz_turns_503_while_draining_at_shutdown(
    start_service: ServiceFactory, client: JobClient, db: asyncpg.Connection
) -> None:
    service = await start_service(shutdown_grace_s=30)
    assert service.http is not None
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.progress_spin",
                                    {"advances": 100, "seconds": 1.5})
        assert reply is not None and reply.id is not None
        await wait_for_all(events, [reply.id], "RUNNING")
        service.request_stop()
        status, _ = await http_get(service.http.port, "/readyz")
        assert status == 503
        # the running job is allowed to finish within the grace period
        await wait_for_all(events, [reply.id], "SUCCEEDED")
