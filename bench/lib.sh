# bench/lib.sh — helpers shared by bench/proxy.sh, bench/launch.sh and bench/machines.sh.
# Sourced, not run. Everything here works inside one temp dir ($WORK) and
# only ever talks to 127.0.0.1.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export GOTOOLCHAIN=local # never download a toolchain; use the Go on the machine

# The pier CLI finds its server through these; a private HOME (set by the
# caller) gives it private credentials, so stray PIER_ settings or an
# XDG_CONFIG_HOME from the caller must not leak in.
unset PIER_API PIER_TOKEN XDG_CONFIG_HOME

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages --

# need_packages CMD:PKG ... installs the Debian package of every missing
# command. apt-get update first: on a fresh machine the package lists are
# empty. policy-rc.d stops the packages' maintainer scripts from starting the
# system nginx/haproxy services (we start our own, on our own ports); Debian
# container images already have one, elsewhere we add one just for the
# install and take it away again.
need_packages() {
	local missing=() pair
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
	done
	((${#missing[@]})) || return 0
	[[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or install them first"
	log "Installing ${missing[*]} with apt-get"
	local added_policy=
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		added_policy=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	[[ -z $added_policy ]] || rm -f /usr/sbin/policy-rc.d
}

# ------------------------------------------------------------- processes --

# Every process we start goes into PIDS; cleanup stops them in reverse order
# (proxies before the pier server, which in turn stops its app machines).
PIDS=()
WORK=
KEEP_WORK=${KEEP_WORK:-}

# stop_pid PID: SIGTERM, wait up to 20 s (pier drains and stops its machines
# on SIGTERM), then SIGKILL.
stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i
	set +e
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	wait 2>/dev/null
	if [[ -n $WORK && -d $WORK ]]; then
		if [[ -n $KEEP_WORK || $rc != 0 ]]; then
			echo "logs and temp files kept in $WORK" >&2
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}

# free_port VAR: sets VAR to a loopback TCP port no socket uses, picked from
# 10000-19999: below the kernel's ephemeral range (32768-60999 by default,
# where outgoing connections take their local ports) and pier's machine ports
# (20000-30000). "No socket uses it" is checked with ss, listening or not.
# It sets a variable rather than printing so the ports already handed out in
# this run are remembered (a $(...) subshell would forget them). Another
# program may still take the port before we bind it; start_pier retries.
USED_PORTS=" "
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % 10000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		[[ -z $(ss -Htan "( sport = :$p )") ]] || continue
		USED_PORTS+="$p "
		printf -v "$1" '%s' "$p"
		return
	done
}

# wait_port PORT SECONDS [PID]: until something accepts on 127.0.0.1:PORT;
# gives up early if process PID (the one meant to listen) has exited.
wait_port() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		[[ -z ${3:-} ]] || kill -0 "$3" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# cpu_ticks PID...: user+system CPU time of the processes, in clock ticks
# (fields 14 and 15 of /proc/PID/stat; they cover all threads of a process).
# The command name (field 2) may contain spaces, so cut up to its ")".
cpu_ticks() {
	local pid stat total=0 f
	for pid in "$@"; do
		stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
		read -r -a f <<<"${stat##*) }" # f[0] is field 3 (state)
		total=$((total + f[11] + f[12]))
	done
	echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# busy_ticks: CPU ticks the whole machine (all cores) has spent running
# processes since boot, from the first line of /proc/stat (user nice system
# idle iowait irq softirq steal ...). irq and softirq are left out: loopback
# TCP traffic is partly processed there, and that time belongs to no process,
# so it would be counted as "other load" though the benchmark caused it.
busy_ticks() {
	local _cpu u n s _idle _iow _irq _sirq steal _rest
	read -r _cpu u n s _idle _iow _irq _sirq steal _rest </proc/stat
	echo $((u + n + s + steal))
}

# tcp_connects: TCP connections this network namespace has opened (Tcp
# ActiveOpens in /proc/net/snmp). Its growth during a benchmark run, less the
# connections wrk itself opens, tells whether a proxy keeps reusing its
# upstream connections or keeps dialing new ones.
tcp_connects() {
	awk '$1 == "Tcp:" { if (!k) { for (i = 2; i <= NF; i++) if ($i == "ActiveOpens") k = i } else { print $k; exit } }' /proc/net/snmp
}

# wait_quiet: the machine is shared (2 cores; other sessions may be
# compiling or testing). Before a measurement wait, up to QUIET_WAIT seconds
# (default 120), until less than QUIET_PCT percent (default 10) of the
# machine's CPU is busy over one second, so other work skews the numbers as
# little as possible. Gives up with a warning rather than failing.
wait_quiet() {
	local max=${QUIET_WAIT:-120} pct=${QUIET_PCT:-10} cores b0 b1 used i
	cores=$(nproc)
	for ((i = 0; i < max; i++)); do
		b0=$(busy_ticks)
		sleep 1
		b1=$(busy_ticks)
		used=$(((b1 - b0) * 100 / (CLK_TCK * cores)))
		((used < pct)) && return 0
		((i == 0)) && log "machine ${used}% busy with other work; waiting up to ${max}s for it to calm down"
	done
	log "warning: machine still ${used}% busy after ${max}s; measuring anyway"
}

# ------------------------------------------------------------------ pier --

# build_pier: builds the CLI/server into $WORK (not bin/, so the repo is not
# touched). Uses the caller's build cache so this stays quick.
build_pier() {
	log "Building pier"
	(cd "$REPO" && go build -o "$WORK/pier" ./cmd/pier)
	PIER="$WORK/pier"
}

# start_pier DATA_DIR LOGFILE [VAR=VALUE...]: runs `pier server` on two free
# loopback ports with HOME=$WORK/home (so its CLI credentials are private to
# this run), plus the given environment (GOCACHE etc.: builds run in the
# server's environment) and the extra server flags in PIER_SERVER_ARGS.
# Sets PIER_PID, API_PORT, HTTP_PORT.
PIER_SERVER_ARGS=()
start_pier() {
	local data=$1 logf=$2 try
	shift 2
	mkdir -p "$WORK/home"
	for try in 1 2 3; do
		free_port API_PORT
		free_port HTTP_PORT
		env HOME="$WORK/home" "$@" "$PIER" server --data-dir "$data" "${PIER_SERVER_ARGS[@]}" \
			--api-addr "127.0.0.1:$API_PORT" --http-addr "127.0.0.1:$HTTP_PORT" >"$logf" 2>&1 &
		PIER_PID=$!
		PIDS+=("$PIER_PID")
		if wait_port "$HTTP_PORT" 30 "$PIER_PID" && wait_port "$API_PORT" 30 "$PIER_PID" && kill -0 "$PIER_PID" 2>/dev/null; then
			break
		fi
		# Lost a race for a port to some other program: try other ports.
		if grep -q 'address already in use' "$logf" && ((try < 3)); then
			stop_pid "$PIER_PID"
			continue
		fi
		die "pier server did not come up; see $logf"
	done
	# The credentials file is written right after the listeners are up.
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s $WORK/home/.config/pier/credentials.json ]] && return 0
		sleep 0.1
	done
	die "pier server saved no credentials; see $logf"
}

# pier ARGS...: the CLI, talking to our server through the saved credentials.
pier() { HOME="$WORK/home" "$PIER" "$@"; }

# http_code HOST URL: status code of GET URL with Host: HOST ("000" if none).
http_code() {
	curl -s -o /dev/null -w '%{http_code}' --max-time 15 -H "Host: $1" "$2" || true
}
