"""`jobservice demo`: the service plus a demo workload, with a live table drawn from events."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobservice.client import JobClient
from jobservice.config import Settings
from jobservice.model import EventMessage, JobStatus
from jobservice.service import JobService

_FINAL = {s.value for s in JobStatus if s.is_final}
_COLOURS = {"PENDING": "grey50", "QUEUED": "cyan", "TO_BE_RUN": "blue", "RUNNING": "yellow",
            "SUCCEEDED": "green", "FAILED": "red", "ABORTED": "magenta"}


@dataclass
class DemoJob:
    tenant: str
    job_class: str
    priority: int
    parameters: dict[str, Any]
    label: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = "SUBMITTED"
    percent: int = 0
    error: str = ""


def demo_workload(speed: float = 1.0) -> list[DemoJob]:
    """Three tenants, priorities, a burst of no-ops, a failing job and one to stop."""
    def sleep(tenant: str, seconds: float, priority: int, label: str) -> DemoJob:
        return DemoJob(tenant, "jobservice.sleep", priority,
                       {"seconds": round(seconds * speed, 3), "ticks": 20}, label)

    jobs = [
        sleep("acme", 6, 0, "nightly import"),
        sleep("acme", 3, 5, "report"),
        sleep("acme", 2, 50, "urgent report (priority 50)"),
        sleep("globex", 8, 0, "video encode"),
        sleep("globex", 4, 10, "thumbnails"),
        sleep("initech", 5, 0, "TPS reports"),
        sleep("initech", 1, 0, "cleanup"),
        DemoJob("globex", "jobservice.fail", 20, {"message": "upstream API returned 503"},
                "failing sync"),
        sleep("initech", 30, 100, "long job (stopped by the demo)"),
    ]
    jobs += [DemoJob("acme", "jobservice.noop", 0, {}, f"burst {n}") for n in range(8)]
    return jobs


def _table(jobs: list[DemoJob], metrics_url: str, started: float) -> Group:
    table = Table(title="jobservice demo — every cell comes from an AMQP event", expand=True)
    for name in ("job", "tenant", "type", "prio", "status", "progress", "note"):
        table.add_column(name, no_wrap=name != "note")
    for job in jobs:
        bar = "█" * (job.percent // 10) + "·" * (10 - job.percent // 10)
        table.add_row(str(job.id)[:8], job.tenant, job.job_class.removeprefix("jobservice."),
                      str(job.priority), Text(job.status, style=_COLOURS.get(job.status, "")),
                      f"{bar} {job.percent:3d}%", job.error or job.label)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    footer = Text(f"{time.monotonic() - started:5.1f}s  " + "  ".join(
        f"{k}: {v}" for k, v in sorted(counts.items())) + f"   metrics: {metrics_url}")
    return Group(table, footer)


def _apply(jobs: dict[uuid.UUID, DemoJob], event: EventMessage) -> DemoJob | None:
    job = jobs.get(event.job_id)
    if job is None:
        return None
    job.status = event.status.value
    job.percent = event.percent_completed
    if event.error is not None:
        job.error = f"{event.error.type}: {event.error.message}"
    return job


async def demo_main(settings: Settings, keep_running: bool, console: Console,
                    speed: float = 1.0) -> int:
    service = JobService(settings)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run)
        await service.ready.wait()
        assert service.http is not None
        metrics_url = f"http://127.0.0.1:{service.http.port}/metrics"
        workload = demo_workload(speed)
        jobs = {job.id: job for job in workload}
        to_stop = next(job for job in workload if "stopped" in job.label)
        async with JobClient(settings.amqp_url, settings.namespace) as client, \
                client.subscribe("#") as events:
            for job in workload:
                await client.submit(job.tenant, job.job_class, job.parameters, id=job.id,
                                    priority=job.priority, description=job.label,
                                    owner="demo")
            stop_at: float | None = None  # two seconds after the long job starts
            live = Live(_table(workload, metrics_url, started), console=console,
                        refresh_per_second=8) if console.is_terminal else None
            if live is not None:
                live.start()
            try:
                while not all(j.status in _FINAL for j in workload):
                    with anyio.move_on_after(0.25):
                        event = await events.get()
                        changed = _apply(jobs, event)
                        if changed is not None and live is None:
                            console.print(f"{event.at:%H:%M:%S.%f} {changed.tenant:8} "
                                          f"{changed.job_class:17} {str(changed.id)[:8]} "
                                          f"{event.previous_status or '-':>9} -> "
                                          f"{event.status:9} {event.percent_completed:3d}% "
                                          f"{changed.error}", highlight=False)
                    if to_stop.status == "RUNNING" and stop_at is None:
                        stop_at = time.monotonic() + 2.0 * speed
                    if stop_at is not None and time.monotonic() >= stop_at:
                        await client.stop(to_stop.id)
                        stop_at = float("inf")
                    if live is not None:
                        live.update(_table(workload, metrics_url, started))
                    if any(j.status == "SUBMITTED" for j in workload) and \
                            time.monotonic() - started > 120:
                        raise TimeoutError("demo jobs did not all start within 120 s")
            finally:
                if live is not None:
                    live.update(_table(workload, metrics_url, started))
                    live.stop()
        _summary(console, workload, time.monotonic() - started)
        if keep_running:
            console.print(f"still serving (metrics: {metrics_url}); Ctrl-C to stop")
            await anyio.sleep_forever()
        service.request_stop()
    failed = [j for j in workload if j.status not in ("SUCCEEDED", "FAILED", "ABORTED")]
    return 1 if failed else 0


def _summary(console: Console, workload: list[DemoJob], seconds: float) -> None:
    table = Table(title=f"demo finished in {seconds:.1f}s")
    for name in ("tenant", "SUCCEEDED", "FAILED", "ABORTED"):
        table.add_column(name)
    for tenant in sorted({j.tenant for j in workload}):
        mine = [j for j in workload if j.tenant == tenant]
        table.add_row(tenant, *(str(sum(j.status == s for j in mine))
                                for s in ("SUCCEEDED", "FAILED", "ABORTED")))
    console.print(table)


def run_demo(settings: Settings, keep_running: bool) -> int:
    if "JOBSERVICE_POOL_SIZE" not in os.environ:
        settings = settings.model_copy(update={"pool_size": 4})
    console = Console()
    if console.is_terminal:
        logging.getLogger().setLevel(logging.WARNING)  # keep the live table readable
    result = 0

    async def main() -> None:
        nonlocal result
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()

            tg.start_soon(on_signals)
            result = await demo_main(settings, keep_running, console)
            tg.cancel_scope.cancel()

    anyio.run(main)
    return result
