#!/bin/sh
# Builds t/history_check (the linearizability checker of t/012_nemesis.pl's
# lock history) with Go modules against Porcupine,
# github.com/anishathalye/porcupine (pinned by the go.mod and go.sum here;
# -mod=readonly), using /usr/local/go/bin/go (Go >= 1.22; Debian's 1.19 is
# too old).
# Usage: build.sh OUTPUT_BINARY
set -e
out=${1:?usage: build.sh OUTPUT_BINARY}
case $out in /*) ;; *) out="$(pwd)/$out" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
gobin=/usr/local/go/bin/go
[ -x "$gobin" ] || gobin=$(command -v go)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here/main.go" "$here/go.mod" "$here/go.sum" "$tmp/"
cd "$tmp"
GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOCACHE="${GOCACHE:-$tmp/cache}" "$gobin" build -o "$out" .
echo "history-check: built with $(grep -o "github.com/anishathalye/porcupine v[0-9.]*" go.mod | head -1) ($("$gobin" env GOVERSION))" >&2
