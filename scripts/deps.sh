#!/usr/bin/env bash
# Installs what building and testing etcd_lock needs on Debian 12, if missing:
# PostgreSQL 15 server + headers, libcurl, jansson, etcd, IPC::Run for TAP,
# pgbench/contrib, clang + its sanitizer/libFuzzer runtime for the fuzz
# target, SPIN for the protocol models (spec/). Go comes from /usr/local/go
# (1.26; etcd 3.5+, etcd's current Go client and our Go test clients need
# >= 1.22): Debian's golang-go (1.19)
# is too old and is not installed, so that it cannot shadow it on PATH.
set -euo pipefail
pkgs=(postgresql-15 postgresql-contrib postgresql-server-dev-15 libcurl4-openssl-dev
      libjansson-dev etcd-server etcd-client libipc-run-perl make gcc
      clang-14 libclang-rt-14-dev
      curl openssl iproute2 procps python3 spin)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing packages: ${missing[*]} (run as root to install them)" >&2
		exit 1
	fi
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x /usr/local/go/bin/go ]; then
	echo "deps.sh: /usr/local/go/bin/go (Go >= 1.22) is missing: etcd 3.5+ and the Go clients cannot be built" >&2
	exit 1
fi
