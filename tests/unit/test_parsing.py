"""Pure validation of submissions (no broker, no database)."""

from __future__ import annotations

import json
import uuid

import pytest

from jobservice.intake import Rejection, parse_submission
from jobservice.jobs.registry import JobRegistry
from jobservice.model import JobStatus, SubmitMessage
from jobservice.store import NewJob
from jobservice.submission import SubmissionRefused, _is_plain, _tree_job, build_job

REGISTRY = JobRegistry.default()


def parse(body: object, max_bytes: int = 10_000) -> NewJob | Rejection:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_submission(raw, REGISTRY, max_bytes)


def test_valid_submission_becomes_a_new_job_with_defaults() -> None:
    job = parse({"tenant": "a", "job_class": "jobservice.sleep", "parameters": {"seconds": 1}})
    assert isinstance(job, NewJob)
    assert job.status is JobStatus.QUEUED and job.priority == 0
    assert job.parameters == {"seconds": 1.0, "ticks": 10}  # defaults filled in
    assert isinstance(job.id, uuid.UUID)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xff\xfe not utf-8", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        ([1, 2], "invalid_message"),
        ({"job_class": "jobservice.noop"}, "invalid_message"),
        ({"tenant": "a b", "job_class": "jobservice.noop"}, "invalid_message"),
        ({"tenant": "a", "job_class": "jobservice.noop", "priority": 1001}, "invalid_message"),
        ({"tenant": "a", "job_class": "jobservice.noop", "surprise": 1}, "invalid_message"),
        ({"tenant": "a", "job_class": "nope"}, "unknown_job_class"),
        ({"tenant": "a", "job_class": "jobservice.sleep", "parameters": {"seconds": -1}},
         "invalid_parameters"),
        ({"tenant": "a", "job_class": "jobservice.noop", "parameters": {"x": 1}},
         "invalid_parameters"),
        ({"tenant": "a", "job_class": "jobservice.noop", "x": "y" * 20_000}, "message_too_large"),
    ],
)
def test_bad_input_is_rejected_with_its_code(body: object, code: str) -> None:
    result = parse(body, max_bytes=10_000 if code != "invalid_json" else 10_000_000)
    assert isinstance(result, Rejection)
    assert result.code == code, result


def test_composite_fields_become_a_normalized_submission() -> None:
    parent, existing = uuid.uuid4(), uuid.uuid4()
    result = parse({"id": str(parent), "tenant": "a", "job_class": "jobservice.steps",
                    "context": "portal", "environment": {"k": 1},
                    "selected_elements": [{"type": "file", "id": 3}],
                    "steps": [{"name": "s", "job_class": "jobservice.sleep",
                               "config": {"seconds": 0}}],
                    "on_success": [{"tenant": "b", "job_class": "jobservice.noop",
                                    "depends_on": [str(existing), str(parent)]}]},
                   max_bytes=100_000)
    assert isinstance(result, NewJob) and result.spec is not None
    assert result.context == "portal" and result.tenants == {"a", "b"}
    assert result.parameters == {"steps": [{"name": "s", "job_class": "jobservice.sleep",
                                            "config": {"seconds": 0.0, "ticks": 10}}]}
    [child] = result.spec["on_success"]
    assert uuid.UUID(child["id"])  # assigned at submission
    assert child["context"] == "admin" and child["status"] == "QUEUED"
    assert result.external_dependencies == {existing}  # the parent is part of the submission
    plain = parse({"tenant": "a", "job_class": "jobservice.noop", "depends_on": []})
    assert isinstance(plain, NewJob) and plain.spec is None


@pytest.mark.parametrize(("extra", "code"), [
    ({"depends_on": ["{self}"]}, "dependency_cycle"),
    ({"initial_status": "PENDING", "depends_on": [str(uuid.uuid4())]}, "invalid_message"),
    ({"on_success": [{"tenant": "a", "job_class": "jobservice.noop",
                      "initial_status": "PENDING"}]}, "invalid_message"),
    ({"steps": [{"name": "x", "job_class": "jobservice.noop"}]}, "invalid_message"),
    ({"on_success": [{"tenant": "a", "job_class": "nope"}]}, "unknown_job_class"),
])
def test_composite_submissions_that_cannot_work_are_refused(extra: dict[str, object],
                                                            code: str) -> None:
    job_id = str(uuid.uuid4())
    body = json.loads(json.dumps({"id": job_id, "tenant": "a", "job_class": "jobservice.noop",
                                  **extra}).replace("{self}", job_id))
    result = parse(body)
    assert isinstance(result, Rejection) and result.code == code, result


def test_retry_policy_and_run_after_are_taken_from_the_submission() -> None:
    result = parse({"tenant": "a", "job_class": "jobservice.noop", "max_retries": 3,
                    "retry_backoff_s": 0.5, "run_after": "2030-01-01T00:00:00Z"})
    assert not isinstance(result, Rejection)
    assert (result.max_retries, result.retry_backoff_s) == (3, 0.5)
    assert result.run_after is not None and result.run_after.year == 2030


def test_retry_policy_defaults_to_the_job_type_with_no_retries() -> None:
    result = parse({"tenant": "a", "job_class": "jobservice.noop"})
    assert not isinstance(result, Rejection)
    assert (result.max_retries, result.retry_backoff_s, result.run_after) == (0, 1.0, None)


@pytest.mark.parametrize("field", [{"max_retries": -1}, {"retry_backoff_s": -0.1},
                                   {"run_after": "2030-01-01T00:00:00"}, {"max_retries": "x"}])
def test_bad_retry_fields_are_refused(field: dict[str, object]) -> None:
    result = parse({"tenant": "a", "job_class": "jobservice.noop", **field})
    assert isinstance(result, Rejection) and result.code == "invalid_message"


def test_schema_errors_carry_the_field_location() -> None:
    result = parse({"tenant": "a", "job_class": "jobservice.noop", "priority": "high"})
    assert isinstance(result, Rejection)
    assert result.details[0]["loc"] == ["priority"]


PLAIN = [
    {"tenant": "a", "job_class": "jobservice.noop"},
    {"tenant": "a", "job_class": "jobservice.sleep", "parameters": {"seconds": 1.5, "ticks": 3},
     "priority": 7, "description": "d", "owner": "o", "initial_status": "PENDING",
     "expiration_date": "2030-01-01T00:00:00Z", "run_after": "2029-01-01T00:00:00+02:00",
     "max_retries": 2, "retry_backoff_s": 0.5, "context": "ops"},
    {"tenant": "b", "job_class": "jobservice.fail", "parameters": {"message": "no"}},
]


@pytest.mark.parametrize("body", PLAIN)
def test_a_plain_submission_builds_the_job_its_tree_would(body: dict[str, object]) -> None:
    """build_job's shortcut for the usual submission (no tree) gives the very NewJob of the
    general path."""
    message = SubmitMessage.model_validate({"id": str(uuid.uuid4()), **body})
    assert _is_plain(message)
    assert build_job(message, REGISTRY) == _tree_job(message, REGISTRY, 1000, 100)


@pytest.mark.parametrize(
    ("body", "max_parameters", "max_jobs"),
    [
        ({"tenant": "a", "job_class": "no.such"}, 1000, 100),
        ({"tenant": "a", "job_class": "jobservice.command"}, 1000, 100),
        ({"tenant": "a", "job_class": "jobservice.sleep", "parameters": {"seconds": -1}},
         1000, 100),
        ({"tenant": "a", "job_class": "jobservice.fail",
          "parameters": {"message": "x", "extra": 1}}, 0, 100),
        ({"tenant": "a", "job_class": "jobservice.noop"}, 1000, 0),
    ],
)
def test_a_plain_submission_is_refused_as_its_tree_would_be(
        body: dict[str, object], max_parameters: int, max_jobs: int) -> None:
    message = SubmitMessage.model_validate(body)
    with pytest.raises(SubmissionRefused) as plain:
        build_job(message, REGISTRY, max_parameters, max_jobs)
    with pytest.raises(SubmissionRefused) as tree:
        _tree_job(message, REGISTRY, max_parameters, max_jobs)
    assert (plain.value.code, str(plain.value), plain.value.details) == \
           (tree.value.code, str(tree.value), tree.value.details)


def test_a_submission_with_anything_around_it_is_not_plain() -> None:
    base = {"tenant": "a", "job_class": "jobservice.noop"}
    for extra in ({"depends_on": [str(uuid.uuid4())]},
                  {"on_success": [{"tenant": "a", "job_class": "jobservice.noop"}]},
                  {"environment": {"k": "v"}}, {"selected_elements": []}):
        assert not _is_plain(SubmitMessage.model_validate({**base, **extra}))
