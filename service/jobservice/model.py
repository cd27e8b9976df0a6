"""Job statuses, the transition table and the wire messages (CONTRACT sections 2-5)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)


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
    DEPENDENCY_FAILED = "dependency_failed"


TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"
# A context names a message catalog domain (`messages/<context>.<locale>.yaml`).
CONTEXT_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"
DEFAULT_CONTEXT = "admin"
# The built-in job type that runs a submission's `steps`.
STEPS_JOB_CLASS = "jobservice.steps"

# Submission fields that later issues add are refused with a clear error until they exist
# (none left: every field the contract names is implemented).
FUTURE_SUBMIT_FIELDS: frozenset[str] = frozenset()


class Step(BaseModel):
    """One step of a multi-step job: a registered job type and its parameters (`config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200, description="Unique within the job.")
    job_class: str = Field(min_length=1, max_length=200,
                           description="A registered job type (not jobservice.steps).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Validated by the step job type's parameter model.")


class SelectedElement(BaseModel):
    """An element a user selected for the job to work on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1, max_length=200)
    id: str | int


class SubmitMessage(BaseModel):
    """A job submission, published to `<namespace>.submit`."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="SubmitMessage")

    id: UUID | None = Field(default=None, description="Producer-chosen id; idempotency key.")
    tenant: str = Field(pattern=TENANT_PATTERN)
    job_class: str = Field(min_length=1, max_length=200)
    # JSON types are kept: "10", 10.0 or true is not the integer the contract asks for.
    priority: int = Field(default=0, ge=0, le=1000, strict=True)
    description: str | None = Field(default=None, max_length=1000)
    owner: str | None = Field(default=None, max_length=1000)
    parameters: dict[str, Any] = Field(default_factory=dict)
    expiration_date: AwareDatetime | None = None
    initial_status: Literal["QUEUED", "PENDING"] = "QUEUED"
    max_retries: int | None = Field(
        default=None, ge=0, le=1000, strict=True,
        description="Automatic retries after a failure; default: the job type's (usually 0).")
    retry_backoff_s: float | None = Field(
        default=None, ge=0, le=86_400, strict=True,
        description="Base of the exponential retry backoff (with jitter, capped); "
                    "default: the job type's.")
    run_after: AwareDatetime | None = Field(
        default=None, description="Not before: the job is QUEUED but not started earlier.")
    context: str = Field(
        default=DEFAULT_CONTEXT, pattern=CONTEXT_PATTERN,
        description="Who the job is for (`admin`, a portal...): kept on the job and its runs, "
                    "in events, and the domain of its message catalog.")
    steps: list[Step] | None = Field(
        default=None, min_length=1, max_length=100,
        description="Steps run one after the other in this job; needs job_class "
                    "jobservice.steps and no parameters.")
    selected_elements: list[SelectedElement] | None = Field(
        default=None, max_length=100_000, description="The elements the job works on.")
    environment: dict[str, Any] | None = Field(
        default=None, description="Data a user entered, handed to the job (and every step).")
    depends_on: list[UUID] | None = Field(
        default=None, max_length=1000,
        description="Ids of existing jobs: this one waits PENDING until they all SUCCEEDED; "
                    "ends ABORTED (dependency_failed) if one ends FAILED or ABORTED.")
    on_success: list[SubmitMessage] | None = Field(
        default=None, max_length=100,
        description="Submissions created (and queued) only when this job SUCCEEDED.")

    @field_validator("expiration_date", "run_after", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: Any) -> Any:
        """An RFC 3339 string (with its offset), not a number of seconds."""
        if value is not None and not isinstance(value, str | datetime):
            raise ValueError("must be an RFC 3339 timestamp string")
        return value

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

    @model_validator(mode="after")
    def _check_composite(self) -> SubmitMessage:
        if self.steps is not None:
            if self.job_class != STEPS_JOB_CLASS:
                raise ValueError(f"a job with steps has job_class {STEPS_JOB_CLASS!r}")
            if self.parameters:
                raise ValueError("a job with steps takes no parameters (each step has a config)")
            names = [step.name for step in self.steps]
            if len(set(names)) != len(names):
                raise ValueError("step names must be unique within the job")
        if self.initial_status == "PENDING" and self.depends_on:
            raise ValueError("initial_status PENDING cannot be combined with depends_on")
        return self


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


class EventLocalizedMessage(BaseModel):
    """A message key of the job's catalog domain (its context) and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    params: dict[str, Any] = Field(default_factory=dict)


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
    context: str | None = None
    message: EventLocalizedMessage | None = Field(
        default=None, description="The job's current message, untranslated (ctx.message).")


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "submit": SubmitMessage,
    "control": ControlMessage,
    "reply": ReplyMessage,
    "event": EventMessage,
}
