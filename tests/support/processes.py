"""`jobservice run` as a real process, for tests that signal or kill it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import AMQP_URL

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
