"""`jobservice submit` and `jobservice control`: the installed console script against a running
instance, replies printed as JSON, exit status 0 only for an accepted request."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import asyncpg

from jobservice.client import JobClient
from jobservice.service import JobService
from tests.conftest import AMQP_URL, wait_for_status

# The console script users run, installed beside the interpreter (pip install .).
CONSOLE_SCRIPT = shutil.which("jobservice", path=str(Path(sys.executable).parent)) or "jobservice"


async def _cli(namespace: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "JOBSERVICE_AMQP_URL": AMQP_URL, "JOBSERVICE_NAMESPACE": namespace}
    process = await asyncio.create_subprocess_exec(
        CONSOLE_SCRIPT, "--log-format", "text", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_submit_and_control_from_the_command_line(
    service: JobService, client: JobClient, namespace: str, db: asyncpg.Connection
) -> None:
    job_id = uuid.uuid4()
    async with client.subscribe("#") as events:
        code, out, _ = await _cli(
            namespace, "submit", "--tenant", "cli-tenant", "--job-class", "jobservice.sleep",
            "--param", "seconds=30", "--param", "ticks=30", "--priority", "7",
            "--owner", "carol", "--id", str(job_id))
        assert code == 0, out
        assert json.loads(out) == {"ok": True, "id": str(job_id), "status": "QUEUED"}
        await wait_for_status(events, job_id, "RUNNING")
        code, out, _ = await _cli(namespace, "control", "stop", str(job_id))
        assert code == 0 and json.loads(out)["ok"] is True, out
        await wait_for_status(events, job_id, "ABORTED")
    row = await db.fetchrow("SELECT tenant, priority, owner, status FROM t_job_info "
                            "WHERE id = $1", job_id)
    assert row is not None and dict(row) == {"tenant": "cli-tenant", "priority": 7,
                                             "owner": "carol", "status": "ABORTED"}
    params = dict(await db.fetch("SELECT name, value FROM t_job_parameters WHERE job_id = $1",
                                 job_id))
    assert params == {"seconds": "30.0", "ticks": "30"}  # stored as the parameter model made them


async def test_refusals_print_the_error_and_exit_non_zero(
    service: JobService, namespace: str, db: asyncpg.Connection
) -> None:
    code, out, _ = await _cli(namespace, "submit", "--tenant", "t", "--job-class",
                              "nobody.registered.this")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "unknown_job_class"
    code, out, _ = await _cli(namespace, "control", "enqueue", str(uuid.uuid4()))
    assert code == 1
    assert json.loads(out)["error"]["code"] == "not_found"
    # bad input on the command line itself: a clear message, nothing sent
    code, _, err = await _cli(namespace, "submit", "--tenant", "t", "--job-class",
                              "jobservice.noop", "--parameters", "{not json")
    assert code == 2 and "--parameters" in err and "Traceback" not in err
    code, _, err = await _cli(namespace, "control", "stop", "not-a-uuid")
    assert code == 2 and "not-a-uuid" in err and "Traceback" not in err
    assert await db.fetchval("SELECT count(*) FROM t_job_info") == 0
