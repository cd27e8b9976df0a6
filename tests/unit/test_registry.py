"""Job type registration: built-ins, modules, entry points, refusing clashes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jobservice.jobs.base import Job, JobContext, NoParameters
from jobservice.jobs.registry import JobRegistry, UnknownJobClass


def test_builtins_and_configured_modules_are_registered() -> None:
    registry = JobRegistry.default(["tests.support.jobs"])
    assert {"jobservice.noop", "jobservice.sleep", "jobservice.fail",
            "tests.wait_forever"} <= set(registry.names())
    assert "jobservice.command" not in registry  # off: not in this version
    with pytest.raises(UnknownJobClass):
        registry.get("nope")


def test_entry_points_register_modules_and_classes(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_jobs.py").write_text(
        "from jobservice.jobs.base import Job\n"
        "class A(Job):\n    name = 'ep.a'\n    async def run(self, ctx):\n        return 1\n"
        "class B(Job):\n    name = 'ep.b'\n    async def run(self, ctx):\n        return 2\n")
    dist = tmp_path / "ep_jobs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-jobs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[jobservice.jobs]\nwhole = ep_jobs\none = ep_jobs:B\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = JobRegistry.default()
    assert {"ep.a", "ep.b"} <= set(registry.names())
    sys.modules.pop("ep_jobs", None)


def test_two_types_with_one_name_are_refused() -> None:
    class First(Job[NoParameters]):
        name = "dup"

        async def run(self, ctx: JobContext) -> None:
            return None

    class Second(First):
        name = "dup"

    registry = JobRegistry()
    registry.register(First)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Second)
