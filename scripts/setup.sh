#!/usr/bin/env bash
# Set-up shared by scripts/test and scripts/demo (sourced): services, virtualenv, package,
# database. Safe to run again: each step is skipped when already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { echo "[setup] $*"; }

export JOBSERVICE_DATABASE_URL="${JOBSERVICE_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/jobservice}"
export JOBSERVICE_AMQP_URL="${JOBSERVICE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"

PY="$(command -v python3.11 || command -v python3 || true)"
[ -n "$PY" ] || { echo "[setup] python3 (>= 3.11) is required" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "[setup] Python >= 3.11 is required, found $("$PY" --version)" >&2; exit 1; }

url_part() {  # url_part URL host|port|db
  "$PY" - "$1" "$2" <<'PYEOF'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print({"host": u.hostname or "127.0.0.1", "port": u.port or (5432 if u.scheme.startswith("postgres") else 5672),
       "db": u.path.lstrip("/") or "postgres"}[sys.argv[2]])
PYEOF
}

port_open() { "$PY" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('$1', $2)))"; }

is_local() { case "$1" in 127.*|localhost|::1) return 0;; *) return 1;; esac; }

wait_port() {  # wait_port host port seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do port_open "$1" "$2" && return 0; sleep 0.5; done
  return 1
}

ensure_postgres() {
  local host port
  host="$(url_part "$JOBSERVICE_DATABASE_URL" host)"; port="$(url_part "$JOBSERVICE_DATABASE_URL" port)"
  port_open "$host" "$port" && return 0
  if is_local "$host" && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    wait_port "$host" "$port" 60 && return 0
  fi
  echo "[setup] PostgreSQL is not reachable at $host:$port and could not be started here;" \
       "start it or set JOBSERVICE_DATABASE_URL" >&2
  exit 1
}

ensure_rabbitmq() {
  local host port
  host="$(url_part "$JOBSERVICE_AMQP_URL" host)"; port="$(url_part "$JOBSERVICE_AMQP_URL" port)"
  port_open "$host" "$port" && return 0
  if is_local "$host" && command -v rabbitmq-server >/dev/null; then
    say "starting RabbitMQ"
    rabbitmq-server -detached || true
    if wait_port "$host" "$port" 90; then
      command -v rabbitmqctl >/dev/null && timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
      return 0
    fi
  fi
  echo "[setup] RabbitMQ is not reachable at $host:$port and could not be started here;" \
       "start it or set JOBSERVICE_AMQP_URL" >&2
  exit 1
}

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
  fi
  local stamp=.venv/.jobservice-installed hash
  hash="$(cat pyproject.toml $(find service sql schemas -type f -not -name '*.pyc' | sort) | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || ! grep -q "^deps " "$stamp"; then
    say "installing jobservice and its dev tools into .venv"
    .venv/bin/python -m pip install -q ".[dev]"
    echo "deps $hash" >"$stamp"
  elif ! grep -q " $hash\$" "$stamp"; then
    say "reinstalling jobservice (sources changed)"
    .venv/bin/python -m pip install -q ".[dev]"
    .venv/bin/python -m pip install -q --force-reinstall --no-deps .
    echo "deps $hash" >"$stamp"
  fi
}

ensure_database() {
  .venv/bin/python - <<'PYEOF'
import asyncio, os
from urllib.parse import urlsplit, urlunsplit
import asyncpg

async def main() -> None:
    url = os.environ["JOBSERVICE_DATABASE_URL"]
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"[setup] created database {name}")
    finally:
        await conn.close()

asyncio.run(main())
PYEOF
}

ensure_postgres
ensure_rabbitmq
ensure_venv
ensure_database
say "ready (PostgreSQL and RabbitMQ up, .venv installed)"
