"""jobservice: an asyncio job execution microservice (AMQP in, Postgres state, events out)."""

from jobservice.jobs.base import Job, JobContext, JobStopped

__all__ = ["Job", "JobContext", "JobStopped", "__version__"]
__version__ = "0.1.0"
