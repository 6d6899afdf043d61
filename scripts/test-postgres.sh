#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL for tests, listening on 127.0.0.1:5544 only.
#
#   scripts/test-postgres.sh [DIR]        start if not running; print the URL to use
#   scripts/test-postgres.sh stop [DIR]   stop it
#
# DIR (default /tmp/kiln-test-pg) holds the data directory, socket and log. Runs as root and
# drives initdb/pg_ctl as the `postgres` user. Authentication is `trust`: for local tests only.
# Use the printed URL as KILN_TEST_POSTGRES_URL, e.g.
#   KILN_TEST_POSTGRES_URL=$(scripts/test-postgres.sh) cargo test -p kiln-store
set -euo pipefail

PORT=5544
HOST=127.0.0.1
URL="postgres://kiln@${HOST}:${PORT}/postgres"

action=start
if [[ "${1:-}" == "stop" ]]; then
    action=stop
    shift
fi
DIR="${1:-/tmp/kiln-test-pg}"
DATA="$DIR/data"
LOG="$DIR/postgres.log"

log() { echo "test-postgres: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (it runs PostgreSQL as the postgres user)"
    exit 1
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$bindir" || ! -x "$bindir/pg_ctl" ]]; then
    log "no PostgreSQL server found under /usr/lib/postgresql/*/bin"
    exit 1
fi

if ! id -u postgres >/dev/null 2>&1; then
    log "creating system user postgres"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

as_pg() { runuser -u postgres -- "$@"; }

running() { [[ -f "$DATA/PG_VERSION" ]] && as_pg "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

if [[ "$action" == "stop" ]]; then
    if running; then
        as_pg "$bindir/pg_ctl" -D "$DATA" -m fast -w stop >&2
    else
        log "not running"
    fi
    exit 0
fi

if running; then
    echo "$URL"
    exit 0
fi

mkdir -p "$DIR"
chown postgres:postgres "$DIR"
chmod 700 "$DIR"

if [[ ! -f "$DATA/PG_VERSION" ]]; then
    log "initialising $DATA"
    as_pg "$bindir/initdb" -D "$DATA" --auth=trust --username=postgres \
        --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 || {
        cat "$DIR/initdb.log" >&2
        exit 1
    }
fi

log "starting on ${HOST}:${PORT} (log: $LOG)"
as_pg "$bindir/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 \
    -o "-c listen_addresses=${HOST} -p ${PORT} -k ${DIR} -c fsync=off" start >/dev/null || {
    tail -n 30 "$LOG" >&2
    exit 1
}

for _ in $(seq 1 60); do
    if as_pg "$bindir/pg_isready" -q -h "$HOST" -p "$PORT"; then
        break
    fi
    sleep 0.5
done
if ! as_pg "$bindir/pg_isready" -q -h "$HOST" -p "$PORT"; then
    log "server did not become ready"
    tail -n 30 "$LOG" >&2
    exit 1
fi

as_pg psql -h "$HOST" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt -c \
    "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kiln') THEN CREATE ROLE kiln LOGIN SUPERUSER; END IF; END \$\$;" >&2

echo "$URL"
