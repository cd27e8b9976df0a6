"""Localized messages (`ctx.message`, catalogs, `jobs show --locale`) and `jobs list`."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import asyncpg

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import wait_for_status
from tests.support.processes import cli_output

MESSAGES = [
    ("import.rejected", {"element": "e1", "reason": "bad"}),  # not in admin.de: English
    ("no.such.key", {"x": 1}),  # in no catalog: the key itself
    ("import.progress", {"done": 3, "count": 10}),  # the current message at the end
]


async def test_message_keys_are_stored_sent_and_rendered_in_two_locales_with_fallback(
    service: JobService, client: JobClient, db: asyncpg.Connection, database_url: str
) -> None:
    async with client.subscribe("#") as events:
        reply = await client.submit("alpha", "tests.messages",
                                    {"messages": [list(m) for m in MESSAGES]})
        assert reply is not None and reply.id is not None
        seen = await wait_for_status(events, reply.id, "SUCCEEDED")
    # events carry the untranslated key and parameters, and the context (catalog domain)
    final = seen[-1]
    assert final.context == "admin" and final.message is not None
    assert (final.message.key, final.message.params) == ("import.progress",
                                                         {"done": 3, "count": 10})
    row = await db.fetchrow("SELECT message_key, message_params FROM t_job_info WHERE id = $1",
                            reply.id)
    assert row is not None and row["message_key"] == "import.progress"
    assert json.loads(row["message_params"]) == {"done": 3, "count": 10}
    # the log has one line per message, rendered in English
    log = [r["message"] for r in await db.fetch(
        "SELECT message FROM t_job_log WHERE job_id = $1 ORDER BY at", reply.id)]
    assert log == ["Element e1 was rejected: bad", "no.such.key", "3 of 10 elements imported"]

    german = await cli_output(database_url, "jobs", "show", str(reply.id), "--locale", "de")
    assert "3 von 10 Elementen importiert" in german  # current message and last log line
    assert "Element e1 was rejected: bad" in german  # missing in German: English
    assert "no.such.key" in german  # missing everywhere: the key
    assert "3 of 10 elements imported" not in german
    english = await cli_output(database_url, "jobs", "show", str(reply.id))
    assert "3 of 10 elements imported" in english and "Elementen" not in english
    swiss = json.loads(await cli_output(database_url, "jobs", "show", str(reply.id),
                                            "--locale", "de_CH", "--json"))
    assert swiss["message"] == "3 von 10 Elementen importiert"  # de_CH -> de
    assert [line["message"] for line in swiss["log"]] == [
        "Element e1 was rejected: bad", "no.such.key", "3 von 10 Elementen importiert"]
    listed = json.loads(await cli_output(database_url, "jobs", "list", "--json", "--locale",
                                         "de"))
    assert [j["message"] for j in listed["jobs"]] == ["3 von 10 Elementen importiert"]


async def test_jobs_show_prints_parameters_dependencies_and_steps(
    service: JobService, client: JobClient, database_url: str
) -> None:
    async with client.subscribe("#") as events:
        first = await client.submit("alpha", "tests.echo", {"value": "hello"}, owner="dora")
        assert first is not None and first.id is not None
        second = await client.submit("alpha", "jobservice.noop", depends_on=[first.id],
                                     environment={"k": "v"})
        assert second is not None and second.id is not None
        await wait_for_status(events, second.id, "SUCCEEDED")
    shown = await cli_output(database_url, "jobs", "show", str(second.id))
    assert f"{first.id}  SUCCEEDED" in shown and '{"k": "v"}' in shown
    assert re.search(r"^dependency_state +satisfied$", shown, re.M)
    first_shown = await cli_output(database_url, "jobs", "show", str(first.id))
    assert 'value = "hello"' in first_shown and re.search(r"^owner +dora$", first_shown, re.M)
    assert f"{second.id}  SUCCEEDED" in first_shown  # its dependents


async def _submit_and_settle(client: JobClient, db: asyncpg.Connection,
                             jobs: list[dict[str, Any]]) -> list[uuid.UUID]:
    ids = []
    for job in jobs:
        reply = await client.submit(**job)
        assert reply is not None and reply.id is not None
        ids.append(reply.id)
    return ids


async def test_jobs_list_filters_pages_and_prints_a_table(
    service: JobService, client: JobClient, db: asyncpg.Connection, database_url: str
) -> None:
    blocker = await client.submit("alpha", "jobservice.noop", pending=True, owner="erin")
    assert blocker is not None and blocker.id is not None
    waiting = await client.submit("alpha", "jobservice.noop", depends_on=[blocker.id],
                                  owner="erin", context="portal")
    other = await client.submit("beta", "tests.echo", {"value": 1}, owner="fred",
                                context="portal", pending=True)
    third = await client.submit("beta", "jobservice.noop", pending=True, owner="fred")
    assert waiting is not None and other is not None and third is not None

    async def listed(*filters: str) -> list[str]:
        out = json.loads(await cli_output(database_url, "jobs", "list", "--json", *filters))
        return [job["id"] for job in out["jobs"]]

    everything = await listed()
    assert everything == [str(j.id) for j in (third, other, waiting, blocker)]  # newest first
    assert await listed("--tenant", "beta") == [str(third.id), str(other.id)]
    assert await listed("--owner", "erin") == [str(waiting.id), str(blocker.id)]
    assert await listed("--context", "portal") == [str(other.id), str(waiting.id)]
    assert await listed("--job-class", "tests.echo") == [str(other.id)]
    assert await listed("--dependency-state", "waiting") == [str(waiting.id)]
    assert await listed("--dependency-state", "none", "--tenant", "alpha") == [str(blocker.id)]
    assert await listed("--status", "pending", "--owner", "fred") == [str(third.id),
                                                                      str(other.id)]
    assert await listed("--status", "SUCCEEDED") == []
    page = json.loads(await cli_output(database_url, "jobs", "list", "--json",
                                           "--page-size", "3", "--page", "2"))
    assert [j["id"] for j in page["jobs"]] == [str(blocker.id)] and page["has_more"] is False
    first_page = json.loads(await cli_output(database_url, "jobs", "list", "--json",
                                                 "--page-size", "3"))
    assert first_page["has_more"] is True and len(first_page["jobs"]) == 3
    table = await cli_output(database_url, "jobs", "list", "--context", "portal")
    header, *rows = table.splitlines()
    assert header.split()[:4] == ["ID", "TENANT", "JOB_CLASS", "STATUS"]
    assert str(waiting.id) in table and "waiting" in table and str(third.id) not in table
    assert "page 1: 2 job(s)" in rows[-1]
