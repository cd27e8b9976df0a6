"""Execution hooks used by the tests (JOBSERVICE_HOOKS=tests.support.hooks)."""

from __future__ import annotations

from typing import Any

from jobservice.hooks import HookJob


def before_job(job: HookJob, parameters: dict[str, Any]) -> dict[str, Any] | None:
    if job.job_class != "tests.echo":
        return None
    if parameters.get("value") == "explode-before":
        raise ValueError("the before hook refuses this job")
    if parameters.get("value") == "change-me":
        return {**parameters, "value": f"changed by the hook (attempt {job.attempt})"}
    return None


async def after_job(job: HookJob, result: Any) -> Any:
    if job.job_class != "tests.echo" or not isinstance(result, dict):
        return None
    if result.get("echo") == "explode-after":
        raise KeyError("the after hook refuses this result")
    if result.get("echo") == "wrap-me":
        return {"wrapped": result}
    return None
