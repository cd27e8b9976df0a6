"""Settings shared by the driver (bench.py) and the peer modules (imported by the workers)."""
import os

PG_HOST = os.environ.get("PEERS_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("PEERS_PG_PORT", "5432")
PG_USER = os.environ.get("PEERS_PG_USER", "postgres")
DB_NAME = os.environ.get("PEERS_DB", "peers_bench")
VHOST = os.environ.get("PEERS_VHOST", "peers_bench")  # a throwaway RabbitMQ vhost

# libpq/psycopg conninfo of the bench database and of the maintenance database.
DSN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}"
ADMIN_DSN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
# SQLAlchemy URL of Celery's database result backend (psycopg2 driver, SQLAlchemy's default).
CELERY_BACKEND = f"db+postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}"
AMQP_URL = f"amqp://guest:guest@{os.environ.get('PEERS_AMQP_HOST', '127.0.0.1')}:5672/{VHOST}"

# The one table the "-update" peers write: one row per job, inserted before the run;
# the task sets done_at (one UPDATE, autocommit).
JOBS_TABLE_DDL = """
CREATE TABLE bench_jobs (
    id integer PRIMARY KEY,
    tenant text NOT NULL,
    done_at timestamptz
)
"""
UPDATE_SQL = "UPDATE bench_jobs SET done_at = clock_timestamp() WHERE id = %s"
