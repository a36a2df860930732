#!/bin/sh
# Builds t/go_election (a test client for etcd's concurrency.Election) with
# Go modules against etcd's current Go client, go.etcd.io/etcd/client/v3
# (pinned by the go.mod and go.sum here; -mod=readonly), using
# /usr/local/go/bin/go (Go >= 1.22; Debian's 1.19 is too old).
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
echo "go-election: built with $(grep -o "go.etcd.io/etcd/client/v3 v[0-9.]*" go.mod | head -1) ($("$gobin" env GOVERSION))" >&2
