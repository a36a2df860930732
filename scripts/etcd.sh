#!/usr/bin/env bash
# etcd.sh VERSION: prints a directory holding etcd and etcdctl of that
# release (e.g. 3.7.3), building them first if this machine has not yet:
# from the Go module proxy (go.etcd.io/etcd/server/v3@vVERSION calling
# etcdmain.Main, go.etcd.io/etcd/etcdctl/v3@vVERSION calling
# ctlv3.MustStart) with Go >= 1.22 (/usr/local/go/bin/go), into
# ${ETCD_CACHE:-/var/cache/etcd_lock}/etcd-VERSION, so later runs skip the
# build (30-80 s each on 2 cores). "3.4" prints Debian's etcd-server
# directory instead (/usr/bin), which deps.sh installs.
# The versions CI runs are pinned in scripts/test.sh (ETCD_36, ETCD_37),
# and every module they build from is pinned by the go.mod and go.sum
# committed in scripts/etcd/VERSION/ (built with -mod=readonly). To add or
# bump a version: run this script with it (it resolves the modules with
# go get and says so), then copy the cache's etcd.go.mod, etcd.go.sum,
# etcdctl.go.mod and etcdctl.go.sum into scripts/etcd/VERSION/.
set -euo pipefail
ver=${1:?usage: etcd.sh VERSION (3.4 or e.g. 3.7.3)}
if [ "$ver" = 3.4 ]; then
	command -v etcd >/dev/null || { echo "etcd.sh: Debian's etcd-server is not installed" >&2; exit 1; }
	dirname "$(command -v etcd)"
	exit 0
fi
case "$ver" in
	3.[5-9].[0-9]*) ;;
	*) echo "etcd.sh: version $ver: expected 3.4 or 3.N.M (N >= 5)" >&2; exit 2 ;;
esac
dir="${ETCD_CACHE:-/var/cache/etcd_lock}/etcd-$ver"
if [ -x "$dir/etcd" ] && [ -x "$dir/etcdctl" ] && [ -f "$dir/.complete" ]; then
	echo "$dir"
	exit 0
fi
gobin=""
for g in /usr/local/go/bin/go "$(command -v go 2>/dev/null || true)"; do
	[ -n "$g" ] && [ -x "$g" ] || continue
	minor=$("$g" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
	[ -n "$minor" ] && [ "$minor" -ge 22 ] && { gobin=$g; break; }
done
[ -n "$gobin" ] || { echo "etcd.sh: no Go >= 1.22 (expected /usr/local/go/bin/go)" >&2; exit 1; }
build=$(mktemp -d /tmp/etcdbuild.XXXXXX)
trap 'rm -rf "$build"' EXIT
echo "etcd.sh: building etcd $ver and etcdctl $ver into $dir (once per machine)" >&2
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$build/server" "$build/ctl" "$dir.tmp"
cat >"$build/server/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
cat >"$build/ctl/main.go" <<'EOF'
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() { ctlv3.MustStart() }
EOF
pins="$(cd "$(dirname "$0")" && pwd)/etcd/$ver"
for part in server:go.etcd.io/etcd/server/v3:etcd ctl:go.etcd.io/etcd/etcdctl/v3:etcdctl; do
	sub=${part%%:*}; rest=${part#*:}; mod=${rest%:*}; bin=${rest##*:}
	if [ -f "$pins/$bin.go.mod" ] && [ -f "$pins/$bin.go.sum" ]; then
		cp "$pins/$bin.go.mod" "$build/$sub/go.mod"
		cp "$pins/$bin.go.sum" "$build/$sub/go.sum"
		(cd "$build/$sub" && GOFLAGS=-mod=readonly "$gobin" build -o "$dir.tmp/$bin" . >"$build/$sub.log" 2>&1) ||
			{ echo "etcd.sh: building $bin $ver (pinned in $pins) failed:" >&2; tail -20 "$build/$sub.log" >&2; exit 1; }
	else
		echo "etcd.sh: $ver is not pinned in scripts/etcd/; resolving $mod@v$ver with go get" >&2
		(cd "$build/$sub" && "$gobin" mod init "etcdlock$sub" >/dev/null 2>&1 &&
			"$gobin" get "$mod@v$ver" >"$build/$sub.log" 2>&1 &&
			"$gobin" build -o "$dir.tmp/$bin" . >>"$build/$sub.log" 2>&1) ||
			{ echo "etcd.sh: building $bin $ver failed:" >&2; tail -20 "$build/$sub.log" >&2; exit 1; }
	fi
	cp "$build/$sub/go.mod" "$dir.tmp/$bin.go.mod"
	cp "$build/$sub/go.sum" "$dir.tmp/$bin.go.sum"
done
# read the whole answer first: with pipefail, "| grep -q" fails when grep
# exits at the first line and etcd (3.5 writes each line separately) gets
# SIGPIPE on the next one
said=$("$dir.tmp/etcd" --version 2>&1 || true)
case "$said" in
	*"etcd Version: $ver"*) ;;
	*) echo "etcd.sh: the built etcd does not say version $ver: $said" >&2; exit 1 ;;
esac
rm -rf "$dir"
mv "$dir.tmp" "$dir"
touch "$dir/.complete"
echo "$dir"
