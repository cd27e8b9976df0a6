"""`jobservice jobs list` and the data of `jobservice jobs show` (rendered by `jobview`), with
messages rendered in the reader's locale."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import anyio

from jobservice.config import Settings
from jobservice.i18n import MessageCatalogs
from jobservice.model import JobStatus
from jobservice.store import JobFilter, Store

DEPENDENCY_STATES = ("none", "waiting", "satisfied", "failed")
LIST_COLUMNS = ("id", "tenant", "job_class", "status", "owner", "context", "dependency_state",
                "percent_completed", "created_at", "message")


def add_list_command(jobs_sub: Any,
                     settings_and_logs: Callable[[argparse.Namespace], Settings]) -> None:
    """`jobservice jobs list` (the `jobs` group itself is built in `cli`)."""
    listing = jobs_sub.add_parser("list", help="list jobs, newest first, with filters")
    listing.add_argument("--tenant")
    listing.add_argument("--status", action="append", type=str.upper,
                         choices=[s.value for s in JobStatus],
                         help="repeat for several statuses")
    listing.add_argument("--job-class", "--job-type", dest="job_class")
    listing.add_argument("--owner")
    listing.add_argument("--context")
    listing.add_argument("--dependency-state", choices=DEPENDENCY_STATES,
                         help="none (no dependencies), waiting, satisfied or failed")
    listing.add_argument("--page", type=int, default=1, help="page number, from 1")
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--locale", default="en", help="language of the messages")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(handler=lambda args: _list(args, settings_and_logs(args)))


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    async def main() -> int:
        store = await Store.connect(settings.database_url, settings.database_schema, 2)
        try:
            return await work(store)
        finally:
            await store.close()

    return anyio.run(main)


def render_message(catalogs: MessageCatalogs, context: str, key: str | None,
                   params: Any, locale: str) -> str | None:
    if key is None:
        return None
    return catalogs.render(context, key, params if isinstance(params, dict) else {}, locale)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    if args.page < 1 or not 1 <= args.page_size <= 10_000:
        print("--page must be >= 1 and --page-size between 1 and 10000")
        return 2
    catalogs = MessageCatalogs(settings.message_dirs)
    where = JobFilter(args.tenant, args.status, args.job_class, args.owner, args.context,
                      args.dependency_state)

    async def work(store: Store) -> int:
        rows = await store.list_jobs(where, args.page_size + 1,
                                     (args.page - 1) * args.page_size)
        more = len(rows) > args.page_size
        jobs = [_listed(row, catalogs, args.locale) for row in rows[: args.page_size]]
        if args.json:
            print(json.dumps({"page": args.page, "page_size": args.page_size,
                              "has_more": more, "jobs": jobs}, default=_json_default))
        else:
            print(format_table(jobs, LIST_COLUMNS))
            print(f"page {args.page}: {len(jobs)} job(s)"
                  + (f"; more on --page {args.page + 1}" if more else ""))
        return 0

    return _with_store(settings, work)


def _listed(row: dict[str, Any], catalogs: MessageCatalogs, locale: str) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("message_key", "message_params")}
    out["id"] = str(row["id"])
    out["message"] = render_message(catalogs, row["context"], row["message_key"],
                                    row["message_params"], locale)
    return out


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table (no colours: it is for terminals and for pipes)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def show_job(settings: Settings, job_id: uuid.UUID, log_lines: int, locale: str,
             as_json: bool) -> int:
    """`jobservice jobs show ID`: the job, its attempts, dependencies and log tail, with its
    messages rendered in `locale`."""
    from jobservice.jobview import render_job

    catalogs = MessageCatalogs(settings.message_dirs)

    async def work(store: Store) -> int:
        job = await store.job_details(job_id, log_lines)
        if job is None:
            print(f"no job with id {job_id}", file=sys.stderr)
            return 1
        job["message"] = render_message(catalogs, job["context"], job["message_key"],
                                        job["message_params"], locale)
        for line in job["log"]:
            if line.get("message_key") is not None:
                line["message"] = catalogs.render(job["context"], line["message_key"],
                                                  line["message_params"] or {}, locale)
        if as_json:
            print(json.dumps(job, default=_json_default))
        else:
            print(render_job(job, job["runs"], job["log"]))
        return 0

    return _with_store(settings, work)
