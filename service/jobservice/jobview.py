"""`jobservice jobs show`: a job, its parameters, its attempts and the end of its log, as
plain text for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

_JOB_FIELDS = ("id", "tenant", "job_class", "status", "priority", "owner", "context",
               "description", "percent_completed", "message", "attempt", "instance_id",
               "dependency_state", "max_retries", "retry_backoff_s",
               "failures", "reschedules", "run_after", "expiration_date", "created_at",
               "queued_at", "claimed_at", "started_at", "ended_at", "error_type", "error_message")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_job(job: dict[str, Any], runs: Sequence[dict[str, Any]],
               log_lines: Sequence[dict[str, Any]]) -> str:
    out = [f"{name:<18} {_text(job.get(name))}" for name in _JOB_FIELDS if name in job]
    if job.get("result") is not None:
        out.append(f"{'result':<18} {json.dumps(job['result'])}")
    out.append("")
    out.append("parameters:")
    params = job.get("parameters") or {}
    out += [f"  {name} = {json.dumps(value)}" for name, value in params.items()] or ["  (none)"]
    out += _composite(job)
    out.append("")
    in_progress = job.get("status") in ("TO_BE_RUN", "RUNNING")
    out.append(f"attempts ({len(runs) + in_progress}):")
    out.append(f"  {'#':>3}  {'status':<10} {'instance':<24} {'started':<32} "
               f"{'duration_s':>10}  error")
    for run in runs:
        error = ""
        if run.get("error_type") or run.get("error_message"):
            error = f"{run.get('error_type') or ''}: {run.get('error_message') or ''}".strip(": ")
        out.append(f"  {run['attempt']:>3}  {run['status']:<10} "
                   f"{_text(run.get('instance_id')):<24} "
                   f"{_text(run.get('started_at') or run.get('claimed_at')):<32} "
                   f"{_text(run.get('duration_s')):>10}  {error}")
    if in_progress:  # its history row is written when it ends
        out.append(f"  {job['attempt']:>3}  {job['status']:<10} "
                   f"{_text(job.get('instance_id')):<24} "
                   f"{_text(job.get('started_at') or job.get('claimed_at')):<32} "
                   f"{'-':>10}  (in progress)")
    last_trace = next((r["stack_trace"] for r in reversed(runs) if r.get("stack_trace")), None)
    if last_trace:
        out.append("")
        out.append("stack trace of the last failed attempt:")
        out += ["  " + line for line in last_trace.rstrip().splitlines()]
    out.append("")
    out.append(f"log (last {len(log_lines)} line(s)):")
    for line in log_lines:
        out.append(f"  [{line['attempt']}] {_text(line['at'])} {line['level'].upper():<8} "
                   f"{line['message']}")
    return "\n".join(out)


def _composite(job: dict[str, Any]) -> list[str]:
    """Elements, environment, dependencies, dependents and on_success submissions."""
    out: list[str] = []
    for name in ("selected_elements", "environment"):
        if job.get(name) is not None:
            out.append(f"{name:<18} {json.dumps(job[name])}")
    for title, key in (("depends on", "depends_on"), ("dependents", "dependents")):
        if job.get(key):
            out.append(f"{title}:")
            out += [f"  {d['id']}  {d['status']:<9}  {d['job_class']}" for d in job[key]]
    if job.get("on_success"):
        out.append("on success:")
        out += [f"  {s['id']}  {s['job_class']}  (tenant {s['tenant']})"
                for s in job["on_success"]]
    return out
