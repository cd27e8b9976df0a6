"""Execution hooks: loading (entry points and settings) and how they chain."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from jobservice import hooks as hooks_module
from jobservice.hooks import HookFailed, HookJob, Hooks

JOB = HookJob(uuid.uuid4(), "alpha", "tests.echo", 1, None)


class _EntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name = name
        self._target = target

    def load(self) -> object:
        return self._target


async def test_hooks_from_entry_points_then_settings_chain_in_order(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def first_before(job: HookJob, parameters: dict[str, Any]) -> dict[str, Any]:
        calls.append("entry point")
        return {**parameters, "n": parameters["n"] + 1}

    entry = SimpleNamespace(before_job=first_before, after_job=lambda job, result: None)
    monkeypatch.setattr(hooks_module, "entry_points",
                        lambda group: [_EntryPoint("audit", entry)] if group ==
                        "jobservice.hooks" else [])
    hooks = Hooks.load(["tests.support.hooks"])
    assert hooks
    assert await hooks.before(JOB, {"n": 1, "value": "change-me"}) == {
        "n": 2, "value": "changed by the hook (attempt 1)"}
    assert calls == ["entry point"]
    assert await hooks.after(JOB, {"echo": "wrap-me"}) == {"wrapped": {"echo": "wrap-me"}}
    assert await hooks.after(JOB, {"echo": "x"}) == {"echo": "x"}  # None: unchanged


async def test_a_raising_or_misbehaving_hook_is_reported_by_name() -> None:
    hooks = Hooks([("bad", SimpleNamespace(before_job=lambda job, parameters: [1]))])
    with pytest.raises(HookFailed, match="before_job hook 'bad' raised TypeError"):
        await hooks.before(JOB, {})
    hooks = Hooks.load(["tests.support.hooks"])
    with pytest.raises(HookFailed) as failed:
        await hooks.before(JOB, {"value": "explode-before"})
    assert "ValueError" in failed.value.stack_trace


def test_an_object_without_hook_functions_is_refused() -> None:
    with pytest.raises(TypeError, match="neither before_job nor after_job"):
        Hooks.load(["json"])


def test_no_hooks_is_falsy() -> None:
    assert not Hooks()
