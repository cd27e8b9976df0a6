"""Stopping and starting the machine's shared RabbitMQ and PostgreSQL (fault tests only)."""

from __future__ import annotations

import asyncio
import os
import subprocess


async def _run(*argv: str, timeout: float = 120) -> None:
    await asyncio.to_thread(subprocess.run, list(argv), check=True, timeout=timeout,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def rabbitmq_stop_app() -> None:
    await _run("rabbitmqctl", "stop_app")


async def rabbitmq_start_app() -> None:
    await _run("rabbitmqctl", "start_app")
    await _run("rabbitmqctl", "await_startup")


def _pg_cluster() -> tuple[str, str]:
    return sorted(os.listdir("/etc/postgresql"))[0], "main"


async def postgres_outage(seconds: float, mode: str = "fast") -> None:
    """Stop PostgreSQL, wait, start it again. `fast`: a clean shutdown (connections are cut,
    everything committed is flushed first); `immediate`: a crash (what was not flushed is
    lost, unlogged tables are emptied by the crash recovery at the next start)."""
    version, name = _pg_cluster()
    try:
        await _run("pg_ctlcluster", "--skip-systemctl-redirect", "--mode", mode, version,
                   name, "stop")
        await asyncio.sleep(seconds)
    finally:
        await _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
