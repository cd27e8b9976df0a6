"""`jobservice run | migrate | submit | control | jobs | schemas | demo | bench`."""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from jobservice.config import Settings

# Kept here (not imported from jobservice.bench) so that `--help` stays cheap.
SCENARIO_NAMES = ("throughput", "latency", "idle", "flood", "progress", "scale", "memory")
COMPLETION_NAMES = ("database", "events")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobservice", description=__doc__)
    parser.add_argument("--log-format", choices=["json", "text"], default="json",
                        help="log lines as JSON (default) or human-readable text")
    parser.add_argument("--log-level", default=None, help="overrides JOBSERVICE_LOG_LEVEL")
    sub = parser.add_subparsers(title="commands")

    run = sub.add_parser("run", help="run one service instance in the foreground")
    run.add_argument("--max-jobs", type=_positive(int), default=None, metavar="N",
                     help="claim N jobs, let them end, exit 0")
    run.add_argument("--max-seconds", type=_positive(float), default=None, metavar="S",
                     help="after S seconds stop claiming, drain, exit 0")
    run.add_argument("--max-memory", type=_positive(float), default=None, metavar="MB",
                     help="once resident memory exceeds MB, stop claiming, drain, exit 0")
    run.add_argument("--tenants", default=None, metavar="A,B",
                     help="only claim jobs of these tenants")
    run.add_argument("--exclude-tenants", default=None, metavar="C",
                     help="never claim jobs of these tenants")
    run.add_argument("--job-types", default=None, metavar="X,Y",
                     help="only claim jobs of these job types (job_class)")
    run.set_defaults(handler=_run)

    jobs = sub.add_parser("jobs", help="list, show and kick jobs (talks to the database)")
    jobs_sub = jobs.add_subparsers(title="jobs commands")
    retry = jobs_sub.add_parser(
        "retry", help="re-queue FAILED/ABORTED jobs: one id, or all matching the filters")
    retry.add_argument("id", nargs="?", default=None)
    retry.add_argument("--tenant", default=None)
    retry.add_argument("--job-class", "--job-type", dest="job_class", default=None)
    retry.add_argument("--error-type", default=None)
    retry.set_defaults(handler=_jobs_retry)
    show = jobs_sub.add_parser("show", help="a job, its parameters, attempts and log tail")
    show.add_argument("id")
    show.add_argument("--log-lines", type=int, default=20)
    show.add_argument("--locale", default="en", help="language of the messages (de, fr…)")
    show.add_argument("--json", action="store_true", help="one JSON document")
    show.set_defaults(handler=_jobs_show)
    from jobservice.jobs_cli import add_list_command

    add_list_command(jobs_sub, _settings_and_logs)

    migrate = sub.add_parser("migrate", help="apply the database migrations and exit")
    migrate.set_defaults(handler=_migrate)

    submit = sub.add_parser("submit", help="submit a job over AMQP and print the reply")
    submit.add_argument("--tenant", required=True)
    submit.add_argument("--job-class", required=True)
    submit.add_argument("--parameters", type=_json_object, default={}, help="JSON object")
    submit.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                        help="one parameter (value parsed as JSON, else taken as a string)")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--id", type=_job_id, default=None)
    submit.add_argument("--owner", default=None)
    submit.add_argument("--description", default=None)
    submit.add_argument("--pending", action="store_true", help="create as PENDING")
    submit.add_argument("--max-retries", type=int, default=None)
    submit.add_argument("--retry-backoff", type=float, default=None, metavar="SECONDS")
    submit.add_argument("--run-after", default=None, metavar="RFC3339",
                        help="not before this time (with a time zone)")
    submit.add_argument("--context", default=None, help="who the job is for (default admin)")
    submit.add_argument("--depends-on", action="append", default=[], metavar="ID",
                        help="a job this one waits for (repeatable)")
    submit.set_defaults(handler=_submit)

    control = sub.add_parser("control", help="stop, enqueue or retry a job")
    control.add_argument("action", choices=["stop", "enqueue", "retry"])
    control.add_argument("id", type=_job_id)
    control.set_defaults(handler=_control)

    schemas = sub.add_parser("schemas", help="write or check the JSON Schemas of the messages")
    schemas.add_argument("--dir", type=Path, default=Path("schemas"))
    schemas.add_argument("--check", action="store_true", help="exit 1 when they drifted")
    schemas.set_defaults(handler=_schemas)

    demo = sub.add_parser("demo", help="run the service with a demo workload, live progress")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep serving after the demo workload finished")
    demo.set_defaults(handler=_demo)

    bench = sub.add_parser("bench", help="measure the service (docs/benchmarks.md)")
    bench.add_argument("--scenario", default="throughput", choices=SCENARIO_NAMES,
                       help="throughput (default) | latency | idle | flood | progress | "
                            "scale | memory")
    bench.add_argument("--jobs", type=int, default=5000,
                       help="no-op jobs (throughput; progress: per phase)")
    bench.add_argument("--tenants", type=int, default=10)
    bench.add_argument("--pool-size", type=int, default=None,
                       help="default: JOBSERVICE_POOL_SIZE (memory: --memory-pool)")
    bench.add_argument("--instances", type=int, default=1,
                       help="service processes sharing the database and broker")
    bench.add_argument("--completion", default="database", choices=COMPLETION_NAMES,
                       help="throughput, latency: the jobs' times read from Postgres, the "
                            "end seen by polling it for SUCCEEDED jobs and an empty outbox, "
                            "as scripts/peers does (default), or from a subscriber receiving "
                            "their events on the same cores")
    bench.add_argument("--rate", type=float, default=750.0, help="latency: submissions/s")
    bench.add_argument("--duration", type=float, default=10.0, help="latency: seconds")
    bench.add_argument("--lone-jobs", type=int, default=20, help="idle: single jobs")
    bench.add_argument("--flood-jobs", type=int, default=10_000)
    bench.add_argument("--small-jobs", type=int, default=100,
                       help="flood: jobs of each of the 9 small tenants")
    bench.add_argument("--progress-jobs", type=int, default=200)
    bench.add_argument("--progress-steps", type=int, default=100_000)
    bench.add_argument("--progress-seconds", type=float, default=15.0,
                       help="progress: how long the long jobs run at least (longer where the "
                            "no-op load would outlast them: 2.5x its reference phase + 5 s)")
    bench.add_argument("--progress-phase-seconds", type=float, default=8.0,
                       help="progress: size each no-op phase to last about this long at the "
                            "rate a first probe of --jobs measured (0: exactly --jobs)")
    bench.add_argument("--progress-rounds", type=_positive(int), default=2,
                       help="progress: rounds of the six phases (each kind of long job twice "
                            "a round); a kind's rate is the mean of its runs")
    bench.add_argument("--rows", type=int, default=1_000_000,
                       help="scale: queued rows of the large table (small: 10,000)")
    bench.add_argument("--memory-pool", type=int, default=64)
    bench.add_argument("--queued", type=int, default=100_000, help="memory: queued jobs")
    bench.add_argument("--json", action="store_true", help="print only the JSON line")
    bench.set_defaults(handler=_bench)
    return parser


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number > 0 (anything else is a usage error)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    return parse


def _settings_and_logs(args: argparse.Namespace, **overrides: Any) -> Settings:
    from jobservice.logs import configure_logging

    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(args.log_level or settings.log_level, args.log_format)
    return settings


def _run(args: argparse.Namespace) -> int:
    from jobservice.service import JobService

    settings = _settings_and_logs(
        args, max_jobs=args.max_jobs, max_seconds=args.max_seconds,
        max_memory_mb=args.max_memory, tenants=args.tenants,
        exclude_tenants=args.exclude_tenants, job_types=args.job_types)
    service = JobService(settings)
    _tune_gc()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        service.request_stop()

            tg.start_soon(on_signals)
            await service.run()
            tg.cancel_scope.cancel()

    anyio.run(main, backend_options={"use_uvloop": settings.use_uvloop()})
    return service.exit_code


def _tune_gc() -> None:
    """Objects made at start-up (modules, settings, registries: most of the heap) are left
    out of every later collection, and the youngest generation is collected every 20,000
    net allocations instead of 700: a job's short-lived objects (messages, records, tasks)
    die by reference counting, and the cycle collector was 3.8 % of an instance's CPU at
    full load (py-spy; docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _migrate(args: argparse.Namespace) -> int:
    from jobservice.store import Store

    settings = _settings_and_logs(args)

    async def main() -> None:
        store = await Store.connect(settings.database_url, settings.database_schema, 2)
        try:
            applied = await store.migrate()
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        finally:
            await store.close()

    anyio.run(main)
    return 0


def _json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object, or a usage error naming what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _parse_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = dict(args.parameters)
    for item in args.param:
        name, _, raw = item.partition("=")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


def _submit(args: argparse.Namespace) -> int:
    from jobservice.client import JobClient

    settings = _settings_and_logs(args)

    async def main() -> int:
        async with JobClient(settings.amqp_url, settings.namespace) as client:
            reply = await client.submit(
                args.tenant, args.job_class, _parse_params(args),
                id=args.id, priority=args.priority,
                owner=args.owner, description=args.description, pending=args.pending,
                max_retries=args.max_retries, retry_backoff_s=args.retry_backoff,
                run_after=datetime.fromisoformat(args.run_after) if args.run_after else None,
                context=args.context, depends_on=args.depends_on or None, check=False)
        assert reply is not None
        print(reply.model_dump_json(exclude_none=True))
        return 0 if reply.ok else 1

    return anyio.run(main)


def _control(args: argparse.Namespace) -> int:
    from jobservice.client import JobClient

    settings = _settings_and_logs(args)

    async def main() -> int:
        async with JobClient(settings.amqp_url, settings.namespace) as client:
            reply = await client.control(args.action, args.id, check=False)
        assert reply is not None
        print(reply.model_dump_json(exclude_none=True))
        return 0 if reply.ok else 1

    return anyio.run(main)


def _jobs_retry(args: argparse.Namespace) -> int:
    from jobservice.store import Store

    settings = _settings_and_logs(args)
    if not any((args.id, args.tenant, args.job_class, args.error_type)):
        print("give a job id or at least one of --tenant, --job-class, --error-type",
              file=sys.stderr)
        return 2
    job_id = _uuid_or_exit(args.id) if args.id else None

    async def main() -> int:
        store = await Store.connect(settings.database_url, settings.database_schema, 2)
        try:
            kicked = await store.retry_jobs(job_id, args.tenant, args.job_class,
                                            args.error_type)
        finally:
            await store.close()
        for job in kicked:
            print(f"re-queued {job.id} ({job.tenant}, {job.job_class})")
        print(f"{len(kicked)} job(s) re-queued")
        return 0 if kicked or job_id is None else 1

    return anyio.run(main)


def _jobs_show(args: argparse.Namespace) -> int:
    from jobservice.jobs_cli import show_job

    settings = _settings_and_logs(args)
    return show_job(settings, _uuid_or_exit(args.id), max(0, args.log_lines), args.locale,
                    args.json)


def _uuid_or_exit(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        print(f"not a job id: {text!r}", file=sys.stderr)
        raise SystemExit(2) from None


def _schemas(args: argparse.Namespace) -> int:
    from jobservice.schemas import drifted_schemas, write_schemas

    if args.check:
        drifted = drifted_schemas(args.dir)
        for name in drifted:
            print(f"{args.dir / name} is out of date: run `jobservice schemas`", file=sys.stderr)
        return 1 if drifted else 0
    for path in write_schemas(args.dir):
        print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jobservice.demo import run_demo

    settings = _settings_and_logs(args)
    return run_demo(settings, keep_running=args.keep_running)


def _bench(args: argparse.Namespace) -> int:
    from jobservice.bench import BenchOptions, run_bench

    settings = _settings_and_logs(args)
    options = BenchOptions(
        jobs=args.jobs, tenants=args.tenants, instances=args.instances,
        pool_size=args.pool_size, rate=args.rate, duration_s=args.duration,
        lone_jobs=args.lone_jobs, flood_jobs=args.flood_jobs, small_jobs=args.small_jobs,
        progress_jobs=args.progress_jobs, progress_steps=args.progress_steps,
        progress_seconds=args.progress_seconds,
        progress_phase_seconds=args.progress_phase_seconds,
        progress_rounds=args.progress_rounds, large_rows=args.rows,
        memory_pool=args.memory_pool, memory_queued=args.queued, completion=args.completion)
    return run_bench(settings, args.scenario, options, json_only=args.json)


if __name__ == "__main__":
    sys.exit(main())
