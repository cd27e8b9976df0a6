"""Peer benchmark driver: `python bench.py PEER [N] [--mode prequeued|live]` (see README.md).

Fresh database and RabbitMQ vhost, N no-op jobs over 10 tenants, the peer's own workers,
exact completion count, one JSON line on stdout; workers stopped and everything dropped after.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import common
import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)
PEERS = ("celery-state", "celery-update", "procrastinate", "dramatiq-update", "dramatiq")
BROKER_PEERS = {"celery-state", "celery-update", "dramatiq-update", "dramatiq"}

SETUPS = {
    "celery-state": "Celery {celery}, RabbitMQ broker, result backend in Postgres (SQLAlchemy "
                    "{sqlalchemy} + psycopg2), task_track_started=True, `celery worker -c 8 -E` "
                    "(prefork pool, default prefetch multiplier 4, acks early)",
    "celery-update": "Celery {celery}, RabbitMQ broker, no result backend, task does one "
                     "autocommit UPDATE (psycopg {psycopg}, one connection per prefork child), "
                     "no events, `celery worker -c 8` (prefork)",
    "procrastinate": "Procrastinate {procrastinate}, one worker, `--concurrency 8`, async no-op "
                     "task, psycopg {psycopg} pool, LISTEN/NOTIFY on",
    "dramatiq-update": "Dramatiq {dramatiq}, RabbitMQ broker, `--processes 2 --threads 4` "
                       "(prefetch 8 per process), task does one autocommit UPDATE (psycopg "
                       "{psycopg}, one connection per thread), default middleware",
    "dramatiq": "Dramatiq {dramatiq}, RabbitMQ broker, `--processes 2 --threads 4` (prefetch 8 "
                "per process), no database; completion = acks counted by a middleware",
}


def log(*a):
    print("[peers]", *a, file=sys.stderr, flush=True)


def versions():
    from importlib.metadata import version
    return {p: version(p) for p in ("celery", "sqlalchemy", "psycopg", "procrastinate", "dramatiq")}


# --------------------------------------------------------------------------- resources
def rabbitmqctl(*args, check=True):
    return subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, text=True)


def fresh_vhost():
    drop_vhost()
    rabbitmqctl("add_vhost", common.VHOST)
    rabbitmqctl("set_permissions", "-p", common.VHOST, "guest", ".*", ".*", ".*")


def drop_vhost():
    listed = rabbitmqctl("list_vhosts", "name").stdout.split()
    if common.VHOST in listed:
        rabbitmqctl("delete_vhost", common.VHOST)


def fresh_db():
    drop_db()
    with psycopg.connect(common.ADMIN_DSN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{common.DB_NAME}"')


def drop_db():
    with psycopg.connect(common.ADMIN_DSN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{common.DB_NAME}" WITH (FORCE)')


def queue_state(queue):
    """(messages ready, consumers) of a queue in the bench vhost, or None if it does not exist."""
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(common.AMQP_URL))
    try:
        ok = conn.channel().queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


# --------------------------------------------------------------------------- peers
class Peer:
    queue = None           # broker queue the workers consume (for readiness / final check)
    consumers = 1          # consumers expected on it once the workers are up

    def __init__(self, name, n, tenants, logdir):
        self.name, self.n, self.tenants, self.logdir = name, n, tenants, logdir
        self.env = dict(os.environ, PYTHONPATH=HERE, PYTHONUNBUFFERED="1")

    def prepare(self):
        """Schema and tables (outside the measured window)."""

    def enqueue(self):
        raise NotImplementedError

    def worker_cmd(self):
        raise NotImplementedError

    # Completion, read from the peer's own tables: jobs done (exact), jobs failed, and
    # (first completion, last completion) as Unix times.
    done_sql: str = ""
    failed_sql: str = "SELECT 0"
    times_sql: str = ""

    def progress(self, db):
        return db.execute(self.done_sql).fetchone()[0]

    def failed(self, db):
        return db.execute(self.failed_sql).fetchone()[0]

    def times(self, db):
        return db.execute(self.times_sql).fetchone()

    def ready(self, db):
        st = queue_state(self.queue)
        return st is not None and st[1] >= self.consumers

    def close(self):
        pass

    def jobs(self):
        for i in range(1, self.n + 1):
            yield i, f"tenant-{i % self.tenants}"


class UpdateTable:
    def prepare(self):
        with psycopg.connect(common.DSN, autocommit=True) as c:
            c.execute(common.JOBS_TABLE_DDL)
            c.execute("INSERT INTO bench_jobs (id, tenant) SELECT i, 'tenant-' || (i %% %s) "
                      "FROM generate_series(1, %s) i", (self.tenants, self.n))
            c.execute("VACUUM ANALYZE bench_jobs")

    done_sql = "SELECT count(*) FROM bench_jobs WHERE done_at IS NOT NULL"
    times_sql = ("SELECT extract(epoch FROM min(done_at))::float8, "
                 "extract(epoch FROM max(done_at))::float8 FROM bench_jobs")


class CeleryPeer(Peer):
    queue = "celery"
    variant = None

    def __init__(self, *a):
        super().__init__(*a)
        self.env["PEERS_CELERY_VARIANT"] = self.variant
        os.environ["PEERS_CELERY_VARIANT"] = self.variant
        sys.path.insert(0, HERE)
        import peer_celery
        self.mod = peer_celery

    def enqueue(self):
        task = self.mod.noop
        with self.mod.app.producer_or_acquire() as producer:  # one connection for all publishes
            for i, tenant in self.jobs():
                task.apply_async((i, tenant), producer=producer)

    def worker_cmd(self):
        cmd = [f"{VENV_BIN}/celery", "-A", "peer_celery", "worker", "-c", "8", "-P", "prefork",
               "--loglevel", "WARNING"]
        return cmd + (["-E"] if self.variant == "state" else [])

    def close(self):
        self.mod.app.close()


class CeleryState(CeleryPeer):
    variant = "state"

    def prepare(self):
        # Create celery_taskmeta once here, as the first worker would (avoids 8 prefork
        # children racing on CREATE TABLE on their first result).
        session = self.mod.app.backend.ResultSession()
        session.close()

    done_sql = "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'"
    failed_sql = "SELECT count(*) FROM celery_taskmeta WHERE status = 'FAILURE'"
    # date_done: Python's UTC now, stored in a `timestamp` column (session TimeZone = server's)
    times_sql = ("SELECT extract(epoch FROM min(date_done)::timestamptz)::float8, "
                 "extract(epoch FROM max(date_done)::timestamptz)::float8 "
                 "FROM celery_taskmeta WHERE status = 'SUCCESS'")


class CeleryUpdate(UpdateTable, CeleryPeer):
    variant = "update"


class Procrastinate(Peer):
    def __init__(self, *a):
        super().__init__(*a)
        sys.path.insert(0, HERE)
        import peer_procrastinate
        self.mod = peer_procrastinate

    def prepare(self):
        async def go():
            async with self.mod.app.open_async():
                await self.mod.app.schema_manager.apply_schema_async()
        asyncio.run(go())

    def enqueue(self):
        async def go():
            async with self.mod.app.open_async():
                batch = []
                for i, tenant in self.jobs():
                    batch.append({"job_id": i, "tenant": tenant})
                    if len(batch) == 500:
                        await self.mod.noop.batch_defer_async(*batch)
                        batch = []
                if batch:
                    await self.mod.noop.batch_defer_async(*batch)
        asyncio.run(go())

    def worker_cmd(self):
        return [f"{VENV_BIN}/procrastinate", "--app", "peer_procrastinate.app", "worker",
                "--concurrency", "8"]

    def ready(self, db):
        return db.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0] >= 1

    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    failed_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'"
    times_sql = ("SELECT extract(epoch FROM min(at))::float8, extract(epoch FROM max(at))::float8 "
                 "FROM procrastinate_events WHERE type = 'succeeded'")


class DramatiqPeer(Peer):
    queue = "default"
    consumers = 2  # one consumer of `default` per worker process
    variant = None

    def __init__(self, *a):
        super().__init__(*a)
        self.env["PEERS_DRAMATIQ_VARIANT"] = self.variant
        os.environ["PEERS_DRAMATIQ_VARIANT"] = self.variant
        os.environ.pop("PEERS_REPORT_SOCK", None)  # the driver itself does not count
        sys.path.insert(0, HERE)
        import peer_dramatiq
        self.mod = peer_dramatiq

    def enqueue(self):
        send = self.mod.noop.send
        for i, tenant in self.jobs():
            send(i, tenant)

    def worker_cmd(self):
        return [f"{VENV_BIN}/dramatiq", "peer_dramatiq", "--processes", "2", "--threads", "4",
                "--path", HERE]

    def close(self):
        self.mod.broker.close()


class DramatiqUpdate(UpdateTable, DramatiqPeer):
    variant = "update"


class DramatiqNoDb(DramatiqPeer):
    variant = "nodb"

    def __init__(self, *a):
        super().__init__(*a)
        self.sock_path = os.path.join(self.logdir, "acks.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.setblocking(False)
        self.env["PEERS_REPORT_SOCK"] = self.sock_path
        self.reports = {}  # pid -> (count, first, last)

    def _drain(self):
        while True:
            try:
                data = self.sock.recv(256)
            except BlockingIOError:
                return
            pid, count, first, last = data.decode().split()
            if int(count) >= self.reports.get(pid, (0,))[0]:
                self.reports[pid] = (int(count), float(first), float(last))

    def progress(self, db):
        self._drain()
        return sum(r[0] for r in self.reports.values())

    def times(self, db):
        self._drain()
        live = [r for r in self.reports.values() if r[0]]
        return min(r[1] for r in live), max(r[2] for r in live)

    def close(self):
        super().close()
        self.sock.close()


CLASSES = {"celery-state": CeleryState, "celery-update": CeleryUpdate,
           "procrastinate": Procrastinate, "dramatiq-update": DramatiqUpdate,
           "dramatiq": DramatiqNoDb}


# --------------------------------------------------------------------------- run
def stop(proc):
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log("workers did not stop in 30 s: SIGKILL")
        except ProcessLookupError:
            pass
    # whatever is left of the group (prefork children, dramatiq worker processes)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_done(peer, db, proc, n, poll, stall_s):
    last_count, last_change = -1, time.monotonic()
    while True:
        count = peer.progress(db)
        if count >= n:
            return count
        if peer.failed(db):
            raise RuntimeError(f"{peer.failed(db)} job(s) failed")
        if proc.poll() is not None:
            raise RuntimeError(f"workers exited with code {proc.returncode}")
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > stall_s:
            raise RuntimeError(f"no progress for {stall_s} s at {count}/{n}")
        time.sleep(poll)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=(*PEERS, "cleanup"),
                    help="a peer, or `cleanup` to drop a leftover database and vhost")
    ap.add_argument("jobs", type=int, nargs="?", default=20000)
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--mode", choices=("prequeued", "live"), default="prequeued",
                    help="prequeued: enqueue all, then start the workers (default); "
                         "live: start the workers, wait till they consume, then enqueue")
    ap.add_argument("--poll", type=float, default=0.2, help="completion poll interval, s")
    ap.add_argument("--stall", type=float, default=60.0,
                    help="fail after this long without progress, s")
    ap.add_argument("--keep-logs", action="store_true")
    return ap.parse_args()


def measure(args, peer, db, spawn):
    """Enqueue and run (in the order --mode says), wait for every job; the JSON result."""
    n = args.jobs
    proc = None
    try:
        if args.mode == "prequeued":
            t_enq = time.time()
            peer.enqueue()
            t_enq_end = time.time()
            log(f"enqueued {n} in {t_enq_end - t_enq:.2f} s; starting workers")
            t_spawn = time.time()
            proc = spawn()
        else:
            t_spawn = time.time()
            proc = spawn()
            deadline = time.monotonic() + 60
            while not peer.ready(db):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("workers did not come up")
                time.sleep(0.1)
            time.sleep(1.0)  # let every process/thread settle before the window opens
            log("workers ready; enqueueing")
            t_enq = time.time()
            peer.enqueue()
            t_enq_end = time.time()
        done = wait_done(peer, db, proc, n, args.poll, args.stall)
        t_seen = time.time()
        first, last = peer.times(db)
        left = queue_state(peer.queue)[0] if peer.queue else 0
        if done != n or left:
            raise RuntimeError(f"completed {done} of {n}, {left} message(s) still in the queue")
    finally:
        stop(proc)

    result = {"peer": args.peer, "jobs": n, "tenants": args.tenants, "mode": args.mode}
    if args.mode == "prequeued":
        # drain rate: first completion -> last completion (worker boot excluded)
        result["jobs_per_s"] = round((n - 1) / (last - first), 1)
        result["jobs_per_s_from_spawn"] = round(n / (last - t_spawn), 1)
        result["window"] = ("first job done -> last job done "
                            "(all jobs queued before the workers start)")
    else:
        result["jobs_per_s"] = round(n / (last - t_enq), 1)
        result["window"] = "first enqueue -> last job done (workers already running)"
    result.update({
        "startup_s": round(first - t_spawn, 3) if args.mode == "prequeued" else None,
        "drain_s": round(last - first, 3),
        "enqueue_s": round(t_enq_end - t_enq, 3),
        "enqueue_per_s": round(n / (t_enq_end - t_enq), 1),
        "detect_lag_s": round(t_seen - last, 3),
        "setup": SETUPS[args.peer].format(**versions()),
    })
    return result


def main():
    args = parse_args()
    if args.peer == "cleanup":
        drop_db()
        drop_vhost()
        log(f"dropped database {common.DB_NAME} and vhost {common.VHOST} (if they existed)")
        return

    # SIGTERM/SIGHUP (a timeout, a closed terminal) -> the same cleanup as Ctrl-C
    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)

    logdir = tempfile.mkdtemp(prefix=f"peers-{args.peer}-")
    logpath = os.path.join(logdir, "workers.log")
    peer = db = None
    ok = False
    try:
        fresh_db()
        if args.peer in BROKER_PEERS:
            fresh_vhost()
        peer = CLASSES[args.peer](args.peer, args.jobs, args.tenants, logdir)
        peer.prepare()
        db = psycopg.connect(common.DSN, autocommit=True)
        logf = open(logpath, "w")

        def spawn():
            return subprocess.Popen(peer.worker_cmd(), cwd=HERE, env=peer.env, stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

        result = measure(args, peer, db, spawn)
        ok = True
    finally:
        if peer is not None:
            peer.close()
        if db is not None:
            db.close()
        drop_db()
        if args.peer in BROKER_PEERS:
            drop_vhost()
        if ok and not args.keep_logs:
            for f in os.listdir(logdir):
                os.unlink(os.path.join(logdir, f))
            os.rmdir(logdir)
        else:
            log(f"worker log kept in {logpath}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
