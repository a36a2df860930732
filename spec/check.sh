#!/bin/bash
# spec/check.sh: model-check the lock protocol (spec/lock.pml, spec/lease.pml)
# with SPIN.  Every configuration must verify (assertions, invalid end
# states; the no-orphan LTL property under weak fairness), and every
# mutation must be caught (SPIN reports a violation, with a trail).
# One line per run:
#   model NAME: verified, N states, depth D, T s
#   mutation NAME: caught (what was violated, N states, depth D, T s)
# then the total time and a summary line.  Exit status: non-zero if any
# model fails or any mutation is not caught.
#
# Builds in a temporary directory (nothing is written to spec/).  lock.pml
# reads its configuration (fault bounds, script, mutations) from pan's
# environment, so one compiled pan serves every safety run of the lock
# model; -DSEM and -DLIVE (the LTL property) are compiled apart, and
# lease.pml once per configuration (it compiles in seconds).  Builds and
# runs go SPEC_JOBS (default 2) at a time.  Each pan run is exhaustive
# (-DCOLLAPSE is lossless) and bounded in memory (-DMEMLIM), depth (-m)
# and time (timeout); a run that hits a bound counts as a failure (a model
# not verified, a mutation not caught).  See spec/README.md for the bounds
# and why they cover the historical windows.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/etcd_lock_spec.XXXXXX")
trap 'rm -rf "$work"' EXIT

MEMLIM=${SPEC_MEMLIM:-3000}		# MB per pan run
TMO=${SPEC_TIMEOUT:-150}		# seconds per pan run
JOBS=${SPEC_JOBS:-2}			# builds / runs at once
DEPTH=300000
# pan.c of lock.pml: gcc's RTL dead-store elimination and PRE/GCSE take
# over 100 s on it; without them -O2 compiles in ~25 s and the search runs
# ~4x faster than at -O0
CCOPT=${SPEC_CCOPT:--O2 -fno-dse -fno-tree-dse -fno-tree-pre -fno-gcse}

# fault bounds of lock.pml per configuration (README: "Bounds")
NOF="FAULTS=0 LOSSES=0 WFAULTS=0 WRESTARTS=0 GIVEUPS=0"
NET="$NOF FAULTS=1"
LEASE="$NOF LOSSES=1 WFAULTS=1"
CANCEL="$NOF WRESTARTS=1 GIVEUPS=1"

t_all=$(date +%s)

# ---- builds ----
# build NAME MODEL "SPIN/CC FLAGS" "CC-ONLY FLAGS"
build() {
	local name=$1 model=$2 flags=$3 ccflags=$4 d="$work/build.$1"
	mkdir -p "$d"
	cp "$here/$model" "$d/"
	(
		cd "$d" &&
		nice -n 19 spin $flags -a "$model" >spin.out 2>&1 &&
		nice -n 19 gcc $CCOPT -w -DMEMLIM=$MEMLIM -DCOLLAPSE $flags $ccflags -o pan pan.c >cc.out 2>&1
	) || echo "build $name: FAILED ($(cat "$d/spin.out" "$d/cc.out" 2>/dev/null | head -3 | tr '\n' ' '))" >"$d/failed"
	touch "$work/built.$name"
}

# job slots
slot() {
	while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
}

# ---- the runs ----
# each run: KIND|NAME|BUILD|ENV|PAN ARGS
#   KIND: model (must verify), mutation (must report a violation)
#   BUILD: lock (safety), sem (-DSEM), live (-DLIVE, the LTL claim), or a
#   lease.pml build
runs=()
add() { runs+=("$1|$2|$3|$4|$5"); }

# lock.pml: the models
add model lock-net lock "$NET SCRIPT=1" ""
add model lock-lease lock "$LEASE SCRIPT=2" ""
add model lock-cancel lock "$CANCEL SCRIPT=2" ""
add model lock-sem sem "$NET SCRIPT=2" ""
add model lock-group lock "$NET GROUP=1 SCRIPT=8" ""
# the base of MUT_DROP_LOST_TRYLOCK: the C code before the late-resend fix
# verifies as long as no message outlives its sender's wait
add model lock-unfixed-lostreply lock "$NET MUT_LATE_RESEND=1 LOST_REPLY_ONLY=1 SCRIPT=4" ""
# no orphan, LTL under weak fairness: two clients, one fault of each kind
add model lock-noorphan-net live "$NET SCRIPT=7" "-a -f -N noorphan"
add model lock-noorphan-cancel live "$CANCEL SCRIPT=4" "-a -f -N noorphan"
add model lock-noorphan-lease live "$LEASE SCRIPT=4" "-a -f -N noorphan"
# lease.pml (README "Bounds": why these)
add model lease lease "" ""
add model lease-ops2 lease-ops2 "" ""

# mutations: each must be caught
add mutation MUT_FORGET_TIMED_OUT_RELEASE lock "$CANCEL WRESTARTS=0 SCRIPT=1 MUT_FORGET_TIMED_OUT_RELEASE=1" ""
add mutation MUT_DROP_LOST_TRYLOCK lock "$NET MUT_LATE_RESEND=1 LOST_REPLY_ONLY=1 SCRIPT=4 MUT_DROP_LOST_TRYLOCK=1" ""
add mutation MUT_TRUST_WORKER lock "$LEASE SCRIPT=2 MUT_TRUST_WORKER=1" ""
add mutation MUT_HANDOFF_NOT_OLDEST lock "$LEASE SCRIPT=2 MUT_HANDOFF_NOT_OLDEST=1" ""
add mutation MUT_RELEASE_NO_COMPARE lock "$NET SCRIPT=1 MUT_RELEASE_NO_COMPARE=1" ""
add mutation MUT_GRANT_AFTER_EXPIRY lock "$LEASE SCRIPT=2 MUT_GRANT_AFTER_EXPIRY=1" ""
add mutation MUT_BATCH_LOST_REPLY lock "$NET GROUP=1 SCRIPT=6 MUT_BATCH_LOST_REPLY=1" ""
add mutation MUT_FORGET_OWED_TRY lock "$CANCEL SCRIPT=1 MUT_FORGET_OWED_TRY=1" ""
add mutation MUT_LATE_RESEND lock "$NET SCRIPT=2 MUT_LATE_RESEND=1" ""
add mutation MUT_LATE_RESEND-ltl live "$NET SCRIPT=4 MUT_LATE_RESEND=1" "-a -f -N noorphan"
add mutation MUT_DEADLINE_LATEST_SEND lease-mut-deadline "" ""
add mutation MUT_TRUST_WORKER-lease lease-mut-trust "" ""

# what a violation was (the first error pan reports)
reason() {
	local out=$1 l
	l=$(grep -m1 -E '^pan:1:' "$out" || true)
	case $l in
	*"acceptance cycle"*) echo "LTL no-orphan: a key given up never goes (acceptance cycle)" ;;
	*"invalid end state"*) echo "invalid end state: a waiter blocked for good" ;;
	*"nblk<"*) echo "FIFO: admitted with its key gone or an older blocking key" ;;
	*"cn[("*) echo "orphan key left at the end (Final)" ;;
	*"lok["*) echo "mutual exclusion: two holders" ;;
	*"eexp["*) echo "a backend relies on a lease etcd no longer has" ;;
	*"held[0]&&"*|*"held[1]&&"*) echo "two holders" ;;
	*"key["*) echo "orphan key under a renewed lease (Final)" ;;
	*) echo "${l#pan:1: }" | cut -c1-60 ;;
	esac
}

# run IDX: one pan run; its result line in $work/res.IDX, its status in
# $work/ok.IDX
run() {
	local idx=$1 kind name bld envs args d rc=0 out states depth errs t0 t1 secs result line
	IFS='|' read -r kind name bld envs args <<<"${runs[$idx]}"
	while [ ! -e "$work/built.$bld" ]; do sleep 0.5; done
	d="$work/run.$idx"
	mkdir -p "$d"
	out="$d/pan.out"
	t0=$(date +%s.%N)
	if [ -e "$work/build.$bld/failed" ]; then
		cat "$work/build.$bld/failed" >"$out"
		rc=1
	else
		cp "$work/build.$bld"/*.pml "$d/"
		# shellcheck disable=SC2086
		(cd "$d" && env $envs nice -n 19 timeout "$TMO" "$work/build.$bld/pan" -m$DEPTH $args >"$out" 2>&1) || rc=$?
	fi
	t1=$(date +%s.%N)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	states=$(awk '/states, stored/ { print $1; exit }' "$out" 2>/dev/null)
	# cut short by timeout: the last progress line says how far it got
	[ -n "$states" ] || states=$(sed -n 's/.*States= *\([0-9.e+]*\).*/\1/p' "$out" 2>/dev/null | tail -1)
	depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$out" 2>/dev/null | head -1)
	[ -n "$depth" ] || depth=$(sed -n 's/^Depth= *\([0-9]*\).*/\1/p' "$out" 2>/dev/null | tail -1)
	errs=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" 2>/dev/null | head -1)
	[ -n "$states" ] || states="?"
	[ -n "$depth" ] || depth="?"
	if [ "$rc" = 124 ]; then
		result="TIMEOUT after ${TMO} s"
	elif [ "$rc" != 0 ] || [ -z "$errs" ]; then
		result="ERROR (exit $rc)"
	elif [ "$errs" != 0 ]; then
		result="violation"
	elif grep -q "error: max search depth too small\|pan: out of memory\|memory limit" "$out"; then
		result="BOUND HIT (depth or memory)"
	else
		result="verified"
	fi
	if [ "$kind" = model ]; then
		if [ "$result" = verified ]; then
			line="model $name: verified, $states states, depth $depth, $secs s"
			echo 0 >"$work/ok.$idx"
		else
			line="model $name: FAILED: $result, $states states, depth $depth, $secs s"
			[ "$result" = violation ] && line="$line
    $(grep -m1 '^pan:1:' "$out" | cut -c1-200)"
			[ "$result" = "ERROR (exit $rc)" ] && line="$line
    $(head -3 "$out" | tr '\n' ' ' | cut -c1-200)"
			echo 1 >"$work/ok.$idx"
		fi
	else
		if [ "$result" = violation ]; then
			line="mutation $name: caught ($(reason "$out"), $states states, depth $depth, $secs s)"
			echo 0 >"$work/ok.$idx"
		else
			line="mutation $name: NOT caught ($result, $states states, depth $depth, $secs s)"
			echo 1 >"$work/ok.$idx"
		fi
	fi
	printf '%s\n' "$line" >"$work/res.$idx"
}

# lease.pml configurations (README "Bounds"): TMAX ticks, OPS try-locks
# per backend of A, FAULTS lost/late messages, PARTS partitions, CRASHES
# crash restarts, NBACK backends of instance A
LEASE_ALL="-DNBACK=1 -DTMAX=8 -DOPS=1 -DFAULTS=1 -DPARTS=1 -DCRASHES=1"
LEASE_OPS2="-DNBACK=1 -DTMAX=6 -DOPS=2 -DFAULTS=1 -DPARTS=0 -DCRASHES=1"

# builds and runs in an order that keeps both slots busy: the three large
# builds (lock, sem, live) are spread out, and each run waits for its
# build; the longest runs go first after their build
order() {
	local i
	for i in "${!runs[@]}"; do
		case ${runs[$i]} in *"|$1|"*) echo "$i" ;; esac
	done
}
slot; build lock lock.pml "" "-DSAFETY" &
slot; build lease lease.pml "$LEASE_ALL" "-DSAFETY" &
slot; build lease-ops2 lease.pml "$LEASE_OPS2" "-DSAFETY" &
slot; build lease-mut-deadline lease.pml "$LEASE_ALL -DMUT_DEADLINE_LATEST_SEND" "-DSAFETY" &
slot; build lease-mut-trust lease.pml "$LEASE_ALL -DMUT_TRUST_WORKER" "-DSAFETY" &
for b in lease-ops2 lease lease-mut-deadline lease-mut-trust; do
	for i in $(order "$b"); do slot; run "$i" & done
done
slot; build sem lock.pml "-DSEM" "-DSAFETY" &
for i in $(order lock); do slot; run "$i" & done
slot; build live lock.pml "-DLIVE" "-DNFAIR=3" &
for b in sem live; do
	for i in $(order "$b"); do slot; run "$i" & done
done
wait

failed=0
for i in "${!runs[@]}"; do
	if [ -e "$work/res.$i" ]; then
		cat "$work/res.$i"
		[ "$(cat "$work/ok.$i")" = 0 ] || failed=1
	else
		echo "${runs[$i]}: no result"
		failed=1
	fi
done

echo "total $(($(date +%s) - t_all)) s"
if [ "$failed" != 0 ]; then
	echo "spec/check.sh: FAILED"
	exit 1
fi
echo "spec/check.sh: every model verified, every mutation caught"
