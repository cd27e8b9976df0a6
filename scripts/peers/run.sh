#!/usr/bin/env bash
# Peer job-system benchmark: run.sh PEER [N] [--mode prequeued|live] (see README.md).
# PEER: celery-state | celery-update | procrastinate | dramatiq-update | dramatiq
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEERS_VENV:-/tmp/peers-venv}"
req="$here/requirements.txt"

if [ $# -lt 1 ]; then
    echo "usage: $0 PEER [N] [--mode prequeued|live] [--tenants 10] [--keep-logs]" >&2
    echo "       $0 cleanup    # drop a leftover peers_bench database and vhost" >&2
    echo "PEER: celery-state celery-update procrastinate dramatiq-update dramatiq" >&2
    exit 2
fi

# The throwaway venv, (re)built when requirements.txt changed.
stamp="$venv/.peers-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[peers] building $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    # (this machine's pip config names local wheel folders that may not exist: hide that noise)
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$req" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    "$venv/bin/pip" check >&2
    echo "$want" > "$stamp"
fi

command -v rabbitmqctl >/dev/null || { echo "rabbitmqctl is needed (throwaway vhost)" >&2; exit 1; }
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the repo
exec "$venv/bin/python" "$here/bench.py" "$@"
