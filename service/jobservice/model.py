"""Job statuses, the transition table and the wire messages (CONTRACT sections 2-5)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    TO_BE_RUN = "TO_BE_RUN"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.ABORTED})

# Allowed status changes: target -> the statuses it may come from. The same table is enforced
# by the database trigger in sql/001_init.sql; a test keeps the two equal.
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        # enqueue; hand-back of a claimed/running job; retry of a final one
        {JobStatus.PENDING, JobStatus.TO_BE_RUN, JobStatus.RUNNING, JobStatus.FAILED,
         JobStatus.ABORTED}
    ),
    JobStatus.TO_BE_RUN: frozenset({JobStatus.QUEUED}),
    JobStatus.RUNNING: frozenset({JobStatus.TO_BE_RUN}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    # FAILED from QUEUED: expired when picked; from TO_BE_RUN: could not be prepared.
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.TO_BE_RUN, JobStatus.RUNNING}),
    JobStatus.ABORTED: frozenset(
        {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.TO_BE_RUN, JobStatus.RUNNING}
    ),
    JobStatus.PENDING: frozenset(),
}


class ErrorType(enum.StrEnum):
    """`error_type` values the service itself writes (a job's own exceptions use their class)."""

    EXPIRED = "expired"
    STOPPED = "stopped"
    INVALID_PARAMETERS = "invalid_parameters"
    UNKNOWN_JOB_CLASS = "unknown_job_class"
    RESULT_NOT_SERIALIZABLE = "result_not_serializable"
    RESCHEDULED_TOO_OFTEN = "rescheduled_too_often"
    HOOK_FAILED = "hook_failed"


TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"

# Submission fields that later issues add; refused with a clear error until they exist.
FUTURE_SUBMIT_FIELDS = frozenset(
    {"steps", "selected_elements", "environment", "depends_on", "on_success", "context"}
)


class SubmitMessage(BaseModel):
    """A job submission, published to `<namespace>.submit`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="SubmitMessage")

    id: UUID | None = Field(default=None, description="Producer-chosen id; idempotency key.")
    tenant: str = Field(pattern=TENANT_PATTERN)
    job_class: str = Field(min_length=1, max_length=200)
    priority: int = Field(default=0, ge=0, le=1000)
    description: str | None = Field(default=None, max_length=1000)
    owner: str | None = Field(default=None, max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=dict)
    expiration_date: AwareDatetime | None = None
    initial_status: Literal["QUEUED", "PENDING"] = "QUEUED"
    max_retries: int | None = Field(
        default=None, ge=0, le=1000,
        description="Automatic retries after a failure; default: the job type's (usually 0).")
    retry_backoff_s: float | None = Field(
        default=None, ge=0, le=86_400,
        description="Base of the exponential retry backoff (with jitter, capped); "
                    "default: the job type's.")
    run_after: AwareDatetime | None = Field(
        default=None, description="Not before: the job is QUEUED but not started earlier.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_future_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            pending = sorted(FUTURE_SUBMIT_FIELDS.intersection(data))
            if pending:
                raise ValueError(
                    f"field(s) {', '.join(pending)} are not supported by this version yet"
                )
        return data


class ControlMessage(BaseModel):
    """A control request, published to `<namespace>.control`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ControlMessage")

    action: Literal["stop", "enqueue", "retry"]
    id: UUID


class ReplyError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    message: str
    details: list[Any] = Field(default_factory=list)


class ReplyMessage(BaseModel):
    """The answer sent to `reply_to` for a submission or a control request."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ReplyMessage")

    ok: bool
    id: UUID | None = None
    status: JobStatus | None = None
    error: ReplyError | None = None


class EventError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    message: str | None = None
    stack_trace: str | None = None


class EventMessage(BaseModel):
    """A status change (`<tenant>.<status>`) or progress (`<tenant>.progress`) event."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="EventMessage")

    event_id: UUID
    job_id: UUID
    tenant: str
    job_class: str
    status: JobStatus
    previous_status: JobStatus | None
    percent_completed: int = Field(ge=0, le=100)
    at: datetime
    owner: str | None = None
    error: EventError | None = None
    result: Any = None


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "submit": SubmitMessage,
    "control": ControlMessage,
    "reply": ReplyMessage,
    "event": EventMessage,
}
