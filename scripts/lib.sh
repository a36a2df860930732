# Shared shell helpers for scripts/test.sh, scripts/demo.sh and bench/.
# Source it; it defines functions only.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# as_pg CMD...: run a command as the unprivileged postgres user when root
# (PostgreSQL refuses to run as root), else as ourselves.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# free_port: a TCP port on 127.0.0.1 nobody listens on now.
free_port() {
	python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# start_etcd DIR: starts a single-member etcd on loopback with its data in
# DIR; sets ETCD_PID and ETCD_ENDPOINT; waits until it answers.
start_etcd() {
	local dir=$1 cport pport i
	mkdir -p "$dir"
	cport=$(free_port); pport=$(free_port)
	while [ "$pport" = "$cport" ]; do pport=$(free_port); done
	etcd --name lt --data-dir "$dir/data" \
		--listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
		--listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
		--initial-cluster "lt=http://127.0.0.1:$pport" >"$dir/etcd.log" 2>&1 &
	ETCD_PID=$!
	ETCD_ENDPOINT="http://127.0.0.1:$cport"
	for i in $(seq 1 100); do
		curl -sf "$ETCD_ENDPOINT/version" >/dev/null 2>&1 && return 0
		kill -0 "$ETCD_PID" 2>/dev/null || break
		sleep 0.1
	done
	echo "etcd did not start; its log:" >&2
	cat "$dir/etcd.log" >&2
	return 1
}

stop_pid() {
	[ -n "${1:-}" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true
}

# start_pg DIR PORT [CONF_LINE...]: a throwaway PostgreSQL in DIR (made by
# initdb as the postgres user) with etcd_lock preloaded and pointed at
# $ETCD_ENDPOINT, on a Unix socket in DIR's parent directory at PORT, with
# the extra configuration lines given; starts it (log: DIR/../pg.log) and
# creates the extension.
start_pg() {
	local dir=$1 port=$2 sock
	shift 2
	sock=$(dirname "$dir")
	as_pg "$PGBIN/initdb" -D "$dir" -A trust >/dev/null
	{
		echo "shared_preload_libraries = 'etcd_lock'"
		echo "etcd_lock.endpoints = '$ETCD_ENDPOINT'"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$sock'"
		echo "port = $port"
		[ $# -gt 0 ] && printf '%s\n' "$@"
	} >> "$dir/postgresql.conf"
	as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$sock/pg.log" -w -t 60 start >/dev/null
	as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -d postgres -c 'CREATE EXTENSION etcd_lock'
}
