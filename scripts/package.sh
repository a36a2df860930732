#!/usr/bin/env bash
# package.sh: builds the Debian package postgresql-15-etcd-lock from this
# tree (in a copy: dpkg-buildpackage writes ../*.deb and build directories),
# installs it in place of any `make install` copy, checks what it ships,
# runs the pg_regress suite against a throwaway PostgreSQL 15 instance that
# loads the package's files, and on every exit path stops that instance,
# purges the package and puts back the `make install` copy it moved aside.
#
#   ETCD_ENDPOINT=http://127.0.0.1:PORT bash scripts/package.sh
#
# As root (dpkg, apt) on Debian 12, after scripts/deps.sh; installs the
# package build dependencies it lacks. Prints one PASS or FAIL line last.
# KEEP=1 keeps the work directory (logs, .deb) on success too.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/lib.sh"

pkg=postgresql-15-etcd-lock
pgbin=/usr/lib/postgresql/15/bin
stage=setup
status=1
trapped=0
# fail MSG: says why and exits; the exit trap prints the FAIL line
fail() {
	echo "package.sh: $*" >&2
	[ $trapped = 1 ] || echo "package.sh: FAIL at $stage"
	exit 1
}
[ -n "${ETCD_ENDPOINT:-}" ] || fail "set ETCD_ENDPOINT to the client URL of a running etcd"
[ "$(id -u)" = 0 ] || fail "run as root (it installs and purges a Debian package)"
curl -sf -m 5 "$ETCD_ENDPOINT/version" >/dev/null || fail "etcd does not answer at $ETCD_ENDPOINT"

# --- build dependencies (debian/control's Build-Depends, and the server
# the tests run on)
deps=(debhelper dpkg-dev build-essential postgresql-server-dev-all postgresql-server-dev-15
      libcurl4-openssl-dev libjansson-dev postgresql-15 make gcc curl)
missing=()
for p in "${deps[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "package.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=120 update -qq
	apt-get -o DPkg::Lock::Timeout=120 install -y -qq "${missing[@]}" >/dev/null
fi
libdir=$("$pgbin/pg_config" --pkglibdir)
extdir=$("$pgbin/pg_config" --sharedir)/extension

work=$(mktemp -d /tmp/etcd_lock_pkg.XXXXXX)
chmod 755 "$work"
pgdata="$work/pg/data"
moved=()    # make-install files moved aside, relative to /

# dpkg_retry ARGS...: dpkg, waiting (up to 2 minutes) for a dpkg lock
# another process holds
dpkg_retry() {
	local i out
	for i in $(seq 1 60); do
		if out=$(dpkg "$@" 2>&1); then
			[ -n "$out" ] && echo "$out"
			return 0
		fi
		if ! grep -qi 'lock' <<<"$out"; then
			echo "$out" >&2
			return 1
		fi
		sleep 2
	done
	echo "$out" >&2
	return 1
}

# purge_pkg: removes the package (and its dbgsym) if dpkg knows it at all
purge_pkg() {
	local p
	for p in "$pkg" "$pkg-dbgsym"; do
		if dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -qv '^un'; then
			dpkg_retry --purge "$p" >/dev/null
		fi
	done
}

cleanup() {
	local rc=$? f
	set +e
	if [ -f "$pgdata/postmaster.pid" ]; then
		as_pg "$pgbin/pg_ctl" -D "$pgdata" -m fast -t 30 -w stop >/dev/null 2>&1 ||
			as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate -t 30 -w stop >/dev/null 2>&1
	fi
	purge_pkg || echo "package.sh: WARNING: could not purge $pkg" >&2
	# the make-install copy goes back where it was, unless something put a
	# file there meanwhile (rename within the directory: never half a file)
	for f in "${moved[@]}"; do
		if [ ! -e "/$f" ]; then
			mkdir -p "$(dirname "/$f")"
			cp -a "$work/aside/$f" "/$f.pkgtmp.$$" && mv -f "/$f.pkgtmp.$$" "/$f"
		fi
	done
	if [ $status = 0 ]; then
		echo "package.sh: PASS ($pkg ${version:-}: built, installed, pg_regress ${tests:-} passed against the package's files, purged)"
	else
		echo "package.sh: FAIL at $stage (logs in $work)"
	fi
	if [ $status = 0 ] && [ "${KEEP:-0}" != 1 ]; then
		rm -rf "$work"
	fi
	[ $rc = 0 ] && [ $status != 0 ] && rc=1
	exit $rc
}
trap cleanup EXIT
trap 'stage="$stage (interrupted)"; exit 130' INT TERM
trapped=1

# --- build, out of tree
stage=build
t0=$(date +%s)
src="$work/build/src"
mkdir -p "$src"
if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
	# tracked and untracked-but-not-ignored files: no objects, no built SQL
	git -C "$here" ls-files -co --exclude-standard -z |
		tar -C "$here" --null --ignore-failed-read -cf - -T - 2>/dev/null | tar -C "$src" -xf -
else
	tar -C "$here" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude='tmp_check*' --exclude=results --exclude='regression.*' --exclude=regress.conf \
		--exclude=sql/etcd_lock--1.3.sql --exclude=fuzz/work --exclude=fuzz/build --exclude=bench/out \
		-cf - . | tar -C "$src" -xf -
fi
echo "package.sh: building $pkg (dpkg-buildpackage -us -uc -b in $src)"
if ! (cd "$src" && timeout 600 dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
	tail -40 "$work/build.log"
	exit 1
fi
deb=$(ls "$work/build/${pkg}_"*"_$(dpkg --print-architecture).deb")
version=$(dpkg-deb -f "$deb" Version)
echo "package.sh: built $(basename "$deb") in $(($(date +%s) - t0)) s"

# --- install it alone: no earlier package, no make-install copy
stage=install
purge_pkg
for f in "$libdir/etcd_lock.so" "$libdir/bitcode/etcd_lock.index.bc" "$libdir/bitcode/etcd_lock" \
	"$extdir/etcd_lock.control" "$extdir"/etcd_lock--*.sql; do
	[ -e "$f" ] || continue
	if dpkg -S "$f" >/dev/null 2>&1; then
		fail "$f belongs to $(dpkg -S "$f" | cut -d: -f1), not to a make install"
	fi
	rel=${f#/}
	mkdir -p "$work/aside/$(dirname "$rel")"
	mv "$f" "$work/aside/$rel"
	moved+=("$rel")
done
[ ${#moved[@]} -gt 0 ] && echo "package.sh: moved the make-install copy aside (${#moved[@]} files; put back at exit)"
dpkg_retry -i "$deb" >"$work/install.log" || { cat "$work/install.log"; exit 1; }

stage="checking the package's files"
default=$(sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$src/etcd_lock.control")
want=("$libdir/etcd_lock.so" "$extdir/etcd_lock.control" "$extdir/etcd_lock--1.0.sql"
	"$extdir/etcd_lock--1.0--1.1.sql" "$extdir/etcd_lock--1.1--1.2.sql" "$extdir/etcd_lock--1.2--1.3.sql"
	"$extdir/etcd_lock--$default.sql")
for f in "$src"/sql/etcd_lock--*.sql; do
	want+=("$extdir/$(basename "$f")")
done
listed=$(dpkg -L "$pkg")
for f in $(printf '%s\n' "${want[@]}" | sort -u); do
	grep -qx "$f" <<<"$listed" || fail "dpkg -L $pkg does not list $f"
	[ -f "$f" ] || fail "$f is listed but not installed"
done
dpkg --verify "$pkg" || fail "the installed files differ from the package's"
(cd "$src" && sh debian/tests/installed-files) >"$work/autopkgtest.log" 2>&1 ||
	{ cat "$work/autopkgtest.log"; fail "debian/tests/installed-files failed"; }
echo "package.sh: dpkg -L lists the library, the control file and $(grep -c '/etcd_lock--.*\.sql$' <<<"$listed") SQL scripts"

# --- a throwaway PostgreSQL 15 on loopback, preloading the package's library
stage="starting PostgreSQL"
port=$(free_port)
mkdir -p "$work/pg" "$work/regress"
chown postgres "$work/pg" "$work/regress"
as_pg "$pgbin/initdb" -D "$pgdata" -A trust -U postgres >"$work/initdb.log" 2>&1 ||
	{ cat "$work/initdb.log"; exit 1; }
cat >>"$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work/pg'
shared_preload_libraries = 'etcd_lock'
etcd_lock.endpoints = '$ETCD_ENDPOINT'
etcd_lock.request_timeout = '3s'
CONF
as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$work/pg/pg.log" -w -t 60 start >/dev/null ||
	{ tail -30 "$work/pg/pg.log"; exit 1; }
pmpid=$(head -1 "$pgdata/postmaster.pid")
loaded=$(grep -o '/[^ ]*/etcd_lock\.so$' "/proc/$pmpid/maps" | sort -u)
[ "$loaded" = "$libdir/etcd_lock.so" ] || fail "the server loaded '${loaded:-nothing}', not $libdir/etcd_lock.so"
echo "package.sh: PostgreSQL $("$pgbin/postgres" -V | awk '{print $3}') on 127.0.0.1:$port preloads $loaded (from $(dpkg -S "$loaded" | cut -d: -f1))"

# --- the repository's pg_regress suite (the Makefile's REGRESS) with
# Debian's pg_regress
stage=pg_regress
tests=$(make -s --no-print-directory -C "$src" -f Makefile -f - PG_CONFIG="$pgbin/pg_config" print-regress \
	<<<'print-regress: ; @echo $(REGRESS)')
[ -n "$tests" ] || fail "no REGRESS tests in the Makefile"
regress="$(dirname "$("$pgbin/pg_config" --pgxs)")/../test/regress/pg_regress"
rc=0
as_pg timeout 300 "$regress" --inputdir="$src" --outputdir="$work/regress" --bindir="$pgbin" \
	--host=127.0.0.1 --port="$port" --user=postgres --dbname=contrib_regression $tests || rc=$?
if [ $rc != 0 ]; then
	[ -f "$work/regress/regression.diffs" ] && head -200 "$work/regress/regression.diffs"
	exit 1
fi
stage="checking the package's files after the tests"
dpkg --verify "$pkg" || fail "the package's files changed during the tests (a concurrent make install?)"
status=0
