#!/usr/bin/env bash
# A PostgreSQL server of the project's own, on loopback, for a fleet of DR hosts (tests,
# `make soak`, the README's fleet walk-through). Debian's postgresql-15 (scripts/setup.sh
# installs it).
#
#   scripts/postgres-local.sh start DIR PORT   creates the cluster in DIR if missing, starts
#                                             it on 127.0.0.1:PORT, prints the URL
#   scripts/postgres-local.sh stop DIR         stops it (fast shutdown)
#   scripts/postgres-local.sh kill DIR         stops it at once (immediate shutdown)
#
# The cluster's only role is `twin` (trust authentication on loopback, no password): a
# test database, not a production set-up. Commits are durable (fsync and
# synchronous_commit on, PostgreSQL's defaults). Run as root, the server runs as the
# `postgres` user (PostgreSQL refuses root).
set -euo pipefail
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR PORT | stop DIR | kill DIR" >&2; exit 2; }
bin="${TWINLINK_PG_BIN:-}"
if [ -z "$bin" ]; then
  for v in 17 16 15; do
    [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ] && { bin="/usr/lib/postgresql/$v/bin"; break; }
  done
fi
[ -n "$bin" ] || { echo "PostgreSQL not found (run scripts/setup.sh, which installs postgresql-15)" >&2; exit 1; }
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
  start)
    port="${3:?give the port}"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir" -A trust -U twin -E UTF8 --no-sync >"$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log" >&2; exit 1; }
    fi
    as_owner "$bin/pg_ctl" -D "$dir" -w -t 30 -l "$dir/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    # The database named like the role, so that a URL without a database name works.
    "$bin/psql" -h 127.0.0.1 -p "$port" -U twin -d postgres -qtAc \
      "select 1 from pg_database where datname = 'twin'" | grep -q 1 \
      || "$bin/createdb" -h 127.0.0.1 -p "$port" -U twin twin
    echo "postgresql://twin@127.0.0.1:$port/twin"
    ;;
  stop) as_owner "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null ;;
  kill) as_owner "$bin/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
