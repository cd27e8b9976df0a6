"""Command-line flags: bad values are usage errors (run limits, bench options), good ones reach
the settings."""

from __future__ import annotations

import pytest

from jobservice.cli import _parser
from jobservice.config import Settings


@pytest.mark.parametrize("argv", [["--max-jobs", "0"], ["--max-seconds", "-1"],
                                  ["--max-memory", "lots"], ["--max-jobs", "1.5"]])
def test_bad_limits_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["run", *argv])
    assert exit_.value.code == 2


def test_flags_become_settings() -> None:
    args = _parser().parse_args(["run", "--max-jobs", "3", "--max-memory", "512",
                                 "--tenants", "a, b", "--job-types", "x"])
    settings = Settings(max_jobs=args.max_jobs, max_memory_mb=args.max_memory,
                        tenants=args.tenants, job_types=args.job_types)
    assert (settings.max_jobs, settings.max_memory_mb) == (3, 512.0)
    assert settings.tenants == ["a", "b"] and settings.job_types == ["x"]
    assert settings.exclude_tenants is None and settings.max_seconds is None


def test_filters_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSERVICE_EXCLUDE_TENANTS", "c,d")
    monkeypatch.setenv("JOBSERVICE_TENANTS", "")
    settings = Settings()
    assert settings.exclude_tenants == ["c", "d"] and settings.tenants is None


@pytest.mark.parametrize("argv", [["--progress-rounds", "0"], ["--completion", "guess"]])
def test_bad_bench_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["bench", "--scenario", "progress", *argv])
    assert exit_.value.code == 2
