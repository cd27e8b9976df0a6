"""Dramatiq broker and actor for the `dramatiq` and `dramatiq-update` peers
(PEERS_DRAMATIQ_VARIANT).

`dramatiq` (no database): completion is counted by a middleware on `after_ack` (the worker has
acked the message to RabbitMQ); each worker process sends its count and the wall-clock times of
its first and last ack to the driver over a Unix datagram socket (PEERS_REPORT_SOCK), at most
every 5 ms and only when the count changed. The per-message cost is a lock, an increment and
time.time().
"""
import os
import socket
import threading
import time

import dramatiq
from common import AMQP_URL, DSN, UPDATE_SQL
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

VARIANT = os.environ.get("PEERS_DRAMATIQ_VARIANT", "nodb")
if VARIANT not in ("nodb", "update"):
    raise SystemExit(f"unknown PEERS_DRAMATIQ_VARIANT {VARIANT!r}")


class AckCounter(Middleware):
    def __init__(self, sock_path):
        self.sock_path = sock_path
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def after_ack(self, broker, message):
        now = time.time()
        with self.lock:
            self.count += 1
            if self.count == 1:
                self.first = now
            self.last = now

    def after_worker_boot(self, broker, worker):
        threading.Thread(target=self._report, daemon=True, name="peers-report").start()

    def _report(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        pid, sent = os.getpid(), -1
        while True:
            with self.lock:
                count, first, last = self.count, self.first, self.last
            if count != sent:
                try:
                    sock.sendto(f"{pid} {count} {first!r} {last!r}".encode(), self.sock_path)
                    sent = count
                except OSError:
                    pass  # the driver is gone or not listening yet: try again
            time.sleep(0.005)


broker = RabbitmqBroker(url=AMQP_URL)
if VARIANT == "nodb" and os.environ.get("PEERS_REPORT_SOCK"):
    broker.add_middleware(AckCounter(os.environ["PEERS_REPORT_SOCK"]))
dramatiq.set_broker(broker)

_local = threading.local()


def _conn():
    conn = getattr(_local, "conn", None)
    if conn is None:
        import psycopg
        conn = _local.conn = psycopg.connect(DSN, autocommit=True)
    return conn


@dramatiq.actor(actor_name="bench_noop", queue_name="default")
def noop(job_id, tenant):
    if VARIANT == "update":
        _conn().execute(UPDATE_SQL, (job_id,))
