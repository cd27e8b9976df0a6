"""`jobservice run` as a real process, for tests that signal or kill it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import AMQP_URL
from tests.support.amqp import http_get

ROOT = Path(__file__).resolve().parents[2]


def spawn_service(database_url: str, namespace: str, *args: str,
                  **settings: str) -> subprocess.Popen[bytes]:
    """Start an instance; `args` are options of `jobservice run`, `settings` are
    JOBSERVICE_* variables without the prefix."""
    env = {**os.environ, "JOBSERVICE_DATABASE_URL": database_url,
           "JOBSERVICE_AMQP_URL": AMQP_URL, "JOBSERVICE_NAMESPACE": namespace,
           "JOBSERVICE_HTTP_PORT": "0", "JOBSERVICE_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update({f"JOBSERVICE_{k.upper()}": v for k, v in settings.items()})
    return subprocess.Popen([sys.executable, "-m", "jobservice.cli", "run", *args], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`jobservice ARGS...` against the test's database; output captured."""
    env = {**os.environ, "JOBSERVICE_DATABASE_URL": database_url,
           "JOBSERVICE_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "jobservice.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


async def cli_output(database_url: str, *args: str) -> str:
    """`jobservice ARGS...` against the test's database without blocking the event loop;
    its output (it must exit 0)."""
    env = {**os.environ, "JOBSERVICE_DATABASE_URL": database_url,
           "JOBSERVICE_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobservice.cli", "--log-format", "text", *args, env=env,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def spawn_ready(database_url: str, namespace: str, *args: str, timeout: float = 30,
                      **settings: str) -> subprocess.Popen[bytes]:
    """`spawn_service`, returning once its /readyz answers 200 (it consumes submissions)."""
    port = free_port()
    proc = spawn_service(database_url, namespace, *args, http_port=str(port),
                         http_host="127.0.0.1", **settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and proc.poll() is None:
        try:
            if (await http_get(port, "/readyz"))[0] == 200:
                return proc
        except OSError:  # not listening yet
            pass
        await asyncio.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"the instance did not become ready (exit code {proc.poll()})")
