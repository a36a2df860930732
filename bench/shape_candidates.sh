#!/usr/bin/env bash
# Candidate request shapes for the uncontended pair, against the
# extension's own (issue 12: keep only what the numbers support).
#   bash bench/shape_candidates.sh http://127.0.0.1:PORT [N] [ROUNDS]
# Builds bench/gateway_shapes.c, then runs each variant N pairs per round,
# alternating the variants round by round, and prints the median pair p50
# of each and its ratio to the extension's shapes. Needs a running etcd.
set -euo pipefail
ep=${1:?usage: shape_candidates.sh ENDPOINT [N] [ROUNDS]}
n=${2:-1000}
rounds=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp /tmp/gateway_shapes.XXXXXX)
trap 'rm -f "$bin"' EXIT
cc -O2 -Wall -o "$bin" "$here/gateway_shapes.c" -lcurl
variants="current release_plain no_failure with_values"
declare -A p50s
for r in $(seq 1 "$rounds"); do
	for v in $variants; do
		line=$(SHAPES_VARIANT=$v "$bin" "$ep" "$n" "/shape_candidates/$v")
		p50=$(echo "$line" | sed -n 's/.*pair_p50_us=\([0-9]*\).*/\1/p')
		p50s[$v]="${p50s[$v]:-} $p50"
	done
done
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${p50s[current]}" | med)
for v in $variants; do
	m=$(echo "${p50s[$v]}" | med)
	printf '%-14s pair p50 %5d us (rounds:%s)  %.2fx the extension'"'"'s shapes\n' "$v" "$m" "${p50s[$v]}" "$(echo "$m $base" | awk '{print $1/$2}')"
done
