#!/usr/bin/env bash
# bench/restart.sh — what a restart of the server costs the requests it
# serves: pier server's graceful restart (kill -HUP: a new server takes
# over the listening sockets and adopts the machines) beside nginx's
# `nginx -s reload` (new workers take over the same sockets), each under
# the same open-loop, fixed-rate load (bench/restartbench) of GET / through
# loopback. Reported per run: requests sent, failed, p50/p99/max latency,
# p99 of the requests sent within 0.5s of the restart, and how long the
# restart command took.
#
# pier runs its apps isolated under runc when this runs as root with runc
# installed (the default pier server), else as host processes (then its
# machines restart with the server: compare with RUNTIME=runc).
#
# Knobs (environment): RUNS=3 RATE=200 DURATION=10s AT=4s.
# Takes about a minute per run, after a first build of the sample app.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-3}
RATE=${RATE:-200}
DURATION=${DURATION:-10s}
AT=${AT:-4s}
need_packages nginx:nginx curl:curl

WORK=$(mktemp -d)
PIDS=()
trap cleanup EXIT
build_pier
(cd "$REPO" && go build -o "$WORK/restartbench" ./bench/restartbench)

run_nginx() {
	local port conf=$WORK/nginx.conf
	free_port port
	mkdir -p "$WORK/nginx"
	cat >"$conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
	access_log off;
	server {
		listen 127.0.0.1:$port;
		location / { return 200 "hello from nginx\n"; }
	}
}
CONF
	nginx -c "$conf" -p "$WORK/nginx"
	wait_port "$port" 10 || die "nginx did not come up"
	"$WORK/restartbench" -url "http://127.0.0.1:$port/" -want "hello from nginx" -rate "$RATE" -duration "$DURATION" -at "$AT" -- \
		nginx -c "$conf" -p "$WORK/nginx" -s reload
	nginx -c "$conf" -p "$WORK/nginx" -s stop
}

run_pier() {
	local data=$WORK/data-$1
	PIER_SERVER_ARGS=(--stop-machines-on-exit)
	start_pier "$data" "$WORK/pier-$1.log" GOCACHE="$(go env GOCACHE)" GOMODCACHE="$(go env GOMODCACHE)"
	cp -r "$REPO/testdata/apps/go" "$WORK/app-$1"
	printf 'app = "steady"\n' >"$WORK/app-$1/pier.toml"
	pier launch "$WORK/app-$1" --yes >"$WORK/launch-$1.log" 2>&1 || die "launch failed; see $WORK/launch-$1.log"
	local i
	for ((i = 0; i < 100; i++)); do
		[[ $(http_code steady.localhost "http://127.0.0.1:$HTTP_PORT/") == 200 ]] && break
		sleep 0.1
	done
	"$WORK/restartbench" -url "http://127.0.0.1:$HTTP_PORT/" -host steady.localhost -want "hello from go" -rate "$RATE" -duration "$DURATION" -at "$AT" -- \
		kill -HUP "$(cat "$data/server.pid")"
	# The server running now is the one that took over.
	stop_pid "$(cat "$data/server.pid")"
	stop_pid "$PIER_PID"
}

log "pier server: $("$PIER" --version 2>/dev/null || echo dev); rate $RATE/s for $DURATION, restart at $AT"
for ((r = 1; r <= RUNS; r++)); do
	log "run $r: nginx -s reload"
	printf 'nginx %s\n' "$(run_nginx)"
	log "run $r: pier server, kill -HUP"
	printf 'pier  %s\n' "$(run_pier "$r")"
done
