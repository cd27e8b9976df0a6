"""Procrastinate app for the `procrastinate` peer."""
import procrastinate
from common import DSN

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))


@app.task(name="bench.noop")
async def noop(job_id, tenant):
    return None
