"""Execution hooks: code of the deployment that runs before each job (and may change its
parameters) and after it (and may change its result).

A hook is any object (a module, a class, an instance) with a `before_job(job, parameters)`
and/or an `after_job(job, result)` function, plain or `async`; each returns the new value,
or None to leave it unchanged. Hooks come from the entry-point group `jobservice.hooks` and
from `JOBSERVICE_HOOKS` ("module" or "module:attribute", comma-separated), in that order. A
hook that raises fails that job (error type `hook_failed`), never the instance."""

from __future__ import annotations

import importlib
import inspect
import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jobservice.hooks"


@dataclass(frozen=True, slots=True)
class HookJob:
    """What a hook is told about the job it runs around."""

    id: UUID
    tenant: str
    job_class: str
    attempt: int
    owner: str | None


class HookFailed(Exception):
    """A hook raised: the job ends FAILED with this message and the hook's stack trace."""

    def __init__(self, hook: str, phase: str, error: BaseException) -> None:
        self.stack_trace = "".join(traceback.format_exception(error))[-50_000:]
        super().__init__(f"{phase} hook {hook!r} raised {type(error).__name__}: {error}")


class Hooks:
    def __init__(self, hooks: Iterable[tuple[str, object]] = ()) -> None:
        self._before = [(name, fn) for name, hook in hooks
                        if (fn := getattr(hook, "before_job", None)) is not None]
        self._after = [(name, fn) for name, hook in hooks
                       if (fn := getattr(hook, "after_job", None)) is not None]

    def __bool__(self) -> bool:
        return bool(self._before or self._after)

    async def before(self, job: HookJob, parameters: dict[str, Any]) -> dict[str, Any]:
        """The parameters the job will be built from, after every before-hook."""
        for name, fn in self._before:
            try:
                changed = await _call(fn, job, dict(parameters))
            except Exception as exc:
                raise HookFailed(name, "before_job", exc) from exc
            if changed is not None:
                if not isinstance(changed, dict):
                    raise HookFailed(name, "before_job", TypeError(
                        f"returned {type(changed).__name__}, not a dict of parameters"))
                parameters = changed
        return parameters

    async def after(self, job: HookJob, result: Any) -> Any:
        for name, fn in self._after:
            try:
                changed = await _call(fn, job, result)
            except Exception as exc:
                raise HookFailed(name, "after_job", exc) from exc
            if changed is not None:
                result = changed
        return result

    @classmethod
    def load(cls, references: Iterable[str] = ()) -> Hooks:
        """Entry points of `jobservice.hooks`, then `JOBSERVICE_HOOKS` references."""
        found: list[tuple[str, object]] = [
            (entry.name, entry.load()) for entry in entry_points(group=ENTRY_POINT_GROUP)]
        for reference in references:
            module_name, _, attribute = reference.partition(":")
            target: object = importlib.import_module(module_name)
            for part in filter(None, attribute.split(".")):
                target = getattr(target, part)
            found.append((reference, target))
        for name, hook in found:
            if not (hasattr(hook, "before_job") or hasattr(hook, "after_job")):
                raise TypeError(f"hook {name!r} has neither before_job nor after_job")
        if found:
            log.info("execution hooks: %s", ", ".join(name for name, _ in found))
        return cls(found)


async def _call(fn: Any, *args: Any) -> Any:
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value
