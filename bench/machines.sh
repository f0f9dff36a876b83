#!/usr/bin/env bash
# bench/machines.sh — pier's machines (runc runtime) against bare runc.
#
# One pier server runs with --runtime runc on a bridge and /24 of its own.
# The image is one layer: a tiny static Go HTTP server (bench/machinesbench/
# guest, CGO_ENABLED=0) as /bin/server, and a static busybox for /bin/sleep.
# The same files, unpacked, are the rootfs of two bare runc bundles made
# from `runc spec` (no terminal, same command; runc's default namespaces,
# so a new, empty network namespace; no cgroup limits).
#
# It measures, in one run:
#   1. create → started, 100 machines one after another, each destroyed
#      before the next: pier from POST /v1/apps/bench/machines to the answer
#      of GET .../wait?state=started; beside it `runc run -d` of the bundle,
#      from its start to its return, each deleted after. Interleaved, so
#      both see the same machine. p50/p99 and the ratio pier/raw. pier is
#      timed twice: with the image kept unpacked (one idle machine of it
#      runs throughout), and with a second image (same layer) no other
#      machine uses, which pier collects after each destroy and unpacks
#      again at each create.
#   2. create → first HTTP byte from the machine's private_ip:8080 (pier).
#   3. host memory per idle machine: N=20 at once, `sleep 3600` and the
#      idle HTTP server, through pier and with `runc run -d`: MemAvailable
#      drop, unreclaimable kernel memory, the guests' PSS and memory
#      cgroups, the `runc run` processes pier keeps, and pier server's own
#      RSS growth; divided by N. MEM_ROUNDS rounds, plus a round with no
#      machines to show how much other programs move the host numbers.
#
# The measuring is done by bench/machinesbench (Go); this script builds,
# starts pier, waits for a quiet machine and cleans up. Traffic goes only
# to 127.0.0.1 (pier's API) and to the machines' addresses on pier's bridge.
# On exit (trap) it stops pier, deletes the raw containers, removes the
# bridge and firewall chains pier made for this run, the two memory cgroups
# (made below this script's own), and the temp dir (kept on failure or with
# KEEP_WORK=1).
#
# Knobs (environment): N=100 (machines per side for latency), IDLE=20
# (idle machines at once), WARMUP=3, MEM_ROUNDS=3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-100}
IDLE=${IDLE:-20}
WARMUP=${WARMUP:-3}
MEM_ROUNDS=${MEM_ROUNDS:-3}
APP=bench

[[ $(id -u) == 0 ]] || die "machines need root (runc, bridge, iptables)"
need_packages runc:runc iptables:iptables jq:jq ss:iproute2 curl:curl file:file
# /bin/busybox must be static to run alone in the image (busybox-static).
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
	log "Installing busybox-static with apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends busybox-static >/dev/null
fi
command -v go >/dev/null || die "go is needed to build pier"

WORK=$(mktemp -d /tmp/pier-bench-machines.XXXXXX)
RUNC_ROOT="$WORK/runc-root"
BRIDGE=
MEMCGS=() # memory cgroups made for the memory measurement
IP_FORWARD=$(</proc/sys/net/ipv4/ip_forward)

# machines_cleanup: what lib.sh's cleanup does not know about, then it.
machines_cleanup() {
	local rc=$? i id line
	set +e
	# Bare runc containers of this run (the Go helper deletes its own; this
	# is for an interrupted run).
	if [[ -d $RUNC_ROOT ]]; then
		for id in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
			runc --root "$RUNC_ROOT" delete -f "$id" >/dev/null 2>&1
		done
	fi
	# pier server: on SIGTERM it stops its machines and tears them down.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	PIDS=()
	# Anything still mounted under the temp dir (a machine's overlay or
	# pinned netns that pier did not tear down) is unmounted before the
	# dir is removed, never removed through.
	if [[ -n $WORK ]]; then
		local mounts
		mapfile -t mounts < <(awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
		if ((${#mounts[@]})); then
			echo "warning: pier left ${#mounts[@]} mounts under $WORK; unmounting them" >&2
			for line in "${mounts[@]}"; do umount -l "$line"; done
		fi
	fi
	# The bridge and firewall chains pier set up for this run (pier keeps
	# them across restarts on purpose; this run's are of no further use).
	if [[ -n $BRIDGE ]]; then
		local t c
		for t in filter:INPUT filter:FORWARD nat:POSTROUTING; do
			iptables -w -t "${t%%:*}" -S "${t#*:}" 2>/dev/null | grep -E -- "-j PIER-(IN|FWD|NAT)-$BRIDGE\$" |
				while read -r -a rule; do
					rule[0]=-D
					iptables -w -t "${t%%:*}" "${rule[@]}"
				done
		done
		for c in filter:PIER-IN-$BRIDGE filter:PIER-FWD-$BRIDGE nat:PIER-NAT-$BRIDGE; do
			iptables -w -t "${c%%:*}" -n -L "${c#*:}" >/dev/null 2>&1 || continue
			iptables -w -t "${c%%:*}" -F "${c#*:}"
			iptables -w -t "${c%%:*}" -X "${c#*:}"
		done
		ip link del "$BRIDGE" 2>/dev/null
	fi
	for ((i = ${#MEMCGS[@]} - 1; i >= 0; i--)); do
		[[ -d ${MEMCGS[i]} ]] && ! rmdir "${MEMCGS[i]}" && echo "warning: could not remove cgroup ${MEMCGS[i]}" >&2
	done
	[[ $(</proc/sys/net/ipv4/ip_forward) == "$IP_FORWARD" ]] || echo "$IP_FORWARD" >/proc/sys/net/ipv4/ip_forward
	(exit "$rc")
	cleanup
}
trap machines_cleanup EXIT
trap 'exit 130' INT TERM

# A bridge name and a /24 no one uses: no route into 100.127.X.0/24 and no
# link of that name (other pier servers and test runs use 100.127.X too).
routes=$(ip -4 route)
for ((i = 0; i < 100; i++)); do
	net3=$((100 + RANDOM % 150))
	[[ $routes == *"100.127.$net3."* ]] && continue
	ip link show "pmb$net3" >/dev/null 2>&1 && continue
	BRIDGE="pmb$net3"
	SUBNET="100.127.$net3.0/24"
	break
done
[[ -n $BRIDGE ]] || die "found no free 100.127.X.0/24"

# ------------------------------------------------------------- machine ----
log "Machine"
{
	echo "cores:   $(nproc)"
	echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "kernel:  $(uname -r)"
	echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "cgroup:  $(if [[ -d /sys/fs/cgroup/memory ]]; then echo v1; else echo v2; fi)"
	echo "go:      $(go version | cut -d' ' -f3)"
	echo "runc:    $(runc --version | head -1 | cut -d' ' -f3)"
	echo "pier:    commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
	echo "network: bridge $BRIDGE, subnet $SUBNET"
} | tee "$WORK/machine.txt"

# ---------------------------------------------------------------- build ---
build_pier
log "Building the guest server (static) and the bench helper"
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$WORK/guest" ./bench/machinesbench/guest)
(cd "$REPO" && go build -o "$WORK/machinesbench" ./bench/machinesbench)
file -L "$WORK/guest" | grep -q 'statically linked' || die "the guest is not static: $(file -L "$WORK/guest")"
mapfile -t refs < <("$WORK/machinesbench" image -guest "$WORK/guest" -out "$WORK/img")
REF=${refs[0]}      # kept unpacked during the latency loop by one idle machine
REF_SOLO=${refs[1]} # same layer, another image: no other machine uses it
[[ $REF == oci:* && $REF_SOLO == oci:* ]] || die "image: got ${refs[*]}"
log "Image $REF ($(du -sh "$WORK/img/rootfs" | cut -f1) unpacked)"

# ----------------------------------------------------------------- pier ---
# Machine cgroups (/pier/ID in every hierarchy) that exist before the run,
# so leftovers of this run can be told from other servers' machines.
pier_cgroups() { find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -path '*/pier/*' -type d 2>/dev/null | sort; }
pier_cgroups >"$WORK/cgroups-before"
# shellcheck disable=SC2034 # start_pier (lib.sh) passes these to pier server
PIER_SERVER_ARGS=(--runtime runc --bridge "$BRIDGE" --subnet "$SUBNET")
start_pier "$WORK/data" "$WORK/pier-server.log"
log "pier server pid $PIER_PID, API on 127.0.0.1:$API_PORT"
pier apps create "$APP" >/dev/null

# Memory cgroups of our own (cgroup v1), below the one this script runs in:
# one for pier server alone (it takes its `runc run` children along), one
# that `runc run -d` runs in for the raw side. Only what is charged after
# pier moves in counts: the measurement reads growth.
MEMCG_ARGS=()
own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' /proc/self/cgroup)
if [[ -n $own && -d /sys/fs/cgroup/memory$own ]]; then
	cg_pier="/sys/fs/cgroup/memory${own%/}/pierbench-$$-pier"
	cg_raw="/sys/fs/cgroup/memory${own%/}/pierbench-$$-raw"
	if mkdir "$cg_pier" && MEMCGS+=("$cg_pier") && mkdir "$cg_raw" && MEMCGS+=("$cg_raw") &&
		echo "$PIER_PID" >"$cg_pier/cgroup.procs"; then
		MEMCG_ARGS=(-pier-cgroup "$cg_pier" -raw-cgroup "$cg_raw")
	fi
fi
((${#MEMCG_ARGS[@]})) || log "warning: no memory cgroup v1 to put pier in; memory is measured host-wide only"
TOKEN=$(pier auth token)
COMMON=(-api "http://127.0.0.1:$API_PORT" -token "$TOKEN" -app "$APP" -image "$REF" -runc-root "$RUNC_ROOT")

# -------------------------------------------------------------- latency ---
wait_quiet
log "Latency: $N machines per side (pier API vs runc run -d), after $WARMUP unmeasured each"
b0=$(busy_ticks)
t0=$(date +%s.%N)
"$WORK/machinesbench" latency "${COMMON[@]}" -image-solo "$REF_SOLO" -bundle "$WORK/img/bundle-server" -n "$N" -warmup "$WARMUP" \
	-tsv "$WORK/latency.tsv" | tee "$WORK/latency.md"
b1=$(busy_ticks)
t1=$(date +%s.%N)
awk -v b="$((b1 - b0))" -v hz="$CLK_TCK" -v c="$(nproc)" -v t0="$t0" -v t1="$t1" 'BEGIN {
	printf "(whole latency phase: %.1f s wall, machine %.0f%% busy on average, the benchmark included)\n", t1 - t0, b / hz / (c * (t1 - t0)) * 100 }' |
	tee -a "$WORK/latency.md"

# --------------------------------------------------------------- memory ---
wait_quiet
log "Memory: $IDLE idle machines at once, pier and raw runc, $MEM_ROUNDS rounds"
"$WORK/machinesbench" memory "${COMMON[@]}" -bundle-sleep "$WORK/img/bundle-sleep" \
	-bundle-server "$WORK/img/bundle-server" -pier-pid "$PIER_PID" -n "$IDLE" -rounds "$MEM_ROUNDS" "${MEMCG_ARGS[@]}" | tee "$WORK/memory.md"

# ------------------------------------------------------------ leftovers ---
# Everything above destroyed what it made; check pier agrees.
left=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API_PORT/v1/apps/$APP/machines" | jq length)
veths=$(ip -o link show master "$BRIDGE" 2>/dev/null | wc -l)
bundles=$(find "$WORK/data/machines" -mindepth 1 -maxdepth 1 ! -name runc-root | wc -l)
states=$(find "$WORK/data/machines/runc-root" -mindepth 1 -maxdepth 1 | wc -l)
cleanup_errors=$(grep -c 'msg="clean up machine"' "$WORK/pier-server.log" || true)
cgroups=$(comm -13 "$WORK/cgroups-before" <(pier_cgroups) | wc -l)
echo
echo "after the run: $left machines listed, $veths veths on $BRIDGE, $bundles machine dirs in the data dir, $cgroups new cgroups under /pier,"
echo "$states container states left in pier's runc root; pier logged $cleanup_errors failed machine clean-ups"
grep 'msg="clean up machine"' "$WORK/pier-server.log" | head -3 | sed 's/^/    /' || true

echo
echo "Not measured: cold start through the edge proxy for a scaled-to-zero app (see bench/RESULTS.md)."
