"""jobservice: an asyncio job execution microservice (AMQP in, Postgres state, events out)."""

from jobservice.jobs.base import AbortWorker, Job, JobContext, JobStopped, Reschedule

__all__ = ["AbortWorker", "Job", "JobContext", "JobStopped", "Reschedule", "__version__"]
__version__ = "0.1.0"
