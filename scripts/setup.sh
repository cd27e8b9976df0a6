#!/usr/bin/env bash
# Set-up shared by scripts/test and scripts/demo, which `source` it (it can also be run on
# its own): PostgreSQL and RabbitMQ reachable (started here when installed but stopped), the
# virtualenv .venv with the package installed as users install it (`pip install .`, not
# editable) plus its dev tools, and the database. Every step is skipped when already done.
#
# Settings (environment): JOBSERVICE_DATABASE_URL, JOBSERVICE_AMQP_URL (defaults: the local
# servers); JOBSERVICE_PYTHON to pick the interpreter that creates .venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export JOBSERVICE_DATABASE_URL="${JOBSERVICE_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/jobservice}"
export JOBSERVICE_AMQP_URL="${JOBSERVICE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

_setup_say() { echo "[setup] $*"; }
_setup_die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# --- Python (>= 3.11) ---------------------------------------------------------------------
_setup_python() {
  local candidate
  for candidate in ${JOBSERVICE_PYTHON:-} python3 python3.13 python3.12 python3.11; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}
_SETUP_PY="$(_setup_python)" \
  || _setup_die "Python >= 3.11 is required (found: $(python3 --version 2>&1 || echo 'no python3'));" \
                "install it or point JOBSERVICE_PYTHON at one"

# url_parts URL -> "host<TAB>port<TAB>database<TAB>admin URL (same server, database postgres)"
_setup_url_parts() {
  "$_SETUP_PY" - "$1" <<'PYEOF'
import sys
from urllib.parse import unquote, urlsplit

url = urlsplit(sys.argv[1])
ports = {"postgresql": 5432, "postgres": 5432, "amqp": 5672, "amqps": 5671}
host = url.hostname or "127.0.0.1"
port = url.port or ports.get(url.scheme, 0)
database = unquote(url.path.lstrip("/")) or "postgres"
admin = url._replace(path="/postgres").geturl()
print(host, port, database, admin, sep="\t")
PYEOF
}

_setup_is_local() { case "$1" in 127.*|localhost|::1|"") return 0 ;; *) return 1 ;; esac; }

_setup_port_open() {  # host port
  # shellcheck disable=SC2016  # expanded by the inner bash, from its arguments
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# --- PostgreSQL ---------------------------------------------------------------------------
_setup_pg_ready() {  # host port
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$1" -p "$2" -t 3
  else
    _setup_port_open "$1" "$2"
  fi
}

_setup_local_cluster() {  # port -> "VERSION NAME" of the installed cluster on that port
  if command -v pg_lsclusters >/dev/null 2>&1; then
    # pg_lsclusters -h: "15 main 5432 down postgres /var/lib/... /var/log/..."
    pg_lsclusters -h 2>/dev/null | awk -v p="$1" '$3 == p {print $1, $2; exit}'
  elif [ -d /etc/postgresql ]; then
    find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f main\n' | sort -V | tail -n 1
  fi
}

_setup_ensure_postgres() {
  local host port _db _admin deadline cluster=""
  IFS=$'\t' read -r host port _db _admin < <(_setup_url_parts "$JOBSERVICE_DATABASE_URL")
  _setup_pg_ready "$host" "$port" && return 0
  if _setup_is_local "$host" && command -v pg_ctlcluster >/dev/null 2>&1; then
    cluster="$(_setup_local_cluster "$port")" || cluster=""
  fi
  if [ -n "$cluster" ]; then
    _setup_say "starting PostgreSQL (cluster $cluster)"
    # shellcheck disable=SC2086  # "VERSION NAME": two arguments
    pg_ctlcluster --skip-systemctl-redirect $cluster start \
      || echo "[setup] pg_ctlcluster failed; waiting for the server anyway" >&2
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
      _setup_pg_ready "$host" "$port" && { _setup_say "PostgreSQL is up"; return 0; }
      sleep 1
    done
    _setup_die "PostgreSQL did not accept connections at $host:$port within 60 s" \
               "(see /var/log/postgresql/); or set JOBSERVICE_DATABASE_URL to a reachable server"
  fi
  if _setup_is_local "$host"; then
    _setup_die "PostgreSQL is not reachable at $host:$port and no PostgreSQL cluster for that" \
               "port is installed here;" \
               "set JOBSERVICE_DATABASE_URL to a reachable server" \
               "(e.g. postgresql://user:password@host:5432/jobservice)"
  fi
  _setup_die "PostgreSQL is not reachable at $host:$port (JOBSERVICE_DATABASE_URL);" \
             "set it to a reachable server"
}

# --- RabbitMQ -----------------------------------------------------------------------------
_setup_ensure_rabbitmq() {
  local host port _vhost _admin deadline log
  IFS=$'\t' read -r host port _vhost _admin < <(_setup_url_parts "$JOBSERVICE_AMQP_URL")
  _setup_port_open "$host" "$port" && return 0
  if ! _setup_is_local "$host"; then
    _setup_die "RabbitMQ is not reachable at $host:$port (JOBSERVICE_AMQP_URL);" \
               "set it to a reachable broker"
  fi
  command -v rabbitmq-server >/dev/null 2>&1 \
    || _setup_die "RabbitMQ is not reachable at $host:$port and is not installed here;" \
                  "set JOBSERVICE_AMQP_URL to a reachable broker (amqp://user:password@host:5672/)"
  if command -v rabbitmq-diagnostics >/dev/null 2>&1 \
      && timeout 15 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    _setup_die "the local RabbitMQ node is running but nothing accepts connections at" \
               "$host:$port; check its listeners or set JOBSERVICE_AMQP_URL"
  fi
  _setup_say "starting RabbitMQ"
  log="$(mktemp)"
  rabbitmq-server -detached >"$log" 2>&1 || { cat "$log" >&2; echo "[setup] rabbitmq-server failed" >&2; }
  deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    if _setup_port_open "$host" "$port"; then
      # The AMQP listener opens near the end of the boot; await_startup confirms it finished.
      if command -v rabbitmqctl >/dev/null 2>&1; then
        timeout $((deadline - SECONDS + 1)) rabbitmqctl -q await_startup >/dev/null 2>&1 || true
      fi
      rm -f "$log"
      _setup_say "RabbitMQ is up"
      return 0
    fi
    sleep 1
  done
  cat "$log" >&2; rm -f "$log"
  _setup_die "RabbitMQ did not accept connections at $host:$port within 60 s" \
             "(see /var/log/rabbitmq/); or set JOBSERVICE_AMQP_URL to a reachable broker"
}

# --- virtualenv and package ---------------------------------------------------------------
_setup_deps_hash() { sha256sum pyproject.toml | cut -d' ' -f1; }

_setup_source_hash() {  # pyproject.toml and every file shipped in the wheel (names included)
  local dirs=() dir
  for dir in service sql schemas; do [ -d "$dir" ] && dirs+=("$dir"); done
  {
    sha256sum pyproject.toml
    find "${dirs[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' -print0 \
      | LC_ALL=C sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -d' ' -f1
}

_setup_install() {  # runs under a lock on .venv: two set-ups at once must not both pip install
  local stamp=.venv/.jobservice-installed want_deps want_src have_deps="" have_src=""
  want_deps="$(_setup_deps_hash)"
  want_src="$(_setup_source_hash)"
  if [ -f "$stamp" ]; then
    have_deps="$(sed -n 's/^deps //p' "$stamp")"
    have_src="$(sed -n 's/^src //p' "$stamp")"
  fi
  if [ "$have_deps" != "$want_deps" ]; then
    _setup_say "installing jobservice and its dev tools into .venv (pip install '.[dev]')"
    .venv/bin/python -m pip install -q ".[dev]" \
      || _setup_die "pip install '.[dev]' failed (see above)"
    if [ -n "$have_src" ]; then  # an earlier install: make sure the package itself is rebuilt
      .venv/bin/python -m pip install -q --force-reinstall --no-deps . \
        || _setup_die "pip install . failed (see above)"
    fi
  elif [ "$have_src" != "$want_src" ]; then
    _setup_say "reinstalling jobservice (sources changed)"
    .venv/bin/python -m pip install -q --force-reinstall --no-deps . \
      || _setup_die "pip install . failed (see above)"
  else
    _setup_say "jobservice in .venv is up to date"
    return 0
  fi
  printf 'deps %s\nsrc %s\n' "$want_deps" "$want_src" >"$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
}

_setup_ensure_venv() {
  if [ -x .venv/bin/python ]; then
    .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || _setup_die ".venv uses $(.venv/bin/python --version 2>&1); Python >= 3.11 is required:" \
                    "remove .venv and run again"
  else
    _setup_say "creating .venv with $("$_SETUP_PY" --version 2>&1) ($_SETUP_PY)"
    "$_SETUP_PY" -m venv --clear .venv \
      || _setup_die "could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)"
    .venv/bin/python -m pip install -q --upgrade pip \
      || _setup_die "could not upgrade pip in .venv"
  fi
  if command -v flock >/dev/null 2>&1; then
    (
      flock 9
      _setup_install
    ) 9>.venv/.jobservice-setup.lock
  else
    _setup_install
  fi
}

# --- database -----------------------------------------------------------------------------
_setup_ensure_database() {
  local _host _port db admin exists
  IFS=$'\t' read -r _host _port db admin < <(_setup_url_parts "$JOBSERVICE_DATABASE_URL")
  if command -v psql >/dev/null 2>&1; then
    exists="$(PGCONNECT_TIMEOUT=10 psql "$admin" -XqtA -v ON_ERROR_STOP=1 -v name="$db" \
                <<<"SELECT 1 FROM pg_database WHERE datname = :'name'")" \
      || _setup_die "could not query PostgreSQL with $admin (psql failed, see above)"
    [ "$exists" = 1 ] && return 0
    _setup_say "creating database $db"
    if command -v createdb >/dev/null 2>&1; then
      PGCONNECT_TIMEOUT=10 createdb --maintenance-db="$admin" "$db" || true
    else
      PGCONNECT_TIMEOUT=10 psql "$admin" -Xq -v ON_ERROR_STOP=1 -v name="$db" \
        <<<'CREATE DATABASE :"name"' || true
    fi
    # Another set-up may have created it at the same moment: only its absence is an error.
    exists="$(PGCONNECT_TIMEOUT=10 psql "$admin" -XqtA -v name="$db" \
                <<<"SELECT 1 FROM pg_database WHERE datname = :'name'")" || true
    [ "$exists" = 1 ] || _setup_die "could not create database $db"
  else
    # No PostgreSQL client tools here: the same with asyncpg from .venv.
    .venv/bin/python - "$admin" "$db" <<'PYEOF' || _setup_die "could not create database $db"
import asyncio
import sys

import asyncpg


async def main(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                await conn.execute(f"CREATE DATABASE {quoted}")
                print(f"[setup] created database {name}")
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


asyncio.run(main(sys.argv[1], sys.argv[2]))
PYEOF
  fi
}

_setup_ensure_postgres
_setup_ensure_rabbitmq
_setup_ensure_venv
_setup_ensure_database
_setup_say "ready: PostgreSQL and RabbitMQ reachable, .venv installed, database present"
