#!/usr/bin/env bash
# pg18.sh: prints the install prefix of PostgreSQL 18.3 built from
# ${SHARED_DIR:-../shared}/pg/postgresql-18.3.tar.xz, building it first if
# this machine has not yet: into a cache outside the checkout
# (${PG18_CACHE:-/var/cache/etcd_lock}/pg-18.3-<sha256 prefix>), keyed by
# the tarball's checksum, so later runs skip the ~8-minute build. Exits 3
# (and says why) when the tarball is not there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tarball="${SHARED_DIR:-$here/../shared}/pg/postgresql-18.3.tar.xz"
if [ ! -f "$tarball" ]; then
	echo "pg18.sh: $tarball not found" >&2
	exit 3
fi
sum=$(sha256sum "$tarball" | cut -c1-16)
prefix="${PG18_CACHE:-/var/cache/etcd_lock}/pg-18.3-$sum"
if [ -x "$prefix/bin/pg_config" ] && [ -f "$prefix/.complete" ]; then
	echo "$prefix"
	exit 0
fi
missing=()
for p in bison flex make gcc libipc-run-perl zlib1g-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { echo "pg18.sh: missing packages: ${missing[*]} (run as root)" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
build=$(mktemp -d /tmp/pg18build.XXXXXX)
trap 'rm -rf "$build"' EXIT
echo "pg18.sh: building PostgreSQL 18.3 into $prefix (once per machine, ~8 minutes)" >&2
tar -C "$build" -xJf "$tarball"
cd "$build/postgresql-18.3"
./configure --prefix="$prefix" --enable-tap-tests --without-icu --without-readline >"$build/configure.log" 2>&1 ||
	{ tail -30 "$build/configure.log" >&2; exit 1; }
make -s -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -40 "$build/make.log" >&2; exit 1; }
rm -rf "$prefix"
make -s install >"$build/install.log" 2>&1 || { tail -40 "$build/install.log" >&2; exit 1; }
touch "$prefix/.complete"
echo "$prefix"
