#!/usr/bin/env bash
# Runs the etcd_lock test suite against real etcd and PostgreSQL processes
# on loopback: every supported etcd line and PostgreSQL major (issue 18).
#  - PostgreSQL 15 (Debian's packages) on etcd 3.6 (the line most users
#    run): pg_regress (the SQL surface and its errors, on a throwaway
#    instance preloaded with the extension) and every TAP test in t/
#    (several sessions, instances, faults, the Go reference, etcdctl, the
#    rolling upgrade t/020 from 3.6 to 3.7 under load);
#  - PostgreSQL 15 on etcd 3.4 (Debian's 3.4.23, the oldest line we
#    support), 3.5 and 3.7: pg_regress and the TAP tests whose requests a
#    version could answer differently ($LINE_TESTS: locks, waits and
#    handoff, the Go client and etcdctl as peers, auth and TLS, partial
#    failures through the fault proxy, elections, and the review defects
#    whose etcd answers differ by line, t/021);
#  - PostgreSQL 16, 17 and 18, built from ${SHARED_DIR:-../shared}/pg once
#    per machine (scripts/pg.sh, cached outside the checkout), on etcd 3.6:
#    pg_regress and the TAP tests of version-specific code ($PG_TESTS: the
#    background worker and its exits, shared memory, transaction
#    callbacks, wait events, timeouts).
# etcd 3.5-3.7 and etcdctl are built from the Go module proxy by
# scripts/etcd.sh (pinned below and in scripts/etcd/VERSION/); the Go
# reference mutex is built against etcd's Go client of the same version as
# the server under test.
# Works as root on a fresh Debian 12 machine: installs what is missing. A
# machine without a PostgreSQL source tarball skips that major with a
# message. RUNS="15/3.6 16/3.6" picks runs (PG major/etcd line) from the
# matrix below.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"

bash "$here/scripts/deps.sh"
# Go 1.26 ahead of anything older on PATH (etcd.sh, the Go clients)
export PATH=/usr/local/go/bin:$PATH
cd "$here"
# the releases CI runs, pinned (to bump one: scripts/etcd.sh NEW builds it
# and says how to pin its modules; the PostgreSQL tarballs are in ../shared/pg)
ETCD_35=3.5.36
ETCD_36=3.6.16
ETCD_37=3.7.3
PG_16=16.13
PG_17=17.6
PG_18=18.3
# PG major/etcd line, in the order they run
RUNS=${RUNS:-15/3.6 15/3.4 15/3.5 15/3.7 16/3.6 17/3.6 18/3.6}
# what runs on the other etcd lines, and on the other PostgreSQL majors
LINE_TESTS="t/001_sessions.pl t/002_go_interop.pl t/004_waiting.pl t/009_security.pl t/011_partial_failure.pl t/018_election.pl t/021_review_defects.pl t/022_etcdctl.pl"
PG_TESTS="t/001_sessions.pl t/005_faults.pl t/013_wait_events.pl"
# t/014 (timeouts, the executor and utility hooks, COMMIT-time releases) on
# the newest major too; 15 runs it in full (the time budget: issue 18)
PG_TESTS_NEWEST="t/014_semantics.pl"
# Go builds (the reference mutex, the election client, etcd) keep their
# compiled packages between runs
export GOCACHE=${GOCACHE:-/var/cache/etcd_lock/gocache}
mkdir -p "$GOCACHE"
etcd_release() {
	case $1 in
	3.4) echo 3.4 ;;
	3.5) echo "$ETCD_35" ;;
	3.6) echo "$ETCD_36" ;;
	3.7) echo "$ETCD_37" ;;
	*) echo "unknown etcd line $1" >&2; return 1 ;;
	esac
}
etcd_dir() {
	local rel
	rel=$(etcd_release "$1") || return 1
	bash "$here/scripts/etcd.sh" "$rel"
}
etcd36=$(etcd_dir 3.6)
etcd37=$(etcd_dir 3.7)
# t/020: the rolling upgrade from 3.6 to 3.7
export ETCD_UPGRADE_FROM="$etcd36" ETCD_UPGRADE_TO="$etcd37"

work=$(mktemp -d /tmp/etcd_lock_test.XXXXXX)
cleanup() {
	stop_pid "${ETCD_PID:-}"
	# a model check still running (an early exit): it and its pan
	if [ -n "${spec_pid:-}" ] && kill -0 "$spec_pid" 2>/dev/null; then
		for p in $(ps -o pid= --ppid "$spec_pid" 2>/dev/null); do
			for q in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill "$q" 2>/dev/null || true; done
			kill "$p" 2>/dev/null || true
		done
		kill "$spec_pid" 2>/dev/null || true
	fi
	if [ "${keep:-0}" = 1 ]; then
		echo "test files kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

# the Go reference (etcd's own concurrency.Mutex), for the interop tests;
# CI lays shared/ beside the clone, so there it must be present
# it is built per run against go.etcd.io/etcd/client/v3 of the server's
# release (etcd 3.4's server: the oldest module client we test, 3.5)
shared="${SHARED_DIR:-$here/../shared}/reference"
go_mutex_for() {
	local rel=$1 out
	[ "$rel" = 3.4 ] && rel=$ETCD_35
	out="$work/go-mutex-$rel"
	if [ ! -x "$out" ]; then
		ETCD_CLIENT_VERSION="v$rel" sh "$shared/go-mutex/build.sh" "$out" || return 1
		[ "$(id -u)" = 0 ] && chown postgres "$out"
	fi
	echo "$out"
}
if [ -f "$shared/go-mutex/build.sh" ]; then
	have_go_mutex=1
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
# the nemesis history's linearizability checker (Porcupine), for t/012
if [ -f "$here/t/history_check/build.sh" ]; then
	echo "building the history checker"
	sh "$here/t/history_check/build.sh" "$work/history-check"
	export HISTORY_CHECK="$work/history-check"
fi
[ "$(id -u)" = 0 ] && chown -R postgres "$work"

status=0
# the protocol's SPIN models, every property and every mutation (issue 20):
# CPU-bound and deterministic, so it runs beside the first suite at the
# lowest priority (the TAP tests, which time things, keep the CPU they
# need) and its result is collected at the end
spec_pid=""
if [ -f "$here/spec/check.sh" ]; then
	echo "model checking the protocol (spec/check.sh), in the background"
	nice -n 19 bash "$here/spec/check.sh" > "$work/spec.out" 2>&1 &
	spec_pid=$!
fi
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
	local PATH="$edir:$PATH" GO_MUTEX=""
	if [ "${have_go_mutex:-0}" = 1 ]; then
		GO_MUTEX=$(go_mutex_for "$(etcd_release "$line")") || { echo "building the Go reference mutex FAILED"; return 1; }
	fi
	echo "==== PostgreSQL $label ($("$pgc" --version)), $("$edir/etcd" --version | head -1): building"
	rm -rf "$work/etcd"
	start_etcd "$work/etcd" || return 1
	[ "$(id -u)" = 0 ] && chown -R postgres "$work/etcd"
	mkdir -p "$tree"
	tar -C "$here" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=fuzz/work --exclude=fuzz/build -cf - . | tar -C "$tree" -xf -
	if ! make -s -j2 -C "$tree" PG_CONFIG="$pgc" COPT="-Werror" \
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
	as_pg env PATH="$PATH" ETCD_ENDPOINT="$ETCD_ENDPOINT" GO_MUTEX="${GO_MUTEX:-}" GO_ELECTION="${GO_ELECTION:-}" HISTORY_CHECK="${HISTORY_CHECK:-}" \
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

# the PostgreSQL of a major: Debian's 15, the others built from ../shared/pg
# (exit 3: that major's tarball is not on this machine)
pg_config_of() {
	local major=$1 rel prefix rc=0
	if [ "$major" = 15 ]; then
		command -v pg_config
		return 0
	fi
	eval "rel=\${PG_$major:-}"
	[ -n "$rel" ] || { echo "unknown PostgreSQL major $major" >&2; return 1; }
	prefix=$(bash "$here/scripts/pg.sh" "$rel") || rc=$?
	[ $rc = 0 ] || return $rc
	echo "$prefix/bin/pg_config"
}

for run in $RUNS; do
	major=${run%/*} line=${run#*/} rc=0
	pgc=$(pg_config_of "$major") || rc=$?
	if [ $rc = 3 ]; then
		echo "NOTE: the PostgreSQL $major source is not in ${SHARED_DIR:-../shared}/pg; skipping PostgreSQL $major on etcd $line"
		continue
	elif [ $rc != 0 ]; then
		echo "ERROR: could not build PostgreSQL $major (scripts/pg.sh exit $rc)" >&2
		status=1
		continue
	fi
	if [ "$major" = 15 ] && [ "$line" = 3.6 ]; then
		tests=""    # everything
	elif [ "$major" = 15 ]; then
		tests=$LINE_TESTS
	else
		tests=$PG_TESTS
		[ "$major" = 18 ] && tests="$tests $PG_TESTS_NEWEST"
	fi
	run_suite "$major" "$pgc" "$line" "$tests" || status=1
	# the Debian package, after the full PostgreSQL 15 run: built, installed
	# alone, pg_regress against it, purged
	if [ "$major" = 15 ] && [ "$line" = 3.6 ]; then
		if [ "$(id -u)" = 0 ]; then
			echo "==== PostgreSQL 15: the Debian package (scripts/package.sh)"
			( start_etcd "$work/etcd-pkg" && export ETCD_ENDPOINT &&
			  bash "$here/scripts/package.sh"; rc=$?; stop_pid "$ETCD_PID"; exit $rc ) || status=1
		else
			echo "NOTE: not root; skipping the Debian package test (scripts/package.sh)" >&2
		fi
	fi
done
if [ -n "$spec_pid" ]; then
	echo "==== the protocol models (spec/check.sh)"
	spec_rc=0
	wait "$spec_pid" || spec_rc=$?
	cat "$work/spec.out"
	if [ $spec_rc != 0 ]; then
		echo "spec/check.sh FAILED (exit $spec_rc)"
		status=1
	fi
fi
echo "==== done: $([ $status = 0 ] && echo all runs passed || echo FAILED) ($SECONDS s)"
exit $status
