#!/usr/bin/env bash
# bench/launch.sh — what isolated builds and release images cost a deploy:
# pier before them (commit $BEFORE, default 41edad1: build steps run on the
# host as root, a release is a host directory) against pier after them
# ($AFTER, default HEAD: every step runs in a runc build machine as an
# unprivileged user with a per-app cache under <data>/cache/<app>, and each
# build becomes an OCI image), measured side by side in one run.
#
# Both pier binaries are built from `git archive` of their commit (the
# working tree is not touched, other sessions' uncommitted edits are not
# measured). Each runs `pier server --runtime runc` as root on loopback
# ports, a fresh data dir, a bridge and a 100.127.N.0/24 of its own, and a
# HOME of its own (where its CLI credentials go). Servers at $BEFORE mix
# their own environment into builds, so both get the same environment with
# empty GOCACHE, GOMODCACHE, npm and pip caches: the "before" host builds
# start as cold as the "after" build machines' fresh per-app caches.
#
# Measurements, for the samples go (testdata/apps/go) and node-dep
# (testdata/apps/node-dep, one npm dependency):
#
#   cold launch   `pier launch DIR --name X --yes` on the fresh server, from
#                 the start of the command to the first 200 with the
#                 sample's body from curl -H 'Host: X.localhost' (every
#                 50 ms). "after" includes assembling the base image from
#                 the host's Debian packages, which a fresh server does once
#                 per kind of base.
#   warm deploy   `pier deploy DIR` of the same, unchanged dir, WARM (3)
#                 times: the command's own time (it returns when the new
#                 release is live); the table shows the median.
#   second app    (go only) `pier launch` of a second app from the same
#                 code: "before" finds the host's Go cache warm, "after"
#                 starts the new app's own cache empty.
#   no-op step    an app whose pier.toml says builder = "static" and
#                 command = "true", deployed NOOP (5) times: the step's
#                 "done in" from the build output (the host's /bin/sh -c
#                 against a build machine's start and stop) and the deploy.
#   image size    on the "after" server every sample in testdata/apps (go,
#                 node, node-dep, python, static, procfile): the release
#                 image's compressed size (`pier releases --json`,
#                 image.size) and its base's compressed and unpacked sizes.
#
# The two sides take turns (the order alternates) so other work on the
# shared machine hits both alike; before every measurement the script waits
# (up to QUIET_WAIT, default 30 s) for the machine to be quiet. Only
# 127.0.0.1 is used by the script; the builds themselves fetch what the
# samples declare (node-dep's package from the npm registry). On exit it
# stops both servers (SIGTERM), then removes their bridges, the PIER-*
# iptables chains pier made for them, their bundle dirs under /run/pier
# and the temp dir (kept with KEEP_WORK=1 or on failure).
#
# Exits non-zero only on errors, not on a missed target.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BEFORE=${BEFORE:-41edad1}
AFTER=${AFTER:-HEAD}
WARM=${WARM:-3}
NOOP=${NOOP:-5}
QUIET_WAIT=${QUIET_WAIT:-30} # read by wait_quiet (lib.sh)
SIDES=(before after)

[[ $(id -u) == 0 ]] || die "the runc runtime needs root (runc, bridges, iptables): run as root"
need_packages runc:runc iptables:iptables jq:jq ss:iproute2 curl:curl
command -v go >/dev/null || die "go is needed to build pier and the Go sample"

WORK=$(mktemp -d /tmp/pier-bench-launch.XXXXXX)
IP_FORWARD=$(</proc/sys/net/ipv4/ip_forward)
declare -A BIN COMMIT BRIDGE SUBNET SPID API HTTP

# remove_bridge BRIDGE: the jumps into pier's chains for BRIDGE, the chains
# (PIER-IN/FWD in filter, PIER-NAT/DNAT in nat) and the bridge itself.
# pier keeps them across restarts on purpose; this run's are of no more use.
remove_bridge() {
	local b=$1 t c
	for t in filter:INPUT filter:FORWARD nat:POSTROUTING nat:PREROUTING; do
		iptables -w -t "${t%%:*}" -S "${t#*:}" 2>/dev/null | grep -E -- "-j PIER-(IN|FWD|NAT|DNAT)-$b\$" |
			while read -r -a rule; do
				rule[0]=-D
				iptables -w -t "${t%%:*}" "${rule[@]}"
			done
	done
	for c in filter:PIER-IN-$b filter:PIER-FWD-$b nat:PIER-NAT-$b nat:PIER-DNAT-$b; do
		iptables -w -t "${c%%:*}" -n -L "${c#*:}" >/dev/null 2>&1 || continue
		iptables -w -t "${c%%:*}" -F "${c#*:}"
		iptables -w -t "${c%%:*}" -X "${c#*:}"
	done
	ip link del "$b" 2>/dev/null
}

# launch_cleanup: what lib.sh's cleanup does not know about, then it.
launch_cleanup() {
	local rc=$? i side m mounts
	set +e
	# The servers: on SIGTERM pier drains and stops its machines.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	PIDS=()
	# Anything still mounted under the temp dir (a machine's overlay or
	# netns pier did not tear down) is unmounted, never removed through.
	if [[ -n $WORK ]]; then
		mapfile -t mounts < <(awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
		if ((${#mounts[@]})); then
			echo "warning: pier left ${#mounts[@]} mounts under $WORK; unmounting them" >&2
			for m in "${mounts[@]}"; do umount -l "$m"; done
		fi
		if awk -v w="$WORK" 'index($5, w "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
			echo "warning: mounts remain under $WORK; not removing it" >&2
			KEEP_WORK=1
		fi
	fi
	for side in "${SIDES[@]}"; do
		[[ -n ${BRIDGE[$side]:-} ]] && remove_bridge "${BRIDGE[$side]}"
		# Bundles of the runc driver: /run/pier/<sha256(<data>/machines)[:8]>.
		m=/run/pier/$(printf '%s' "$WORK/$side/data/machines" | sha256sum | cut -c1-16)
		[[ -d $m ]] && rm -rf "$m"
	done
	[[ $(</proc/sys/net/ipv4/ip_forward) == "$IP_FORWARD" ]] || echo "$IP_FORWARD" >/proc/sys/net/ipv4/ip_forward
	(exit "$rc")
	cleanup
}
trap launch_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build --

for side in "${SIDES[@]}"; do
	ref=$BEFORE
	[[ $side == after ]] && ref=$AFTER
	COMMIT[$side]=$(git -C "$REPO" rev-parse --short "$ref^{commit}") || die "no commit $ref"
	log "Building pier $side (${COMMIT[$side]})"
	mkdir -p "$WORK/src-$side"
	git -C "$REPO" archive "${COMMIT[$side]}" | tar -x -C "$WORK/src-$side"
	# With the caller's build cache: building pier is not what we measure.
	(cd "$WORK/src-$side" && go build -o "$WORK/pier-$side" ./cmd/pier)
	BIN[$side]=$WORK/pier-$side
done
rm -rf "$WORK/src-before" "$WORK/src-after"

# ---------------------------------------------------------------- servers --

# Two bridge names and /24s no one uses: no route into 100.127.X.0/24 and
# no link of that name (other pier servers and test runs use 100.127.X too).
routes=$(ip -4 route)
for side in "${SIDES[@]}"; do
	for ((i = 0; i < 100; i++)); do
		n=$((100 + RANDOM % 150))
		[[ $routes == *"100.127.$n."* || " ${SUBNET[*]} " == *"100.127.$n.0/24"* ]] && continue
		ip link show "plb$n${side:0:1}" >/dev/null 2>&1 && continue
		BRIDGE[$side]=plb$n${side:0:1}
		SUBNET[$side]=100.127.$n.0/24
		break
	done
	[[ -n ${BRIDGE[$side]:-} ]] || die "found no free 100.127.X.0/24"
done

# start_server SIDE: pier server of SIDE, as root, on two free loopback
# ports, with the same fresh caches for both sides (see the top).
start_server() {
	local side=$1 d=$WORK/$1 try i
	mkdir -p "$d/home" "$d/gocache" "$d/gomodcache" "$d/npm-cache" "$d/pip-cache" "$d/xdg-cache"
	for try in 1 2 3; do
		free_port "API[$side]"
		free_port "HTTP[$side]"
		env HOME="$d/home" GOCACHE="$d/gocache" GOMODCACHE="$d/gomodcache" GOFLAGS= \
			npm_config_cache="$d/npm-cache" PIP_CACHE_DIR="$d/pip-cache" XDG_CACHE_HOME="$d/xdg-cache" \
			"${BIN[$side]}" server --runtime runc --data-dir "$d/data" \
			--api-addr "127.0.0.1:${API[$side]}" --http-addr "127.0.0.1:${HTTP[$side]}" \
			--bridge "${BRIDGE[$side]}" --subnet "${SUBNET[$side]}" >"$d/server.log" 2>&1 &
		SPID[$side]=$!
		PIDS+=("${SPID[$side]}")
		if wait_port "${HTTP[$side]}" 30 "${SPID[$side]}" && wait_port "${API[$side]}" 30 "${SPID[$side]}" && kill -0 "${SPID[$side]}" 2>/dev/null; then
			break
		fi
		# Lost a race for a port to some other program: try other ports.
		if grep -q 'address already in use' "$d/server.log" && ((try < 3)); then
			stop_pid "${SPID[$side]}"
			continue
		fi
		die "pier server ($side) did not come up; see $d/server.log"
	done
	for ((i = 0; i < 100; i++)); do
		[[ -s $d/home/.config/pier/credentials.json ]] && return 0
		sleep 0.1
	done
	die "pier server ($side) saved no credentials; see $d/server.log"
}

# cli SIDE ARGS...: SIDE's pier CLI, through SIDE's saved credentials, and
# never longer than 10 minutes.
cli() {
	local side=$1
	shift
	HOME="$WORK/$side/home" timeout 600 "${BIN[$side]}" "$@"
}

for side in "${SIDES[@]}"; do
	start_server "$side"
	log "pier $side (${COMMIT[$side]}): pid ${SPID[$side]}, API 127.0.0.1:${API[$side]}, proxy 127.0.0.1:${HTTP[$side]}, bridge ${BRIDGE[$side]} ${SUBNET[$side]}"
done

# ------------------------------------------------------------- measuring --

now_ns() { date +%s%N; }

# server_cpu SIDE: ticks used by SIDE's server and its finished children
# (host builds; build machines' runc and what ran in them), fields 14-17
# of /proc/PID/stat.
server_cpu() {
	local f stat
	stat=$(<"/proc/${SPID[$1]}/stat")
	read -r -a f <<<"${stat##*) }"
	echo $((f[11] + f[12] + f[13] + f[14]))
}
# shell_children_cpu VAR: seconds of CPU used by this shell's finished
# children (the CLI, curl). Not called as $(...): that subshell's `times`
# would count only its own children.
shell_children_cpu() {
	times >"$WORK/times"
	printf -v "$1" '%s' "$(tail -1 "$WORK/times" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } print n }')"
}

# secs: Go durations as printed by pier ("0s", "450ms", "1.23s", "1m5.51s")
# in seconds, as an awk function for the parsers below.
AWK_SECS='function secs(d,   t) {
	if (d ~ /ms$/) { sub(/ms$/, "", d); return d / 1000 }
	if (d ~ /(µs|us)$/) { sub(/(µs|us)$/, "", d); return d / 1e6 }
	if (d ~ /ns$/) { sub(/ns$/, "", d); return d / 1e9 }
	t = 0
	if (match(d, /^[0-9.]+h/)) { t += substr(d, 1, RLENGTH - 1) * 3600; d = substr(d, RLENGTH + 1) }
	if (match(d, /^[0-9.]+m/)) { t += substr(d, 1, RLENGTH - 1) * 60; d = substr(d, RLENGTH + 1) }
	if (d ~ /s$/) { sub(/s$/, "", d); t += d }
	return t
}'
# steps_seconds LOG: the build steps' "  done in" summed; image_seconds LOG:
# "==> Image ... in <dur>" (after only; includes assembling a base).
steps_seconds() { awk "$AWK_SECS"' /^  done in / { n += secs($3) } END { printf "%.2f", n }' "$1"; }
image_seconds() { awk "$AWK_SECS"' /^==> Image .* in [0-9.hmsµ]+$/ { n += secs($NF); f = 1 } END { if (f) printf "%.2f", n; else printf "-" }' "$1"; }
# noop_step_seconds LOG: the "done in" printed right after "$ true".
noop_step_seconds() { awk "$AWK_SECS"' /^\$ true$/ { f = 1; next } f && /^  done in / { printf "%.3f", secs($3); exit }' "$1"; }

RESULTS=$WORK/results.tsv # side sample kind run seconds steps image other%
: >"$RESULTS"

# measure SIDE SAMPLE KIND RUN APP WANT -- CMD...: runs CMD (a pier CLI
# command) after waiting for quiet. KIND cold: the time to the first 200
# through SIDE's proxy whose body contains WANT; otherwise the command's own
# time, then a check that the app answers WANT. Records a line in RESULTS.
measure() {
	local side=$1 sample=$2 kind=$3 run=$4 app=$5 want=$6 label cmdpid body t0 t1 deadline b0 b1 s0 s1 c0 c1 rc=0 exited=
	shift 7
	label=$side-$sample-$kind-$run
	wait_quiet
	shell_children_cpu c0
	b0=$(busy_ticks) s0=$(server_cpu "$side")
	t0=$(now_ns)
	if [[ $kind == cold ]]; then
		"$@" >"$WORK/$label.log" 2>&1 &
		cmdpid=$!
		deadline=$((t0 + 600 * 1000000000))
		while :; do
			body=$(curl -s --max-time 15 -H "Host: $app.localhost" "http://127.0.0.1:${HTTP[$side]}/" || true)
			if [[ $body == *"$want"* ]]; then
				t1=$(now_ns)
				break
			fi
			if [[ -z $exited ]] && ! kill -0 "$cmdpid" 2>/dev/null; then
				# The command is done; if it failed, no 200 is coming.
				wait "$cmdpid" || rc=$?
				exited=1
				((rc == 0)) || die "$label: command failed ($rc): $(tail -20 "$WORK/$label.log")"
			fi
			(($(now_ns) < deadline)) || die "$label: no 200 after 600 s; see $WORK/$label.log"
			sleep 0.05
		done
		[[ -n $exited ]] || wait "$cmdpid" || die "$label: command failed after the app answered: $(tail -20 "$WORK/$label.log")"
	else
		"$@" >"$WORK/$label.log" 2>&1 || die "$label: command failed: $(tail -20 "$WORK/$label.log")"
		t1=$(now_ns)
		body=$(curl -s --max-time 15 -H "Host: $app.localhost" "http://127.0.0.1:${HTTP[$side]}/" || true)
		[[ $body == *"$want"* ]] || die "$label: the app does not answer \"$want\" after the deploy (got \"${body:0:200}\")"
	fi
	b1=$(busy_ticks) s1=$(server_cpu "$side")
	shell_children_cpu c1
	# other% = CPU used by anything but this side's server, its builds and
	# the commands this script ran, as a share of all cores over the wall
	# time. (A running machine's CPU is not in its server's until it exits,
	# so this is approximate; idle apps use little.)
	awk -v s="$side" -v sm="$sample" -v k="$kind" -v r="$run" -v t0="$t0" -v t1="$t1" \
		-v st="$(steps_seconds "$WORK/$label.log")" -v im="$(image_seconds "$WORK/$label.log")" \
		-v bt=$((b1 - b0)) -v sv=$((s1 - s0)) -v ct="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" \
		-v hz="$CLK_TCK" -v cores="$(nproc)" 'BEGIN {
		wall = (t1 - t0) / 1e9
		other = ((bt - sv) / hz - ct) / (cores * wall) * 100
		printf "%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%.0f\n", s, sm, k, r, wall, st, im, (other < 0 ? 0 : other) }' >>"$RESULTS"
	tail -1 "$RESULTS" | awk -F'\t' '{ printf "    %-6s %-8s %-5s %s: %7.2f s (build steps %s s, image %s s, other load %s%%)\n", $1, $2, $3, $4, $5, $6, $7, $8 }' >&2
}

# order I: both sides, "before" first when I is even.
order() { if (($1 % 2 == 0)); then echo before after; else echo after before; fi; }

declare -A WANT=([go]="hello from go" [node-dep]="is-number(42)=true" [node]="hello from node"
	[python]="hello from python" [static]="hello from static" [procfile]="hello from procfile" [noop]="noop page")

# copy_app SIDE SAMPLE: a copy of the sample for SIDE (launch writes
# pier.toml into it; testdata stays untouched).
copy_app() {
	mkdir -p "$WORK/$1/apps"
	cp -r "$REPO/testdata/apps/$2" "$WORK/$1/apps/$2"
}

k=0
for sample in go node-dep; do
	log "$sample: cold launch on each fresh server, then $WARM warm deploys each"
	for side in $(order $k); do
		copy_app "$side" "$sample"
		measure "$side" "$sample" cold 1 "s-$sample" "${WANT[$sample]}" -- \
			cli "$side" launch "$WORK/$side/apps/$sample" --name "s-$sample" --yes
	done
	for ((r = 1; r <= WARM; r++)); do
		for side in $(order $((k + r))); do
			measure "$side" "$sample" warm "$r" "s-$sample" "${WANT[$sample]}" -- \
				cli "$side" deploy "$WORK/$side/apps/$sample"
		done
	done
	k=$((k + 1))
	[[ $sample == go ]] || continue
	# The host's Go cache is shared by every app "before"; "after" each app
	# has its own. So a second app from the same code: warm before, cold after.
	log "go: first launch of a second app from the same code (s-go2)"
	for side in $(order 1); do
		mkdir -p "$WORK/$side/apps"
		cp -r "$REPO/testdata/apps/go" "$WORK/$side/apps/go2"
		measure "$side" go newapp 1 s-go2 "${WANT[go]}" -- cli "$side" launch "$WORK/$side/apps/go2" --name s-go2 --yes
	done
done

log "No-op build step: builder = \"static\", command = \"true\"; $NOOP deploys each"
for side in "${SIDES[@]}"; do
	mkdir -p "$WORK/$side/apps/noop"
	echo '<p>noop page</p>' >"$WORK/$side/apps/noop/index.html"
	printf '[build]\nbuilder = "static"\ncommand = "true"\n' >"$WORK/$side/apps/noop/pier.toml"
	cli "$side" launch "$WORK/$side/apps/noop" --name s-noop --yes >"$WORK/$side-noop-launch.log" 2>&1 ||
		die "launch of the no-op app ($side) failed: $(tail -20 "$WORK/$side-noop-launch.log")"
done
for ((r = 1; r <= NOOP; r++)); do
	for side in $(order "$r"); do
		measure "$side" noop deploy "$r" s-noop "${WANT[noop]}" -- cli "$side" deploy "$WORK/$side/apps/noop"
		noop_step_seconds "$WORK/$side-noop-deploy-$r.log" >"$WORK/$side-noop-step-$r"
		[[ -s $WORK/$side-noop-step-$r ]] || die "no \"done in\" after \"\$ true\" in $WORK/$side-noop-deploy-$r.log"
	done
done

log "Image sizes: launching the other samples on the after server"
for sample in node python static procfile; do
	copy_app after "$sample"
	measure after "$sample" launch 1 "s-$sample" "${WANT[$sample]}" -- \
		cli after launch "$WORK/after/apps/$sample" --name "s-$sample" --yes
done

# -------------------------------------------------------------- reporting --

# median KIND SIDE SAMPLE COLUMN: median of RESULTS' column over runs.
median() {
	awk -F'\t' -v k="$1" -v s="$2" -v sm="$3" -v c="$4" '$1 == s && $2 == sm && $3 == k { print $c }' "$RESULTS" |
		sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == 0) print "-"; else printf "%.2fx", b / a }'; }
fmt_s() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f s", v }'; }
human() { awk -v v="$1" 'BEGIN { if (v < 1048576) printf "%.0f KiB", v / 1024; else printf "%.1f MiB", v / 1048576 }'; }

{
	echo
	echo "pier before: ${COMMIT[before]} (build steps on the host as root); after: ${COMMIT[after]} (build machines, OCI images)"
	echo "$(nproc) cores, $(go version | cut -d' ' -f3), runc $(runc --version | awk 'NR == 1 { print $3 }'), $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "Launch: cold = pier launch to the first 200 through the proxy; warm = pier deploy of the same dir (median of $WARM)"
	echo
	echo "| sample | before cold | after cold | ratio | before warm | after warm | ratio |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	for sample in go node-dep; do
		bc=$(median cold before "$sample" 5) ac=$(median cold after "$sample" 5)
		bw=$(median warm before "$sample" 5) aw=$(median warm after "$sample" 5)
		echo "| $sample | $(fmt_s "$bc") | $(fmt_s "$ac") | $(ratio "$bc" "$ac") | $(fmt_s "$bw") | $(fmt_s "$aw") | $(ratio "$bw" "$aw") |"
	done
	bn=$(median newapp before go 5) an=$(median newapp after go 5)
	echo
	echo "A second Go app from the same code, first launch on the same server (to the first 200): before $(fmt_s "$bn") (the host's Go cache, warm), after $(fmt_s "$an") (a new app's empty build cache), $(ratio "$bn" "$an")"
	echo
	echo "Where the time went (build steps = the \"done in\" of each step; image = \"==> Image ... in\", base assembly included):"
	echo
	echo "| sample | side | run | total | build steps | image | other load |"
	echo "|---|---|---|---:|---:|---:|---:|"
	awk -F'\t' '$3 != "deploy" { printf "| %s | %s | %s %s | %.2f s | %s s | %s | %s%% |\n", $2, $1, $3, $4, $5, $6, ($7 == "-" ? "-" : $7 " s"), $8 }' "$RESULTS"
	echo
	for sample in go node-dep; do
		bw=$(median warm before "$sample" 5) aw=$(median warm after "$sample" 5)
		awk -v s="$sample" -v a="$bw" -v b="$aw" 'BEGIN { r = b / a; printf "Target (after warm <= 1.5x before warm), %s: %.2f s vs %.2f s = %.2fx -> %s\n", s, b, a, r, (r <= 1.5 ? "MET" : "MISSED") }'
	done
	echo
	echo "No-op build step (command = \"true\"), $NOOP deploys each, median (min-max):"
	echo
	echo "| | before (host) | after (build machine) | ratio |"
	echo "|---|---:|---:|---:|"
	for side in "${SIDES[@]}"; do
		cat "$WORK/$side"-noop-step-* | sort -g >"$WORK/$side-noop-steps"
	done
	stat_line() { awk '{ v[NR] = $1 } END { printf "%.2f s (%.2f-%.2f)", v[(NR + 1) / 2], v[1], v[NR] }' "$1"; }
	bs=$(awk '{ v[NR] = $1 } END { print v[(NR + 1) / 2] }' "$WORK/before-noop-steps")
	as=$(awk '{ v[NR] = $1 } END { print v[(NR + 1) / 2] }' "$WORK/after-noop-steps")
	echo "| step \`true\` (\"done in\") | $(stat_line "$WORK/before-noop-steps") | $(stat_line "$WORK/after-noop-steps") | $(ratio "$bs" "$as") |"
	for side in "${SIDES[@]}"; do
		awk -F'\t' -v s="$side" '$1 == s && $2 == "noop" { print $5 }' "$RESULTS" | sort -g >"$WORK/$side-noop-deploys"
	done
	bd=$(median deploy before noop 5) ad=$(median deploy after noop 5)
	echo "| whole \`pier deploy\` | $(stat_line "$WORK/before-noop-deploys") | $(stat_line "$WORK/after-noop-deploys") | $(ratio "$bd" "$ad") |"
	echo "(\"done in\" is rounded to 10 ms by pier.)"
	echo
	echo "Release images on the after server (image = compressed bytes of all layers, from pier releases --json):"
	echo
	echo "| sample | builder | image (compressed) | base layer | other layers (app; static: + pier's file server) | base unpacked | app tree unpacked | a Dockerfile's usual base (published, compressed / unpacked) |"
	echo "|---|---|---:|---:|---:|---:|---:|---|"
	declare -A PUBLISHED=(
		[go]="golang:1.22 build + gcr.io/distroless/static ~2 MB, or debian:bookworm-slim ~28 MB / 74.8 MB"
		[node]="node:20-bookworm-slim ~67 MB / ~200 MB" [node-dep]="node:20-bookworm-slim ~67 MB / ~200 MB"
		[python]="python:3.11-slim-bookworm ~45-50 MB / ~125-130 MB" [procfile]="python:3.11-slim-bookworm ~45-50 MB / ~125-130 MB"
		[static]="nginx:stable-bookworm ~67 MB")
	for sample in go node node-dep python static procfile; do
		rel=$(cli after releases -a "s-$sample" --json | jq -c 'map(select(.status == "active"))[0]')
		size=$(jq -r '.image.size' <<<"$rel")
		base=$(jq -r '.image.lowers[-1]' <<<"$rel")
		build=$(jq -r '.build_id' <<<"$rel")
		meta=$WORK/after/data/images/bases/$base/base.json
		bsize=$(jq -r '.size' "$meta") bunp=$(jq -r '.unpacked' "$meta")
		tree=$(du -sb "$WORK/after/data/builds/s-$sample/$build" | cut -f1)
		echo "| $sample | $(jq -r '.builder' <<<"$rel") | $(human "$size") | $(human "$bsize") (${base%%-*}) | $(human $((size - bsize))) | $(human "$bunp") | $(human "$tree") | ${PUBLISHED[$sample]} |"
	done
	echo
	echo "The published sizes are Docker Hub's/the registries' listings (approximate), not measured here: no registry is reachable from this machine."
	echo
	echo "raw (side sample kind run seconds build_steps image other%):"
	cat "$RESULTS"
} | tee "$WORK/report.md"
