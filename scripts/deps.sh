#!/usr/bin/env bash
# Installs what building and testing etcd_lock needs on Debian 12, if missing:
# PostgreSQL 15 server + headers, libcurl, jansson, etcd, IPC::Run for TAP,
# Go + etcd's Go client sources for the reference mutex, pgbench/contrib,
# clang + its sanitizer/libFuzzer runtime for the fuzz target.
set -euo pipefail
pkgs=(postgresql-15 postgresql-contrib postgresql-server-dev-15 libcurl4-openssl-dev
      libjansson-dev etcd-server etcd-client libipc-run-perl make gcc
      golang-go golang-etcd-server-dev clang-14 libclang-rt-14-dev
      curl openssl iproute2 procps python3)
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
