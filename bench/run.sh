#!/usr/bin/env bash
# The etcd_lock benchmark, one command (see bench/README.md):
#
#   bash bench/run.sh                  # full run, ~10 minutes on 2 cores
#   QUICK=1 bash bench/run.sh          # smoke run, ~2 minutes
#   ETCD_ENDPOINT=http://127.0.0.1:2379 bash bench/run.sh   # reuse an etcd
#
# Installs what is missing (apt), builds and installs the extension, starts
# its own etcd and PostgreSQL 15 on loopback, builds the reference workloads
# (etcd's Go concurrency.Mutex, the raw HTTP-gateway floor), runs every
# workload interleaved with the references (bench/bench.py), prints one line
# per workload and PASS/MISS per target, and writes bench/out/results.json and
# bench/out/latency.png (copied to bench/latest/). Every process it starts is
# stopped on every exit path. Optional: ROUNDS=N, KEEP=1 (keep the temp dir),
# BENCH_ONLY=pair,contend,... (a subset of the workloads).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench="$here/bench"
out="$bench/out"
. "$here/scripts/lib.sh"

QUICK=${QUICK:-0}
given_ep=${ETCD_ENDPOINT:-}
PY=/usr/bin/python3
t_start=$(date +%s)
command="${QUICK:+QUICK=$QUICK }${given_ep:+ETCD_ENDPOINT=$given_ep }${ROUNDS:+ROUNDS=$ROUNDS }${BENCH_ONLY:+BENCH_ONLY=$BENCH_ONLY }bash bench/run.sh"
[ "$QUICK" = 0 ] && command="${command#QUICK=0 }"

note() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---- dependencies (apt only) ----
bash "$here/scripts/deps.sh"
extra=(python3 python3-matplotlib libpq-dev libcurl4-openssl-dev curl procps postgresql-client-15)
missing=()
for p in "${extra[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { echo "missing packages: ${missing[*]} (run as root)" >&2; exit 1; }
	note "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- the extension ----
note "building and installing etcd_lock"
make -s -C "$here"
make -s -C "$here" install >/dev/null

work=$(mktemp -d /tmp/etcd_lock_bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
PG_STARTED=0
BENCH_PID=
ETCD_PID=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	set +e
	if [ -n "$BENCH_PID" ]; then
		# bench.py made itself the leader of a process group of its own;
		# whatever it started is in that group
		kill -TERM "$BENCH_PID" 2>/dev/null
		for _ in $(seq 1 100); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL -- "-$BENCH_PID" 2>/dev/null
		wait "$BENCH_PID" 2>/dev/null
	fi
	if [ "$PG_STARTED" = 1 ]; then
		timeout 60 runuser -u postgres -- "$PGBIN/pg_ctl" -D "$work/pg" -m fast -w -t 50 stop >/dev/null 2>&1 ||
			timeout 30 runuser -u postgres -- "$PGBIN/pg_ctl" -D "$work/pg" -m immediate -w -t 20 stop >/dev/null 2>&1
	fi
	if [ -n "$ETCD_PID" ]; then
		kill -CONT "$ETCD_PID" 2>/dev/null	# in case a measurement left it stopped
		stop_pid "$ETCD_PID"
	fi
	mkdir -p "$out"
	[ -f "$work/pg.log" ] && cp "$work/pg.log" "$out/postgres.log"
	[ -f "$work/etcd/etcd.log" ] && cp "$work/etcd/etcd.log" "$out/etcd.log"
	if [ "${KEEP:-0}" = 1 ] || { [ $rc -ne 0 ] && [ "$interrupted" = 0 ]; }; then
		echo "bench work directory kept: $work" >&2
	else
		rm -rf "$work"
	fi
	note "done in $(( $(date +%s) - t_start )) s (exit $rc)"
	exit $rc
}
trap cleanup EXIT
interrupted=0
trap 'interrupted=1; exit 130' INT
trap 'interrupted=1; exit 143' TERM
trap 'interrupted=1; exit 129' HUP

# ---- our tools and the references ----
note "building bench tools and the reference workloads"
cc -O2 -Wall -pthread -I"$(pg_config --includedir)" -o "$work/bench_client" "$bench/bench_client.c" \
	-L"$(pg_config --libdir)" -lpq
cc -O2 -Wall -o "$work/gateway_shapes" "$bench/gateway_shapes.c" -lcurl
shared="${SHARED_DIR:-$here/../shared}/reference"
if [ ! -f "$shared/go-mutex/build.sh" ] || [ ! -f "$shared/http-floor/build.sh" ]; then
	echo "ERROR: reference workloads not found in $shared (set SHARED_DIR)" >&2
	exit 1
fi
sh "$shared/go-mutex/build.sh" "$work/go-mutex"
sh "$shared/http-floor/build.sh" "$work/http-floor"

# ---- etcd ----
if [ -n "$given_ep" ]; then
	ETCD_ENDPOINT=${given_ep%/}
	curl -sf --max-time 5 "$ETCD_ENDPOINT/version" >/dev/null ||
		{ echo "ERROR: ETCD_ENDPOINT=$ETCD_ENDPOINT does not answer" >&2; exit 1; }
	note "using the given etcd at $ETCD_ENDPOINT (it will not be stopped or signalled)"
else
	start_etcd "$work/etcd"
	note "etcd pid $ETCD_PID at $ETCD_ENDPOINT"
fi

# ---- PostgreSQL ----
PG_PORT=$(free_port)
PG_STARTED=1
start_pg "$work/pg" "$PG_PORT" "max_connections = 600"
export PGHOST="$work" PGPORT="$PG_PORT" PGUSER=postgres PGDATABASE=postgres
note "PostgreSQL pid $(head -1 "$work/pg/postmaster.pid") on port $PG_PORT"

# ---- the workloads ----
rm -rf "$out/raw" "$out/results.json" "$out/latency.png"
mkdir -p "$out"
export BENCH_OUT="$out" BENCH_WORK="$work" BENCH_REPO="$here" BENCH_COMMAND="$command"
export BENCH_CLIENT="$work/bench_client" BENCH_SHAPES="$work/gateway_shapes"
export GO_MUTEX="$work/go-mutex" HTTP_FLOOR="$work/http-floor" ETCD_ENDPOINT PGBIN
export BENCH_ETCD_PID="${ETCD_PID:-}" BENCH_POSTMASTER_PID="$(head -1 "$work/pg/postmaster.pid")"
export BENCH_PG_LOG="$work/pg.log" BENCH_LOCK_PREFIX="/etcd_lock_bench_$(date +%s)"
export QUICK
status=0
"$PY" "$bench/bench.py" &
BENCH_PID=$!
wait "$BENCH_PID" || status=$?
BENCH_PID=

# bench/latest/ (committed) gets full runs of every workload only
if [ -f "$out/results.json" ] && [ "$QUICK" = 0 ] && [ -z "${BENCH_ONLY:-}" ]; then
	mkdir -p "$bench/latest"
	cp "$out/results.json" "$bench/latest/results.json"
	[ -f "$out/latency.png" ] && cp "$out/latency.png" "$bench/latest/latency.png"
	note "wrote $out/results.json and $out/latency.png (copied to bench/latest/)"
elif [ -f "$out/results.json" ]; then
	note "wrote $out/results.json and $out/latency.png (not copied to bench/latest/: not a full run)"
fi
exit $status
