#!/usr/bin/env bash
# Runs the whole etcd_lock test suite against real etcd and PostgreSQL 15
# processes on loopback: pg_regress (the SQL surface and its errors, on a
# throwaway instance preloaded with the extension) and the TAP tests in t/
# (several sessions, instances and the Go reference mutex).
# Works as root on a fresh Debian 12 machine: installs what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"

bash "$here/scripts/deps.sh"
cd "$here"
make -s
make -s install

work=$(mktemp -d /tmp/etcd_lock_test.XXXXXX)
cleanup() {
	stop_pid "${ETCD_PID:-}"
	if [ "${keep:-0}" = 1 ]; then
		echo "test files kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

# the Go reference (etcd's own concurrency.Mutex), for the interop tests;
# CI lays shared/ beside the clone, so there it must be present
shared="${SHARED_DIR:-$here/../shared}/reference"
if [ -f "$shared/go-mutex/build.sh" ]; then
	echo "building the Go reference mutex"
	sh "$shared/go-mutex/build.sh" "$work/go-mutex"
	export GO_MUTEX="$work/go-mutex"
elif [ -n "${CI:-}" ]; then
	echo "ERROR: $shared/go-mutex not found; the Go interop test cannot run" >&2
	exit 1
else
	echo "NOTE: $shared not found; the Go interop test will be skipped" >&2
fi

# a copy of the tree the postgres user can write to (results, tmp_check)
mkdir -p "$work/tree"
tar -C "$here" --exclude=.git -cf - . | tar -C "$work/tree" -xf -
[ "$(id -u)" = 0 ] && chown -R postgres "$work"

start_etcd "$work/etcd"
export ETCD_ENDPOINT
cat > "$work/tree/regress.conf" <<CONF
shared_preload_libraries = 'etcd_lock'
etcd_lock.endpoints = '$ETCD_ENDPOINT'
etcd_lock.request_timeout = '3s'
CONF

status=0
# the response parsers under libFuzzer (ASan/UBSan/LSan), 30 seconds
echo "fuzzing the etcd answer parsers for 30 s"
if bash "$here/fuzz/run.sh" 30 > "$work/fuzz.out" 2>&1; then
	tail -1 "$work/fuzz.out"
else
	echo "fuzz target FAILED:"; tail -40 "$work/fuzz.out"
	status=1
fi

echo "etcd at $ETCD_ENDPOINT; running pg_regress and TAP tests"
as_pg env ETCD_ENDPOINT="$ETCD_ENDPOINT" GO_MUTEX="${GO_MUTEX:-}" \
	make -C "$work/tree" installcheck PROVE_FLAGS="--timer" || status=$?
if [ $status -ne 0 ]; then
	keep=1
	for f in "$work/tree/regression.diffs"; do
		[ -f "$f" ] && { echo "==== $f"; head -200 "$f"; }
	done
	for f in "$work"/tree/tmp_check/log/*; do
		[ -f "$f" ] && { echo "==== $f"; tail -60 "$f"; }
	done
fi
exit $status
