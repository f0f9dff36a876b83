#!/usr/bin/env bash
# bench/launch.sh — how long `pier launch` takes, from typing the command to
# the app answering 200 through pier's edge proxy.
#
# Three measurements of the sample Go app (testdata/apps/go), all on one
# fresh pier server whose builds use a Go build cache of their own:
#
#   cold launch    fresh data dir, empty GOCACHE and GOMODCACHE: the build
#                  compiles the standard library too (a first deploy on a
#                  new host)
#   warm launch    `pier launch` of a second app from the same source, with
#                  the cache now filled by the cold build
#   warm redeploy  `pier deploy` of the first app after a one-line code change;
#                  timed to the first 200 whose body shows the new code
#                  (the old release keeps answering 200 until then)
#
# The clock starts right before the CLI starts and stops at the first
# matching 200 from curl polling http://127.0.0.1:<http port>/ with
# Host: <app>.localhost every 50 ms. (Until a new app has a healthy machine,
# pier's proxy holds a request up to 10 s and answers it as soon as one
# comes up, so the poll does not round the result up by much.)
#
# Only 127.0.0.1 is used; every process started here is stopped on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need_packages curl:curl jq:jq ss:iproute2
command -v go >/dev/null || die "go is needed to build pier and the app"

WORK=$(mktemp -d /tmp/pier-bench-launch.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM

build_pier # with the caller's cache: building pier is not what we measure

# The server runs builds in its own environment, so an empty cache for the
# server is an empty cache for the app's build. GOMODCACHE too, though the
# sample has no dependencies. GOFLAGS is cleared so a caller's -mod=... etc.
# cannot change what is built.
mkdir -p "$WORK/gocache" "$WORK/gomodcache"
# The app runs as a host process on loopback, so every proxy reaches the
# same upstream the same way (runc machines are measured in machines.sh).
# shellcheck disable=SC2034 # start_pier (lib.sh) passes these to pier server
PIER_SERVER_ARGS=(--runtime process)
start_pier "$WORK/data" "$WORK/pier-server.log" \
	GOCACHE="$WORK/gocache" GOMODCACHE="$WORK/gomodcache" GOFLAGS=
log "pier server pid $PIER_PID, proxy on 127.0.0.1:$HTTP_PORT, GOCACHE $WORK/gocache (empty)"

now_ns() { date +%s%N; }

# server_cpu: ticks used by the pier server and its finished children (the
# build: sh → go → compile/link), fields 14-17 of /proc/PID/stat.
server_cpu() {
	local f stat
	stat=$(<"/proc/$PIER_PID/stat")
	read -r -a f <<<"${stat##*) }"
	echo $((f[11] + f[12] + f[13] + f[14]))
}
# shell_children_cpu VAR: sets VAR to the seconds of CPU used by this
# shell's finished children (the pier CLI, curl), from the second line of
# `times`. Not called as $(...): in that subshell `times` would count only
# the subshell's own children.
shell_children_cpu() {
	times >"$WORK/times"
	printf -v "$1" '%s' "$(tail -1 "$WORK/times" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } print n }')"
}

RESULTS="$WORK/results.tsv" # label seconds_to_200 seconds_cli build_seconds other%
: >"$RESULTS"

# timed LABEL APP WANT -- CMD...: runs CMD (a pier CLI command) in the
# background and polls the app until it answers 200 with a body containing
# WANT; records seconds to that answer and to the command's exit.
timed() {
	local label=$1 app=$2 want=$3 cli body t0 t1 t2 deadline rc=0 b0 b1 s0 s1 c0 c1
	shift 4
	wait_quiet
	shell_children_cpu c0
	b0=$(busy_ticks) s0=$(server_cpu)
	t0=$(now_ns)
	"$@" >"$WORK/$label.log" 2>&1 &
	cli=$!
	PIDS+=("$cli")
	deadline=$((t0 + 600 * 1000000000))
	while :; do
		body=$(curl -sf --max-time 15 -H "Host: $app.localhost" "http://127.0.0.1:$HTTP_PORT/" || true)
		if [[ $body == *"$want"* ]]; then
			t1=$(now_ns)
			break
		fi
		if ! kill -0 "$cli" 2>/dev/null && [[ -z ${t2:-} ]]; then
			# The command is done; if it failed, no 200 is coming.
			wait "$cli" || rc=$?
			t2=$(now_ns)
			((rc == 0)) || die "$label: command failed ($rc): $(cat "$WORK/$label.log")"
		fi
		(($(now_ns) < deadline)) || die "$label: no 200 after 600 s; see $WORK/$label.log"
		sleep 0.05
	done
	if [[ -z ${t2:-} ]]; then
		wait "$cli" || die "$label: command failed after the app answered: $(cat "$WORK/$label.log")"
		t2=$(now_ns)
	fi
	b1=$(busy_ticks) s1=$(server_cpu)
	shell_children_cpu c1
	# "Built in 1.23s" / "Built in 450ms" from the build output.
	local built
	built=$(grep -o 'Built in [0-9.]*[mµ]*s' "$WORK/$label.log" | head -1 | awk '{ v = $3; if (v ~ /ms$/) { sub("ms", "", v); v /= 1000 } else if (v ~ /µs$/) { sub("µs", "", v); v /= 1e6 } else sub("s", "", v); print v }')
	# other% = CPU used by anything but the pier server, its build and the
	# commands this script ran, as a share of all cores over the wall time.
	awk -v l="$label" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v b="${built:-0}" -v bt=$((b1 - b0)) -v st=$((s1 - s0)) \
		-v ct="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" -v hz="$CLK_TCK" -v cores="$(nproc)" 'BEGIN {
		wall = (t1 - t0) / 1e9
		other = ((bt - st) / hz - ct) / (cores * wall) * 100
		printf "%s\t%.2f\t%.2f\t%.2f\t%.0f\n", l, wall, (t2 - t0) / 1e9, b, (other < 0 ? 0 : other) }' >>"$RESULTS"
	tail -1 "$RESULTS" | awk -F'\t' '{ printf "    %-14s first 200 after %6.2f s (command exited after %.2f s; build step %.2f s; other load %s%%)\n", $1, $2, $3, $4, $5 }' >&2
}

# launch writes pier.toml into the source dir: work on copies, not testdata.
cp -r "$REPO/testdata/apps/go" "$WORK/app1"
cp -r "$REPO/testdata/apps/go" "$WORK/app2"

log "Cold launch (empty build cache)"
timed cold-launch goapp "hello from go" -- pier launch "$WORK/app1" --yes --name goapp

log "Warm launch (second app, build cache filled)"
timed warm-launch goapp2 "hello from go" -- pier launch "$WORK/app2" --yes --name goapp2

log "Warm redeploy (code change, pier deploy)"
sed -i 's/hello from go/hello again from go/' "$WORK/app1/main.go"
timed warm-redeploy goapp "hello again from go" -- pier deploy "$WORK/app1"

{
	echo
	echo "pier launch/deploy of testdata/apps/go on $(nproc) cores, $(go version | cut -d' ' -f3):"
	echo
	echo "| run | first 200 through the proxy | CLI exited | build step (\"Built in\") | other load |"
	echo "|---|---:|---:|---:|---:|"
	awk -F'\t' '{ printf "| %s | %.2f s | %.2f s | %.2f s | %s%% |\n", $1, $2, $3, $4, $5 }' "$RESULTS"
} | tee "$WORK/table.md"
