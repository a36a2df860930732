#!/bin/bash
# run.sh [SECONDS]: builds the fuzz target and runs libFuzzer on it for
# SECONDS (default 60), starting from the seed corpus fuzz/corpus/ (real etcd
# answers). New inputs go to fuzz/work/corpus, crash reproducers to
# fuzz/work/artifacts/. Exits non-zero if the build fails or anything
# crashes, leaks, or breaks an invariant.
# Reproduce a crash: fuzz/build/fuzz_parse fuzz/work/artifacts/crash-...
# (FUZZ_TRACE=1 says what the input did. The UTF-8 and time-bound checks
# described in fuzz_parse.c are on by default: FUZZ_STRICT=1; set
# FUZZ_STRICT=0 to turn them off.)
set -uo pipefail
export FUZZ_STRICT=${FUZZ_STRICT:-1}
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-60}
case $secs in
	''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

bash "$here/build.sh" "$here/build" >"$here/build.log" 2>&1 || {
	cat "$here/build.log" >&2
	echo "run.sh: build failed" >&2
	exit 2
}
work=$here/work
mkdir -p "$work/corpus" "$work/artifacts"
log=$work/fuzz.log

# one job, bounded in time; every input is bounded too (-timeout)
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
timeout --signal=INT --kill-after=30 $((secs + 120)) \
	"$here/build/fuzz_parse" "$work/corpus" "$here/corpus" \
	-dict="$here/etcd.dict" -max_total_time="$secs" -max_len=16384 \
	-timeout=10 -rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 \
	-artifact_prefix="$work/artifacts/" >"$log" 2>&1
rc=$?

grep -aE '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb|new_units_added)' "$log"
if [ $rc -ne 0 ] || grep -qE '^==[0-9]+==ERROR|^SUMMARY: |runtime error:|fuzz: invariant broken' "$log"; then
	grep -E -A30 '^==[0-9]+==ERROR|runtime error:|^fuzz: ' "$log" | head -80 >&2
	ls -1 "$work/artifacts" >&2
	echo "run.sh: FAILED (exit $rc); full log: $log" >&2
	exit 1
fi
echo "run.sh: no crash in ${secs}s; log: $log"
