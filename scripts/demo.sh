#!/usr/bin/env bash
# The seed scenario: a throwaway etcd and PostgreSQL 15 with etcd_lock
# preloaded, two sessions contending for '/jobs'; prints who waited how long.
# Works as root on a fresh Debian 12 machine (installs what is missing).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"

bash "$here/scripts/deps.sh"
make -s -C "$here"
make -s -C "$here" install >/dev/null

work=$(mktemp -d /tmp/etcd_lock_demo.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
PG_PORT=$(free_port)
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
	stop_pid "${ETCD_PID:-}"
	rm -rf "$work"
}
trap cleanup EXIT

start_etcd "$work/etcd"
start_pg "$work/pg" "$PG_PORT"
psql_() { as_pg psql -X -q -h "$work" -p "$PG_PORT" -d postgres "$@"; }

echo "etcd at $ETCD_ENDPOINT, PostgreSQL on port $PG_PORT"
echo
echo "session A: SELECT etcd_lock('/jobs'); -- then works for 3 seconds"
psql_ -At <<'SQL' | sed 's/^/session A: /' &
SELECT 'acquired /jobs, fencing token ' || etcd_lock('/jobs');
SELECT pg_sleep(3) \g /dev/null
SELECT 'releasing /jobs: ' || etcd_unlock('/jobs');
SQL
a=$!
sleep 0.5
echo "session B: SELECT etcd_lock('/jobs'); -- waits for A"
psql_ -At <<'SQL' | sed 's/^/session B: /'
SELECT clock_timestamp() AS t0 \gset
SELECT 'acquired /jobs, fencing token ' || etcd_lock('/jobs')
       || ' after waiting ' || round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 3) || ' s';
SELECT 'releasing /jobs: ' || etcd_unlock('/jobs');
SQL
wait $a
echo
echo "Done: session B waited until session A released /jobs."
