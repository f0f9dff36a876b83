#!/usr/bin/env bash
# bench/mesh.sh — one hop of pier's service mesh against a pair of HAProxy
# instances doing the same mTLS hop, and against no proxy at all.
#
#   direct   client → backend
#   mesh     client → pier outbound → mTLS → pier inbound → backend   (one Go process)
#   haproxy  client → HAProxy A → mTLS → HAProxy B → backend           (nbthread 1 each)
#
# The measuring is done by bench/meshbench (see its doc comment for what
# exactly runs and how): open-loop latency at fixed rates (added p50/p99
# over the direct path), closed-loop maximum throughput and CPU per
# request, RSS and CPU per proxied connection, and new mTLS connections per
# second with full and resumed TLS 1.3 handshakes. Each run starts fresh
# processes; the script makes RUNS runs, waiting before each for the
# machine to be quiet, then prints the medians over the runs. The last run
# also profiles the mesh process under the closed-loop load (not part of
# the tables) and prints `go tool pprof -top` of it.
#
# Everything listens on and talks to 127.0.0.1 only. meshbench's child
# processes (backend, mesh, HAProxy) die with it; its temp files live in
# $WORK, which is removed on exit unless the run failed or KEEP_WORK=1.
#
# Knobs (environment): RUNS=3 DURATION=10s RATES=500,2000 CONNS=32
# MAX_CONNS=64 IDLE=1000 TLS_DURATION=3s PROFILE=1 (0: no profile)
# HAPROXY_H2= (1: HAProxy A speaks HTTP/2 to B, as pier's hop does).
# A run takes about 2.5 minutes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
RATES=${RATES:-500,2000}
CONNS=${CONNS:-32}
MAX_CONNS=${MAX_CONNS:-64}
IDLE=${IDLE:-1000}
TLS_DURATION=${TLS_DURATION:-3s}
PROFILE=${PROFILE:-1}
HAPROXY_H2=${HAPROXY_H2:-}

need_packages haproxy:haproxy
command -v go >/dev/null || die "go is needed to build bench/meshbench"

WORK=$(mktemp -d /tmp/pier-bench-mesh.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM
export TMPDIR=$WORK # meshbench's own temp dir goes in here too

REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
log "Machine"
{
	echo "cores:   $(nproc)"
	echo "kernel:  $(uname -r)"
	echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "go:      $(go version | cut -d' ' -f3)"
	echo "haproxy: $(haproxy -v | head -1 | cut -d' ' -f3)"
	echo "pier:    commit $REV"
} | tee "$WORK/machine.txt"

log "Building bench/meshbench"
(cd "$REPO" && go build -o "$WORK/meshbench" ./bench/meshbench)

args=(-duration "$DURATION" -rates "$RATES" -conns "$CONNS" -max-conns "$MAX_CONNS" -idle "$IDLE" -tls-duration "$TLS_DURATION" -pier "$REV")
[[ -z $HAPROXY_H2 ]] || args+=(-haproxy-h2)
for ((i = 1; i <= RUNS; i++)); do
	wait_quiet
	log "Run $i/$RUNS"
	extra=()
	if ((i == RUNS)) && [[ $PROFILE == 1 ]]; then
		extra=(-cpuprofile "$WORK/mesh-cpu.prof")
	fi
	"$WORK/meshbench" "${args[@]}" "${extra[@]}" -run "$i" -json "$WORK/run$i.json" | tee "$WORK/run$i.md"
done

log "All runs, and the medians over them"
"$WORK/meshbench" summarize "$WORK"/run*.json | tee "$WORK/summary.md"

if [[ -f $WORK/mesh-cpu.prof ]]; then
	log "Where the mesh process spends its CPU under the closed-loop load (last run)"
	go tool pprof -top -nodecount=30 "$WORK/meshbench" "$WORK/mesh-cpu.prof" 2>/dev/null
	go tool pprof -top -cum -nodecount=50 "$WORK/meshbench" "$WORK/mesh-cpu.prof" 2>/dev/null | tail -n +7
fi
