"""Job types by name: built-ins, the `jobservice.jobs` entry points and configured modules."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from jobservice.jobs.base import Job

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jobservice.jobs"
# CONTRACT section 7; enabled by JOBSERVICE_COMMAND_JOBS once it exists (a later issue).
COMMAND_JOB_CLASS = "jobservice.command"


class UnknownJobClass(LookupError):
    pass


class JobRegistry:
    """The job types this instance may run; producers can only ask for these."""

    def __init__(self) -> None:
        self._types: dict[str, type[Job[Any]]] = {}

    def register(self, job_type: type[Job[Any]]) -> type[Job[Any]]:
        if not job_type.name:
            raise ValueError(f"{job_type.__qualname__} has no `name`")
        known = self._types.get(job_type.name)
        if known is not None and known is not job_type:
            raise ValueError(f"job type {job_type.name!r} is registered twice "
                             f"({known.__module__} and {job_type.__module__})")
        self._types[job_type.name] = job_type
        return job_type

    def get(self, name: str) -> type[Job[Any]]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobClass(f"job_class {name!r} is not registered") from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)

    def register_module(self, module: ModuleType | str) -> None:
        """Register every Job subclass with a `name` defined in `module`."""
        if isinstance(module, str):
            module = importlib.import_module(module)
        for job_type in _job_types_in(module):
            self.register(job_type)

    def load_entry_points(self) -> None:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            target = entry.load()
            if inspect.ismodule(target):
                self.register_module(target)
            elif inspect.isclass(target) and issubclass(target, Job):
                self.register(target)
            else:
                raise TypeError(f"entry point {entry.name!r} is neither a module nor a Job class")

    @classmethod
    def default(cls, job_modules: Iterable[str] = ()) -> JobRegistry:
        """Built-ins, then entry points, then `JOBSERVICE_JOB_MODULES`."""
        from jobservice.jobs import builtin, steps

        registry = cls()
        registry.register_module(builtin)
        registry.register_module(steps)
        registry.load_entry_points()
        for name in job_modules:
            registry.register_module(name)
        log.info("job types: %s", ", ".join(registry.names()))
        return registry


def _job_types_in(module: ModuleType) -> Iterator[type[Job[Any]]]:
    for value in vars(module).values():
        if (inspect.isclass(value) and issubclass(value, Job) and value is not Job
                and value.__module__ == module.__name__ and value.name):
            yield value
