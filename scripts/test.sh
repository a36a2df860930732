#!/usr/bin/env bash
# Runs the whole etcd_lock test suite against real etcd and PostgreSQL
# processes on loopback, on two PostgreSQL majors and three etcd lines:
#  - PostgreSQL 15 (Debian's packages) on etcd 3.4 (Debian's 3.4.23) and
#    again on etcd 3.7 (the current line, $ETCD_37, built from the Go module
#    proxy by scripts/etcd.sh and cached): pg_regress (the SQL surface and
#    its errors, on a throwaway instance preloaded with the extension) and
#    every TAP test in t/ (several sessions, instances, faults, the Go
#    reference, etcdctl), each run with that line's etcd and etcdctl first
#    on PATH;
#  - PostgreSQL 18.3, built from ${SHARED_DIR:-../shared}/pg once per
#    machine (scripts/pg18.sh, cached outside the checkout), on etcd 3.6
#    ($ETCD_36): pg_regress and the TAP tests but the longest fault runs
#    (t/006 cluster, t/012 nemesis).
# Every run includes t/020, a rolling upgrade of a 3-member cluster from
# $ETCD_36 to $ETCD_37 under load.
# Works as root on a fresh Debian 12 machine: installs what is missing.
# A machine without the 18.3 tarball skips that run with a message (under
# CI it is an error). PG_MAJORS="15" or "18" runs one PostgreSQL only;
# ETCD_LINES="3.4 3.7" (the default for 15) picks the etcd lines of the 15
# run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"

bash "$here/scripts/deps.sh"
# Go 1.26 ahead of anything older on PATH (etcd.sh, the Go clients)
export PATH=/usr/local/go/bin:$PATH
cd "$here"
majors=${PG_MAJORS:-15 18}
lines15=${ETCD_LINES:-3.4 3.7}
# the etcd releases CI runs, pinned
ETCD_36=3.6.16
ETCD_37=3.7.3
# Go builds (the reference mutex, the election client, etcd) keep their
# compiled packages between runs
export GOCACHE=${GOCACHE:-/var/cache/etcd_lock/gocache}
mkdir -p "$GOCACHE"
etcd36=$(bash "$here/scripts/etcd.sh" "$ETCD_36")
etcd37=$(bash "$here/scripts/etcd.sh" "$ETCD_37")
etcd_dir() {
	case $1 in
	3.4) bash "$here/scripts/etcd.sh" 3.4 ;;
	3.6) echo "$etcd36" ;;
	3.7) echo "$etcd37" ;;
	*) echo "unknown etcd line $1" >&2; return 1 ;;
	esac
}
# t/020: the rolling upgrade from 3.6 to 3.7
export ETCD_UPGRADE_FROM="$etcd36" ETCD_UPGRADE_TO="$etcd37"

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
# the Go election client (etcd's concurrency.Election), for t/018
echo "building the Go election client"
sh "$here/t/go_election/build.sh" "$work/go-election"
export GO_ELECTION="$work/go-election"
[ "$(id -u)" = 0 ] && chown -R postgres "$work"

status=0
# the response parsers under libFuzzer (ASan/UBSan/LSan), 30 seconds
echo "fuzzing the etcd answer parsers for 30 s"
if bash "$here/fuzz/run.sh" 30 > "$work/fuzz.out" 2>&1; then
	tail -1 "$work/fuzz.out"
else
	echo "fuzz target FAILED:"; tail -40 "$work/fuzz.out"
	status=1
fi

# run_suite LABEL PG_CONFIG ETCD_LINE [TESTS]: builds and installs the
# extension for that PostgreSQL from a clean copy of the tree (warnings are
# errors), then runs pg_regress and the TAP tests (TESTS: a subset of
# t/*.pl) against it, with that etcd line's etcd and etcdctl first on PATH
# (pg_regress's etcd and every etcd a TAP test starts).
run_suite() {
	local label=$1 pgc=$2 line=$3 tests=${4:-} tree="$work/tree$1-etcd$3" rc=0 edir
	edir=$(etcd_dir "$line") || return 1
	local PATH="$edir:$PATH"
	echo "==== PostgreSQL $label ($("$pgc" --version)), $("$edir/etcd" --version | head -1): building"
	rm -rf "$work/etcd"
	start_etcd "$work/etcd" || return 1
	[ "$(id -u)" = 0 ] && chown -R postgres "$work/etcd"
	mkdir -p "$tree"
	tar -C "$here" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=fuzz/work --exclude=fuzz/build -cf - . | tar -C "$tree" -xf -
	if ! make -s -C "$tree" PG_CONFIG="$pgc" COPT="-Werror" \
		> "$work/build$label.log" 2>&1; then
		echo "build FAILED for PostgreSQL $label:"; cat "$work/build$label.log"
		return 1
	fi
	make -s -C "$tree" PG_CONFIG="$pgc" install > /dev/null
	cat > "$tree/regress.conf" <<CONF
shared_preload_libraries = 'etcd_lock'
etcd_lock.endpoints = '$ETCD_ENDPOINT'
etcd_lock.request_timeout = '3s'
CONF
	[ "$(id -u)" = 0 ] && chown -R postgres "$tree"
	echo "==== PostgreSQL $label on etcd $line: etcd at $ETCD_ENDPOINT; running pg_regress and TAP tests"
	# t/015 builds the 1.0 release's library from this repository's history
	as_pg env PATH="$PATH" ETCD_ENDPOINT="$ETCD_ENDPOINT" GO_MUTEX="${GO_MUTEX:-}" GO_ELECTION="${GO_ELECTION:-}" \
		ETCD_UPGRADE_FROM="$ETCD_UPGRADE_FROM" ETCD_UPGRADE_TO="$ETCD_UPGRADE_TO" ETCD_LOCK_GIT_DIR="$here" \
		make -C "$tree" installcheck PG_CONFIG="$pgc" PROVE_FLAGS="--timer" \
		${tests:+PROVE_TESTS="$tests"} || rc=$?
	stop_pid "$ETCD_PID"; ETCD_PID=""
	echo "==== PostgreSQL $label on etcd $line: $([ $rc = 0 ] && echo passed || echo FAILED)"

	if [ $rc -ne 0 ]; then
		keep=1
		for f in "$tree/regression.diffs"; do
			[ -f "$f" ] && { echo "==== $f"; head -200 "$f"; }
		done
		for f in "$tree"/tmp_check/log/*; do
			[ -f "$f" ] && { echo "==== $f"; tail -60 "$f"; }
		done
	fi
	return $rc
}

# t/015 caches the 1.0 release's library here (it runs as postgres)
[ "$(id -u)" = 0 ] && install -d -o postgres -g postgres /var/cache/etcd_lock/lib-1.0

for major in $majors; do
	case $major in
	15)
		for line in $lines15; do
			run_suite 15 "$(command -v pg_config)" "$line" || status=1
		done
		# the Debian package: built, installed alone, pg_regress against it, purged
		if [ "$(id -u)" = 0 ]; then
			echo "==== PostgreSQL 15: the Debian package (scripts/package.sh)"
			( start_etcd "$work/etcd-pkg" && export ETCD_ENDPOINT &&
			  bash "$here/scripts/package.sh"; rc=$?; stop_pid "$ETCD_PID"; exit $rc ) || status=1
		else
			echo "NOTE: not root; skipping the Debian package test (scripts/package.sh)" >&2
		fi
		;;
	18)
		rc=0
		pg18=$(bash "$here/scripts/pg18.sh") || rc=$?
		if [ $rc = 3 ] && [ -z "${CI:-}" ]; then
			echo "NOTE: the PostgreSQL 18.3 source is not on this machine; skipping the PostgreSQL 18 run" >&2
		elif [ $rc != 0 ]; then
			echo "ERROR: could not build PostgreSQL 18.3 (scripts/pg18.sh exit $rc)" >&2
			status=1
		else
			# the longest fault runs (3-member cluster, nemesis) run on 15 only
			tests=$(cd "$here" && ls t/*.pl | grep -v -e t/006_cluster.pl -e t/012_nemesis.pl | tr '\n' ' ')
			run_suite 18 "$pg18/bin/pg_config" 3.6 "$tests" || status=1
		fi
		;;
	*)
		echo "unknown PostgreSQL major $major" >&2
		status=1
		;;
	esac
done
exit $status
