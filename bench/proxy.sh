#!/usr/bin/env bash
# bench/proxy.sh — pier's edge proxy against nginx and HAProxy.
#
# One pier server runs the sample Go app (testdata/apps/go) as one machine.
# That machine is the single upstream for all four cases, so the only thing
# that differs between them is what sits in front of it:
#
#   direct   wrk → app                      (the ceiling; no proxy)
#   pier     wrk → pier edge proxy → app    (Host: benchapp.localhost)
#   nginx    wrk → nginx → app              (upstream keepalive)
#   haproxy  wrk → HAProxy → app            (server-side keep-alive, its default)
#
# For each case it records requests/s, p50 and p99 latency (wrk --latency)
# and the proxy's CPU time per request: utime+stime from /proc/PID/stat
# before and after the run (all nginx processes; the `pier server` process,
# which holds the proxy; the haproxy process), divided by the requests wrk
# got answered. The app's own CPU per request is shown too, because a proxy
# that makes the upstream work harder (e.g. no connection reuse) should not
# look cheap.
#
# Cases run in ROUNDS rounds, the order rotated each round so none always
# runs first or last; the table shows the median over rounds.
#
# Everything listens on and talks to 127.0.0.1 only. Every process started
# here is stopped on exit (trap), and the temp dir is removed unless the run
# failed or KEEP_WORK=1.
#
# Knobs (environment): THREADS=2 CONNS=50 DURATION=10 (s) WARMUP=3 (s)
# ROUNDS=3 WORKERS=2 (nginx worker_processes and HAProxy nbthread).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
# Fairness: pier is one Go process whose GOMAXPROCS defaults to the number of
# cores (2 here), so it may use both cores. nginx gets the same: 2 worker
# processes; HAProxy 2 threads. (wrk and the app share the same 2 cores with
# the proxy in every case, so the machine is oversubscribed in all four
# alike; CPU per request is the steadier comparison.)
WORKERS=${WORKERS:-2}
APP=benchapp
HOSTHDR="$APP.localhost"

need_packages wrk:wrk nginx:nginx haproxy:haproxy curl:curl jq:jq ss:iproute2
command -v go >/dev/null || die "go is needed to build pier"

WORK=$(mktemp -d /tmp/pier-bench-proxy.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM # turn a signal into an exit, so the EXIT trap cleans up

# ------------------------------------------------------------- machine ----
log "Machine"
{
	echo "cores:   $(nproc)"
	echo "kernel:  $(uname -r)"
	echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "go:      $(go version | cut -d' ' -f3)"
	echo "nginx:   $(nginx -v 2>&1 | cut -d/ -f2)"
	echo "haproxy: $(haproxy -v | head -1 | cut -d' ' -f3)"
	echo "wrk:     $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
	echo "pier:    commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
} | tee "$WORK/machine.txt"

# ----------------------------------------------------------- pier + app ---
build_pier
# Builds run in the server's environment: hand it the real Go caches so the
# app's build is warm (build speed is bench/launch.sh's business).
# The app runs as a host process on loopback, so every proxy reaches the
# same upstream the same way (runc machines are measured in machines.sh).
# shellcheck disable=SC2034 # start_pier (lib.sh) passes these to pier server
PIER_SERVER_ARGS=(--runtime process)
start_pier "$WORK/data" "$WORK/pier-server.log" \
	GOCACHE="$(go env GOCACHE)" GOMODCACHE="$(go env GOMODCACHE)"
log "pier server pid $PIER_PID, proxy on 127.0.0.1:$HTTP_PORT"

# launch writes pier.toml into the source dir: use a copy, not testdata.
cp -r "$REPO/testdata/apps/go" "$WORK/app"
log "Launching the sample Go app as $APP"
pier launch "$WORK/app" --yes --name "$APP" >"$WORK/launch.log" 2>&1 ||
	die "pier launch failed: $(cat "$WORK/launch.log")"

status=$(pier status -a "$APP" --json)
[[ $(jq '.machines | length' <<<"$status") == 1 ]] || die "expected 1 machine: $status"
UPSTREAM=$(jq -r '.machines[0].addr' <<<"$status")
APP_PID=$(jq -r '.machines[0].pid' <<<"$status")
[[ $UPSTREAM == 127.0.0.1:* ]] || die "upstream $UPSTREAM is not on loopback"
log "Upstream (app machine): $UPSTREAM, pid $APP_PID"

# ---------------------------------------------------------------- nginx ---
# The headers set here are the ones pier's proxy sets (Host kept,
# X-Forwarded-For/-Host/-Proto, a fresh X-Request-Id), so both do the same
# work per request. access_log off: pier writes no access log either (it
# counts requests in Prometheus metrics). keepalive_requests is raised on
# both sides because Go (app and pier) never closes a kept-alive connection
# after N requests, while nginx would after 1000 by default.
free_port NGINX_PORT
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path       $WORK/nginx/tmp/proxy;
    fastcgi_temp_path     $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path       $WORK/nginx/tmp/uwsgi;
    scgi_temp_path        $WORK/nginx/tmp/scgi;
    keepalive_requests 1000000;
    upstream app {
        server $UPSTREAM;
        keepalive 256;                # idle upstream connections kept per worker, as pier's MaxIdleConnsPerHost
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;       # needed for upstream keep-alive
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
nginx_args=(-p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
nginx "${nginx_args[@]}" -t -q
# daemon off: the master stays our child, so we know its pid and can stop it.
nginx "${nginx_args[@]}" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT" 10 "$NGINX_PID" || die "nginx did not start; see $WORK/nginx/error.log"
for _ in {1..50}; do
	mapfile -t NGINX_WORKERS < <(pgrep -P "$NGINX_PID" || true)
	((${#NGINX_WORKERS[@]} >= WORKERS)) && break
	sleep 0.1
done
((${#NGINX_WORKERS[@]} == WORKERS)) || die "nginx has ${#NGINX_WORKERS[@]} workers, want $WORKERS"
log "nginx master $NGINX_PID, workers ${NGINX_WORKERS[*]}, on 127.0.0.1:$NGINX_PORT"

# -------------------------------------------------------------- haproxy ---
# Same headers as above; HAProxy keeps server-side connections alive and
# reuses them between requests by default (http-reuse safe). One process
# (-db: foreground, no master-worker), WORKERS threads.
free_port HAPROXY_PORT
mkdir -p "$WORK/haproxy"
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096  # fits the default fd limit (ulimit -n)

defaults
    mode http
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    option forwardfor
    http-reuse safe

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    unique-id-format %{+X}o%ci%cp%fi%fp%Ts%rt%pid
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto http
    default_backend app

backend app
    server app1 $UPSTREAM
EOF
haproxy -c -q -f "$WORK/haproxy/haproxy.cfg"
haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_port "$HAPROXY_PORT" 10 "$HAPROXY_PID" || die "haproxy did not start; see $WORK/haproxy/haproxy.log"
log "haproxy pid $HAPROXY_PID on 127.0.0.1:$HAPROXY_PORT"

# ---------------------------------------------------------------- cases ---
CASES=(direct pier nginx haproxy)
declare -A URL=(
	[direct]="http://$UPSTREAM/"
	[pier]="http://127.0.0.1:$HTTP_PORT/"
	[nginx]="http://127.0.0.1:$NGINX_PORT/"
	[haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
)
# Whose CPU counts as "the proxy" in each case.
declare -A PROXY_PIDS=(
	[direct]=""
	[pier]="$PIER_PID"
	[nginx]="$NGINX_PID ${NGINX_WORKERS[*]}"
	[haproxy]="$HAPROXY_PID"
)

# Every case must answer 200 with the app's body before we measure it.
for c in "${CASES[@]}"; do
	body=$(curl -sf --max-time 5 -H "Host: $HOSTHDR" "${URL[$c]}") || die "$c: ${URL[$c]} did not answer 200"
	[[ $body == "hello from go"* ]] || die "$c answered something else: $body"
done

# wrk prints one machine-readable line at the end (latencies in µs).
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# results.tsv: case round rps p50_us p99_us proxy_us/req app_us/req errors other% dials
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# secs "1m2.5s" -> 62.5 (the format of bash's `times`).
secs() { awk -v t="$1" 'BEGIN { split(t, a, "m"); sub("s", "", a[2]); print a[1] * 60 + a[2] }'; }

# run_case CASE ROUND: warm up, then one measured wrk run.
run_case() {
	local c=$1 r=$2 pids=${PROXY_PIDS[$1]} p0=0 p1=0 a0 a1 b0 b1 k0 k1 out wrk_cpu
	# Same request everywhere, Host header included, so request sizes match.
	local wrk_args=(-t"$THREADS" -c"$CONNS" -H "Host: $HOSTHDR" "${URL[$c]}")
	wait_quiet
	# Warm-up: fills connection pools (proxy→app) and lets Go's GC and
	# nginx/haproxy buffers settle; not measured.
	wrk "${wrk_args[@]}" -d"${WARMUP}s" >/dev/null
	# shellcheck disable=SC2086 # $pids is a list
	[[ -z $pids ]] || p0=$(cpu_ticks $pids)
	a0=$(cpu_ticks "$APP_PID")
	b0=$(busy_ticks)
	k0=$(tcp_connects)
	out="$WORK/wrk-$c-round$r.txt"
	# In a subshell so that `times` reports wrk's CPU alone (its children's).
	(
		wrk "${wrk_args[@]}" -d"${DURATION}s" --latency -s "$WORK/report.lua" >"$out"
		times >"$out.times" # not in a pipe: that would be another subshell
	)
	b1=$(busy_ticks)
	k1=$(tcp_connects)
	# shellcheck disable=SC2086
	[[ -z $pids ]] || p1=$(cpu_ticks $pids)
	a1=$(cpu_ticks "$APP_PID")
	read -r wu ws < <(tail -1 "$out.times")
	wrk_cpu=$(awk -v u="$(secs "$wu")" -v s="$(secs "$ws")" 'BEGIN { print u + s }')
	read -r _ n dur p50 p99 errs non2xx < <(grep '^RESULT' "$out")
	((n > 0)) || die "$c: no requests answered"
	# dials = TCP connections opened during the run beyond wrk's own $CONNS:
	# new proxy→app connections (0 when a proxy reuses its pool; the count
	# is machine-wide, so other programs' connections would show up too).
	# other% = CPU the machine spent on anything but wrk, the proxy and the
	# app during the run, as a share of all cores: should be near 0.
	awk -v c="$c" -v r="$r" -v n="$n" -v dur="$dur" -v p50="$p50" -v p99="$p99" \
		-v pt=$((p1 - p0)) -v at=$((a1 - a0)) -v bt=$((b1 - b0)) -v wc="$wrk_cpu" -v hz="$CLK_TCK" \
		-v cores="$(nproc)" -v e=$((errs + non2xx)) -v proxy="$pids" -v dials=$((k1 - k0 - CONNS)) 'BEGIN {
		other = (bt / hz - pt / hz - at / hz - wc) / (cores * dur / 1e6) * 100
		printf "%s\t%d\t%.0f\t%d\t%d\t%s\t%.2f\t%d\t%.1f\t%d\n", c, r, n / (dur / 1e6), p50, p99,
			(proxy == "" ? "-" : sprintf("%.2f", pt / hz * 1e6 / n)), at / hz * 1e6 / n, e, (other < 0 ? 0 : other),
			(dials < 0 ? 0 : dials) }' >>"$RESULTS"
	tail -1 "$RESULTS" | awk -F'\t' '{ printf "    %-8s round %d: %7d req/s  p50 %6.2f ms  p99 %6.2f ms  proxy CPU %s µs/req  app CPU %s µs/req  errors %d  other load %s%%  new upstream conns %d\n",
		$1, $2, $3, $4 / 1000, $5 / 1000, $6, $7, $8, $9, $10 }' >&2
}

log "Benchmark: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency (after ${WARMUP}s warm-up), $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
	for ((i = 0; i < ${#CASES[@]}; i++)); do
		run_case "${CASES[(i + r - 1) % ${#CASES[@]}]}" "$r"
	done
done

# ----------------------------------------------------------------- table ---
# median CASE COLUMN: median over rounds of one column of results.tsv.
median() {
	awk -F'\t' -v c="$1" -v k="$2" '$1 == c { print $k }' "$RESULTS" | sort -g |
		awk '{ a[NR] = $1 } END { if (a[1] == "-") print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
declare -A RPS P50 P99 PCPU ACPU ERR OTHER DIALS
for c in "${CASES[@]}"; do
	RPS[$c]=$(median "$c" 3) P50[$c]=$(median "$c" 4) P99[$c]=$(median "$c" 5)
	PCPU[$c]=$(median "$c" 6) ACPU[$c]=$(median "$c" 7)
	ERR[$c]=$(awk -F'\t' -v c="$c" '$1 == c { s += $8 } END { print s + 0 }' "$RESULTS")
	DIALS[$c]=$(median "$c" 10)
	OTHER[$c]=$(awk -F'\t' -v c="$c" '$1 == c && $9 > m { m = $9 } END { print m + 0 }' "$RESULTS")
done

{
	echo
	echo "Median of $ROUNDS rounds; wrk -t$THREADS -c$CONNS -d${DURATION}s, GET / through each; proxies: nginx worker_processes $WORKERS, haproxy nbthread $WORKERS, pier GOMAXPROCS default ($(nproc))."
	echo "CPU/req = (utime+stime after - before) / requests; 'app' is the upstream's own CPU/req; 'max other load' is the largest share"
	echo "of the machine's CPU used by anything but wrk, the proxy and the app during a measured run (other sessions, kernel threads);"
	echo "'new upstream conns' counts TCP connections opened during a run beyond wrk's own (0 = the proxy reused its upstream connections)."
	echo
	echo "| case | req/s | p50 | p99 | proxy CPU/req | app CPU/req | req/s vs nginx | CPU/req vs nginx | new upstream conns | errors | max other load |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for c in "${CASES[@]}"; do
		awk -v c="$c" -v rps="${RPS[$c]}" -v p50="${P50[$c]}" -v p99="${P99[$c]}" -v pc="${PCPU[$c]}" \
			-v ac="${ACPU[$c]}" -v nrps="${RPS[nginx]}" -v npc="${PCPU[nginx]}" -v e="${ERR[$c]}" -v o="${OTHER[$c]}" -v d="${DIALS[$c]}" 'BEGIN {
			printf "| %s | %d | %.2f ms | %.2f ms | %s | %.1f µs | %.2fx | %s | %d | %d | %.0f%% |\n", c, rps, p50 / 1000, p99 / 1000,
				(pc == "-" ? "-" : sprintf("%.1f µs", pc)), ac, rps / nrps,
				(pc == "-" ? "-" : sprintf("%.2fx", pc / npc)), d, e, o }'
	done
	echo
	awk -v r="${RPS[pier]}" -v n="${RPS[nginx]}" -v p="${P99[pier]}" -v q="${P99[nginx]}" -v pc="${PCPU[pier]}" -v nc="${PCPU[nginx]}" 'BEGIN {
		# At the same concurrency: ahead on throughput with no worse p99 is
		# a clear pass; behind on throughput with no better p99 a clear miss
		# (nginx could take still more load before its p99 rose to pier'"'"'s).
		# Anything else would need a run at matched p99 to decide.
		ok = r / n >= 0.7; tail = p <= q * 1.05
		verdict = ok && tail ? "MET" : (!ok && p >= q * 0.95 ? "MISSED" : "UNDECIDED (p99s differ; compare at matched load)")
		printf "Target 1 (pier >= 0.7x nginx throughput at equal p99): pier %.2fx nginx req/s, p99 %.2f ms vs %.2f ms -> %s\n",
			r / n, p / 1000, q / 1000, verdict
		printf "Target 2 (pier CPU/req = nginx CPU/req): %.1f vs %.1f µs/req (%.2fx) -> %s\n",
			pc, nc, pc / nc, (pc <= nc * 1.05 ? "MET" : "MISSED")
	}'
} | tee "$WORK/table.md"

echo
echo "raw rounds (case round rps p50_us p99_us proxy_us/req app_us/req errors other% new_upstream_conns):"
cat "$RESULTS"
