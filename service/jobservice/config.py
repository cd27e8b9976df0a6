"""Settings from the environment (CONTRACT section 1), read once at start."""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every knob of one service instance; `JOBSERVICE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="JOBSERVICE_", frozen=True, extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/jobservice"
    database_schema: str = "public"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    namespace: str = Field(default="jobservice", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    pool_size: int = Field(default=8, ge=1, le=10_000)
    completion_update_rate_ms: int = Field(default=1000, ge=1)
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    instance_id: str = Field(default_factory=_default_instance_id)
    heartbeat_s: float = Field(default=5.0, gt=0)
    lease_timeout_s: float = Field(default=30.0, gt=0)
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    command_jobs: bool = False
    job_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Intake: messages taken per transaction, and the largest body accepted.
    intake_batch_size: int = Field(default=200, ge=1)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    # The scheduler wakes on NOTIFY and in-process signals; this slow poll is only a fallback.
    poll_interval_s: float = Field(default=5.0, gt=0)
    # How often the per-tenant/status job counts behind /metrics are refreshed.
    metrics_refresh_s: float = Field(default=10.0, gt=0)
    db_pool_size: int = Field(default=10, ge=2)
    # Whether a pool cycle (final statuses and the next claim) waits for its WAL flush before
    # its jobs start. async: it does not (sql/015: a crash of the database server can undo
    # the last fraction of a second of cycles; their jobs run again, none of their events
    # was published). sync: every cycle is durable before anything runs on it.
    cycle_commit: Literal["async", "sync"] = "async"
    # Optional tenant access control: AMQP user (the `user_id` property, which RabbitMQ
    # checks against the connection's login) -> tenants it may submit for and control
    # ("*": all). Unset: no check. JSON in the environment.
    tenant_acl: dict[str, list[str]] | None = None
    max_parameters: int = Field(default=1000, ge=1)
    # Extra folders of message catalogs (`<domain>.<locale>.yaml`), read after the ones in the
    # package (and overriding them). Comma-separated in the environment.
    message_dirs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Jobs in one submission: the job and its on_success submissions, at every depth.
    max_jobs_per_submission: int = Field(default=100, ge=1)
    log_level: str = "INFO"
    # -- failure handling and worker control (issue 5) --
    # Upper bound of one automatic retry's backoff (the exponential step is capped here).
    retry_backoff_max_s: float = Field(default=3600.0, ge=0)
    # Reschedules allowed per job (until kicked); one more ends it FAILED rescheduled_too_often.
    max_reschedules: int = Field(default=100, ge=0)
    # Lines of ctx.log kept per attempt; the rest are counted, not written.
    job_log_max_lines: int = Field(default=1000, ge=0)
    # Execution hooks besides the `jobservice.hooks` entry points: "module[:attribute]".
    hooks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Worker limits (`jobservice run --max-jobs/--max-seconds/--max-memory`): once one is
    # reached the instance stops claiming, drains and exits 0. None: no limit.
    max_jobs: int | None = Field(default=None, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)
    # Claim filters (`--tenants`, `--exclude-tenants`, `--job-types`): this instance only
    # claims matching jobs. None: all.
    tenants: Annotated[list[str] | None, NoDecode] = None
    exclude_tenants: Annotated[list[str] | None, NoDecode] = None
    job_types: Annotated[list[str] | None, NoDecode] = None
    # `jobservice run`'s event loop. auto: uvloop where it is installed (a dependency except
    # on Windows): about a fifth less CPU per job (docs/benchmarks.md).
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    def use_uvloop(self) -> bool:
        if self.event_loop == "auto":
            return importlib.util.find_spec("uvloop") is not None
        return self.event_loop == "uvloop"

    @field_validator("job_modules", "hooks", "message_dirs", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        """`JOBSERVICE_JOB_MODULES=a.b,c.d` is a comma-separated list of modules."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("tenants", "exclude_tenants", "job_types", mode="before")
    @classmethod
    def _split_filter(cls, value: object) -> object:
        """Comma-separated names; an empty list means no filter."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and not value:
            return None
        return value

    def may_use_tenant(self, user_id: str | None, tenant: str) -> bool:
        if self.tenant_acl is None:
            return True
        allowed = self.tenant_acl.get(user_id or "", [])
        return "*" in allowed or tenant in allowed

    @property
    def submit_queue(self) -> str:
        return f"{self.namespace}.submit"

    @property
    def submit_dlq(self) -> str:
        return f"{self.namespace}.submit.dlq"

    @property
    def control_queue(self) -> str:
        return f"{self.namespace}.control"

    @property
    def control_dlq(self) -> str:
        return f"{self.namespace}.control.dlq"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"


def mask_url(url: str) -> str:
    """The URL with its password replaced, safe for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
