"""Logging set-up: JSON lines by default (for log collectors), or human-readable text."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed through `extra=` and is context.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = vars(record)
        # the context keys by one set difference, not a test of each of ~25 attributes: this
        # runs for every status change at the default level (four lines a job)
        for key in sorted(fields.keys() - _STANDARD):
            value = fields[key]
            if value is not None:
                line[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


_transitions = logging.getLogger("jobservice.transitions")


def log_transition(job_id: object, tenant: str, job_class: str, status: str,
                   level: int = logging.INFO, detail: str = "") -> None:
    """One line per status change, with the job's context as structured fields."""
    if _transitions.isEnabledFor(level):
        _transitions.log(level, "job %s %s%s", job_id, status, f": {detail}" if detail else "",
                         extra={"job_id": str(job_id), "tenant": tenant,
                                "job_class": job_class, "status": status})


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    # What no line of ours shows, not gathered for each record (the logging HOWTO's
    # "Optimization"): the caller's file and line (a walk up the stack), thread, process.
    # A line per status change took 12.5 us, 7 without these and with the formatter's
    # set difference (measured, to /dev/null).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
