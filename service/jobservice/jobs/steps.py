"""`jobservice.steps`: runs a submission's `steps` one after the other in one job.

Each step is a registered job type built from the step's `config` (its parameters). Its
handler gets a context with the job's environment and selected elements, the step's index
and name, and the results of the earlier steps by name. Completion spans all steps: each
step's share is its job type's `completion_count`. A failing step fails the job with the
step's index and name in the error; `stop` cancels the running step.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from jobservice.jobs.base import AbortWorker, Job, JobContext, Reschedule
from jobservice.jobs.registry import JobRegistry
from jobservice.model import STEPS_JOB_CLASS, Step


class StepsParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[Step] = Field(min_length=1, max_length=100)


class StepFailed(Exception):
    """A step raised: the job fails with the step's index and name; `error_type` is the
    type of the step's own error (kept as the cause)."""

    def __init__(self, index: int, step: Step, cause: BaseException) -> None:
        super().__init__(f"step {index} ({step.name!r}, {step.job_class}) failed: "
                         f"{type(cause).__name__}: {cause}")
        self.index = index
        self.step_name = step.name
        self.error_type = type(cause).__name__


class StepContext(JobContext):
    """The context a step's handler gets: the job's identity, stop flag and message, its own
    completion count (each `advance()` also advances the job), earlier results."""

    def __init__(self, job: JobContext, index: int, step: Step, completion_count: int,
                 results: Mapping[str, Any]) -> None:
        super().__init__(job.job_id, job.tenant, step.job_class, job.attempt, job.owner,
                         completion_count, context=job.context, environment=job.environment,
                         selected_elements=job.selected_elements)
        self._log = job._log  # type: ignore[method-assign]  # one log (and budget) per job
        self._job = job
        self.step_index = index
        self.step_name = step.name
        self.results = dict(results)

    def advance(self, n: int = 1) -> None:
        room = self.completion_count - self.completed
        self.completed += n
        self._job.advance(max(0, min(n, room)))

    @property
    def stop_requested(self) -> bool:
        return self._job.stop_requested  # one stop flag for the job and its steps

    def request_stop(self) -> None:
        self._job.request_stop()

    def finish(self) -> None:
        """The step is done: count what it did not advance, so the job's share is full."""
        rest = self.completion_count - self.completed
        if rest > 0:
            self.advance(rest)

    def message(self, key: str, **params: Any) -> None:
        self._job.message(key, **params)


class StepsJob(Job[StepsParameters]):
    """Runs `steps` in order (see the module docstring)."""

    name = STEPS_JOB_CLASS
    Parameters = StepsParameters

    def __init__(self, parameters: StepsParameters) -> None:
        super().__init__(parameters)
        self._jobs: list[Job[Any]] = []

    def build(self, registry: JobRegistry) -> None:
        """Build each step's job from its config (raises UnknownJobClass/ValidationError)."""
        self._jobs = []
        for step in self.parameters.steps:
            job_type = registry.get(step.job_class)
            if job_type is StepsJob:
                raise ValueError("a step cannot itself be a jobservice.steps job")
            self._jobs.append(job_type(job_type.Parameters.model_validate(step.config)))
        self.completion_count = sum(max(1, job.completion_count) for job in self._jobs)

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        assert len(self._jobs) == len(self.parameters.steps), "build() first"
        count = len(self._jobs)
        results: dict[str, Any] = {}
        for index, (step, job) in enumerate(zip(self.parameters.steps, self._jobs, strict=True)):
            ctx.message("jobservice.step.started", step=index + 1, steps=count, name=step.name)
            step_ctx = StepContext(ctx, index, step, job.completion_count, results)
            try:
                if inspect.iscoroutinefunction(job.run):
                    result = await job.run(step_ctx)
                else:
                    result = await anyio.to_thread.run_sync(job.run, step_ctx,
                                                            abandon_on_cancel=True)
                results[step.name] = _jsonable(result)
            except (Reschedule, AbortWorker):
                raise  # the whole job is rescheduled or handed back (its steps run again)
            except Exception as exc:
                if ctx.stop_requested:
                    raise
                raise StepFailed(index, step, exc) from exc
            step_ctx.finish()
        ctx.message("jobservice.steps.done", steps=count)
        return {"steps": [{"name": step.name, "result": results[step.name]}
                          for step in self.parameters.steps]}


def _jsonable(result: Any) -> Any:
    """The step's result as plain JSON data (what later steps and the job's result get)."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return json.loads(json.dumps(result, allow_nan=False))
