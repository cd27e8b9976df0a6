"""Celery app for the `celery-state` and `celery-update` peers (PEERS_CELERY_VARIANT)."""
import os

from celery import Celery
from celery.signals import worker_process_init
from common import AMQP_URL, CELERY_BACKEND, DSN, UPDATE_SQL

VARIANT = os.environ.get("PEERS_CELERY_VARIANT", "state")

app = Celery("peer_celery", broker=AMQP_URL)
app.conf.broker_connection_retry_on_startup = True  # only silences a start-up warning
if VARIANT == "state":
    # Job state in Postgres: the SQLAlchemy result backend (STARTED, then SUCCESS row).
    app.conf.result_backend = CELERY_BACKEND
    app.conf.task_track_started = True
elif VARIANT == "update":
    app.conf.task_ignore_result = True  # no result backend at all
else:
    raise SystemExit(f"unknown PEERS_CELERY_VARIANT {VARIANT!r}")

_conn = None


@worker_process_init.connect
def _connect(**_):
    """One psycopg connection per prefork child (celery-update only)."""
    global _conn
    if VARIANT == "update":
        import psycopg
        _conn = psycopg.connect(DSN, autocommit=True)


@app.task(name="bench.noop")
def noop(job_id, tenant):
    if _conn is not None:
        _conn.execute(UPDATE_SQL, (job_id,))
