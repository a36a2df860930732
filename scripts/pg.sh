#!/usr/bin/env bash
# pg.sh VERSION (16.13, 17.6 or 18.3): prints the install prefix of that
# PostgreSQL release built from ${SHARED_DIR:-../shared}/pg/postgresql-VERSION.tar.xz,
# building it first if this machine has not yet: into a cache outside the
# checkout (${PG_CACHE:-/var/cache/etcd_lock}/pg-VERSION-<sha256 prefix>),
# keyed by the tarball's checksum, so later runs skip the build (16.13 and
# 17.6 about 3-4 minutes, 18.3 about 5-8 on 2 cores). Exits 3 (and says
# why) when the tarball is not there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ver=${1:?usage: pg.sh VERSION (e.g. 17.6)}
case "$ver" in
	1[6-9].[0-9]*) ;;
	*) echo "pg.sh: version $ver: expected a release of PostgreSQL 16 or later (15 comes from Debian)" >&2; exit 2 ;;
esac
tarball="${SHARED_DIR:-$here/../shared}/pg/postgresql-$ver.tar.xz"
if [ ! -f "$tarball" ]; then
	echo "pg.sh: $tarball not found" >&2
	exit 3
fi
sum=$(sha256sum "$tarball" | cut -c1-16)
prefix="${PG_CACHE:-${PG18_CACHE:-/var/cache/etcd_lock}}/pg-$ver-$sum"
if [ -x "$prefix/bin/pg_config" ] && [ -f "$prefix/.complete" ]; then
	echo "$prefix"
	exit 0
fi
missing=()
for p in bison flex make gcc libipc-run-perl zlib1g-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { echo "pg.sh: missing packages: ${missing[*]} (run as root)" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
build=$(mktemp -d /tmp/pgbuild.XXXXXX)
trap 'rm -rf "$build"' EXIT
echo "pg.sh: building PostgreSQL $ver into $prefix (once per machine)" >&2
tar -C "$build" -xJf "$tarball"
cd "$build/postgresql-$ver"
./configure --prefix="$prefix" --enable-tap-tests --without-icu --without-readline >"$build/configure.log" 2>&1 ||
	{ tail -30 "$build/configure.log" >&2; exit 1; }
make -s -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -40 "$build/make.log" >&2; exit 1; }
rm -rf "$prefix"
make -s install >"$build/install.log" 2>&1 || { tail -40 "$build/install.log" >&2; exit 1; }
touch "$prefix/.complete"
echo "$prefix"
