#!/bin/sh
# Builds t/go_election (a test client for etcd's concurrency.Election) with
# Debian's Go toolchain and Debian's packaged etcd v3.4 client sources, in
# GOPATH mode, as ../shared/reference/go-mutex/build.sh does.
# Usage: build.sh OUTPUT_BINARY
set -e
out=${1:?usage: build.sh OUTPUT_BINARY}
case $out in /*) ;; *) out="$(pwd)/$out" ;; esac
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ]; then
	apt-get install -y golang-go golang-etcd-server-dev >/dev/null
fi
here=$(cd "$(dirname "$0")" && pwd)
gp=$(mktemp -d)
trap 'rm -rf "$gp"' EXIT
mkdir -p "$gp/src/goelection"
cp "$here/main.go" "$gp/src/goelection/"
cd "$gp/src/goelection"
GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOCACHE="$gp/cache" go build -o "$out" .
