#!/usr/bin/env bash
# bench/resources.sh — how long pier's managed resources take to become
# usable, against the same servers set up by hand, and how long connecting an
# app to one takes until the app serves with the new credentials.
#
# One pier server (--runtime process, loopback ports, private data dir and
# HOME), N iterations (env N, default 5) of each of:
#
#   postgres   `pier resources create postgres dbI` vs raw PostgreSQL 15:
#              initdb as user postgres (same options pier uses: a superuser
#              with a password file, --auth=scram-sha-256, UTF8, C.UTF-8),
#              the same pier.conf/pg_hba.conf, `postgres -D` started as user
#              postgres and polled with pg_isready every 10 ms, then what
#              pier does before it returns: a password login as the
#              superuser, CREATE DATABASE, a login to that database.
#   redis      `pier resources create redis cacheI` vs raw redis-server
#              started as user redis with the config pier writes (ACL file
#              with the default user off and a password admin, maxmemory
#              64mb, appendonly) and polled with an authenticated
#              `redis-cli ping` every 10 ms until PONG.
#   connect    `pier connect web dbI` until the app (testdata/apps/resapp)
#              lists DATABASE_URL and DBI_URL in GET /env and answers
#              POST /pg/query "SELECT 1" with 1, polled through pier's edge
#              proxy. No peer; for comparison, `pier secrets set -a web
#              BENCH_ROLL_I=1` until /env lists BENCH_ROLL_I (the same
#              rollout without the grant).
#
# Both create clocks run from the command start to the same probe succeeding
# right after the command (or the raw steps) returned: pg_isready, or
# redis-cli PING getting any answer, on the server's port. pier's create
# returns only after its own admin login (postgres) or PING (redis) worked;
# that the resource's credentials really work is checked afterwards, untimed,
# every iteration: psql with the DATABASE_URL of `pier connections show
# --reveal`, redis-cli with the REDIS_URL of a connection made for the check.
# Raw and pier alternate which goes first.
#
# Only 127.0.0.1 is used. pier's managed postgres/redis servers are detached
# and outlive `pier server`: on exit the script stops the server, then every
# process named by a pid file under $DATA/resources, then its raw servers.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-5}
QUIET_WAIT=${QUIET_WAIT:-30}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

need_packages curl:curl jq:jq ss:iproute2 psql:postgresql-client redis-cli:redis-tools \
	redis-server:redis-server setpriv:util-linux
[[ -x $PG_BIN/initdb && -x $PG_BIN/postgres ]] || need_packages "$PG_BIN/initdb:postgresql-15"
[[ -x $PG_BIN/initdb ]] || die "no initdb in $PG_BIN"
command -v go >/dev/null || die "go is needed to build pier and the app"
id postgres >/dev/null 2>&1 || die "no user postgres"
id redis >/dev/null 2>&1 || die "no user redis"
[[ $(id -u) == 0 ]] || die "run as root: the servers run as users postgres and redis"

WORK=$(mktemp -d /tmp/pier-bench-resources.XXXXXX)
chmod 711 "$WORK" # the raw servers' users must reach their dirs below it
DATA="$WORK/data"

# stop_resources: the managed servers pier started (first line of each pid
# file is the pid), if that pid still is a postgres or redis-server.
stop_resources() {
	local f pid exe i sig
	[[ -d $DATA/resources ]] || return 0
	for f in "$DATA"/resources/*/*.pid; do
		[[ -f $f ]] || continue
		pid=$(head -1 "$f")
		[[ $pid =~ ^[0-9]+$ ]] || continue
		exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
		case $exe in
		*postgres*) sig=INT ;; # fast shutdown
		*redis*) sig=TERM ;;
		*) continue ;;
		esac
		kill "-$sig" "$pid" 2>/dev/null || continue
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
}
on_exit() {
	local rc=$?
	set +e
	[[ -z ${PIER_PID:-} ]] || stop_pid "$PIER_PID"
	stop_resources
	(exit "$rc")
	cleanup
}
trap on_exit EXIT
trap 'exit 130' INT TERM

build_pier
# The app's build runs in the server's environment: give it the caller's
# Go caches, so its modules (pgx, go-redis, the AWS SDK) need no download.
# shellcheck disable=SC2034 # start_pier (lib.sh) passes these to pier server
PIER_SERVER_ARGS=(--runtime process)
start_pier "$DATA" "$WORK/pier-server.log" GOCACHE="$(go env GOCACHE)" GOMODCACHE="$(go env GOMODCACHE)" GOFLAGS=
log "pier server pid $PIER_PID, proxy on 127.0.0.1:$HTTP_PORT"

now_ns() { date +%s%N; }
RESULTS="$WORK/results.tsv" # metric iteration seconds
: >"$RESULTS"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$(awk -v a="$3" -v b="$4" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')" >>"$RESULTS"; }

APP_URL="http://127.0.0.1:$HTTP_PORT"
app() { curl -s --max-time 10 -H "Host: web.localhost" "$@"; }

log "Launching testdata/apps/resapp as web (untimed)"
cp -r "$REPO/testdata/apps/resapp" "$WORK/app"
(cd "$WORK/app" && pier launch --yes --no-resources --name web) >"$WORK/launch.log" 2>&1 ||
	die "launch failed: $(tail -20 "$WORK/launch.log")"
for ((i = 0; i < 300; i++)); do
	[[ $(app "$APP_URL/env" || true) == *PIER_APP_NAME* ]] && break
	sleep 0.1
done
((i < 300)) || die "web does not answer GET /env"

# ------------------------------------------------------------- postgres --

# raw_pg I: initdb + start + createdb + login, as pier does; records the
# steps too. Leaves RAW_PG_PID running; raw_pg_stop stops it.
raw_pg() {
	local i=$1 d="$WORK/raw/pg$1" port pw t0 t1 t2 t3 t4 k out
	mkdir -p "$d/run"
	free_port port
	pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
	printf '%s\n' "$pw" >"$d/run/pwfile"
	chown -R postgres:postgres "$d"
	chmod 700 "$d/run"
	local as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
	t0=$(now_ns)
	(cd "$d/run" && env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "${as_pg[@]}" "$PG_BIN/initdb" -D "$d/data" \
		--username=pier_admin --pwfile="$d/run/pwfile" --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8) \
		>"$d/initdb.log" 2>&1 || die "raw initdb failed: $(tail -5 "$d/initdb.log")"
	t1=$(now_ns)
	rm -f "$d/run/pwfile"
	# The settings pier writes (internal/resources/postgres/managed.go).
	cat >"$d/data/pier.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$d/run'
unix_socket_permissions = 0700
max_connections = 100
shared_buffers = '128MB'
password_encryption = 'scram-sha-256'
logging_collector = off
log_destination = 'stderr'
EOF
	printf 'local all all scram-sha-256\nhost  all all 0.0.0.0/0 scram-sha-256\nhost  all all ::/0      scram-sha-256\n' >"$d/data/pg_hba.conf"
	printf "\ninclude = 'pier.conf'\n" >>"$d/data/postgresql.conf"
	chown postgres:postgres "$d/data/pier.conf" "$d/data/pg_hba.conf"
	chmod 600 "$d/data/pier.conf" "$d/data/pg_hba.conf"
	(cd "$d/run" && exec env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "${as_pg[@]}" "$PG_BIN/postgres" -D "$d/data") >"$d/postgres.log" 2>&1 &
	RAW_PG_PID=$!
	PIDS+=("$RAW_PG_PID")
	for ((k = 0; k < 3000; k++)); do
		pg_isready -q -h 127.0.0.1 -p "$port" -t 5 && break
		kill -0 "$RAW_PG_PID" 2>/dev/null || die "raw postgres exited: $(tail -5 "$d/postgres.log")"
		sleep 0.01
	done
	((k < 3000)) || die "raw postgres not ready after 30 s"
	t2=$(now_ns)
	PGPASSWORD=$pw PGCONNECT_TIMEOUT=10 psql -qX -h 127.0.0.1 -p "$port" -U pier_admin -d postgres -c 'CREATE DATABASE app' >/dev/null ||
		die "raw CREATE DATABASE failed"
	out=$(PGPASSWORD=$pw PGCONNECT_TIMEOUT=10 psql -qXAt -h 127.0.0.1 -p "$port" -U pier_admin -d app -c 'SELECT 1')
	[[ $out == 1 ]] || die "raw postgres login to app: $out"
	t3=$(now_ns)
	pg_isready -q -h 127.0.0.1 -p "$port" -t 10 || die "raw postgres: pg_isready failed"
	t4=$(now_ns)
	record pg_raw "$i" "$t0" "$t4"
	record pg_raw_initdb "$i" "$t0" "$t1"
	record pg_raw_start "$i" "$t1" "$t2"
	record pg_raw_db_login "$i" "$t2" "$t3"
}
raw_pg_stop() {
	kill -INT "$RAW_PG_PID" 2>/dev/null || true
	wait "$RAW_PG_PID" 2>/dev/null || true
}

pier_pg() {
	local i=$1 port t0 t1 tj t2
	t0=$(now_ns)
	pier resources create postgres "db$i" --json >"$WORK/create-db$i.json" 2>"$WORK/create-db$i.log" ||
		die "pier resources create postgres db$i: $(cat "$WORK/create-db$i.log")"
	t1=$(now_ns)
	port=$(jq -r .port "$WORK/create-db$i.json")
	tj=$(now_ns) # reading the port is not part of the clock
	pg_isready -q -h 127.0.0.1 -p "$port" -t 10 || die "db$i: pg_isready failed after create"
	t2=$(now_ns)
	record pg_pier "$i" $((t0 + tj - t1)) "$t2"
	record pg_pier_cli "$i" "$t0" "$t1"
}

# ---------------------------------------------------------------- redis --

raw_redis() {
	local i=$1 d="$WORK/raw/redis$1" port pw t0 k out
	mkdir -p "$d/data"
	free_port port
	pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
	# The config and ACL file pier writes (internal/resources/redis/managed.go).
	printf 'user default off resetpass resetkeys resetchannels -@all\nuser pier_admin on >%s ~* &* +@all\n' "$pw" >"$d/data/users.acl"
	cat >"$d/redis.conf" <<EOF
bind 127.0.0.1
port $port
protected-mode no
daemonize no
logfile ""
dir "$d/data"
aclfile "$d/data/users.acl"
maxmemory 64mb
maxmemory-policy noeviction
appendonly yes
appendfsync everysec
save ""
EOF
	chown -R redis:redis "$d"
	chmod 700 "$d/data"
	chmod 600 "$d/data/users.acl"
	t0=$(now_ns)
	(cd "$d/data" && exec setpriv --reuid=redis --regid=redis --init-groups -- redis-server "$d/redis.conf") >"$d/redis.log" 2>&1 &
	RAW_REDIS_PID=$!
	PIDS+=("$RAW_REDIS_PID")
	for ((k = 0; k < 3000; k++)); do
		out=$(redis-cli --no-auth-warning -h 127.0.0.1 -p "$port" --user pier_admin --pass "$pw" ping 2>/dev/null || true)
		[[ $out == PONG ]] && break
		kill -0 "$RAW_REDIS_PID" 2>/dev/null || die "raw redis exited: $(tail -5 "$d/redis.log")"
		sleep 0.01
	done
	((k < 3000)) || die "raw redis not ready after 30 s"
	[[ -n $(redis-cli -h 127.0.0.1 -p "$port" ping 2>&1) ]] || die "raw redis: no answer to PING"
	record redis_raw "$i" "$t0" "$(now_ns)"
}
raw_redis_stop() {
	kill -TERM "$RAW_REDIS_PID" 2>/dev/null || true
	wait "$RAW_REDIS_PID" 2>/dev/null || true
}

pier_redis() {
	local i=$1 port t0 t1 tj out
	t0=$(now_ns)
	pier resources create redis "cache$i" --json >"$WORK/create-cache$i.json" 2>"$WORK/create-cache$i.log" ||
		die "pier resources create redis cache$i: $(cat "$WORK/create-cache$i.log")"
	t1=$(now_ns)
	port=$(jq -r .port "$WORK/create-cache$i.json")
	tj=$(now_ns) # reading the port is not part of the clock
	# Without credentials the answer is NOAUTH: any answer means it serves.
	out=$(redis-cli -h 127.0.0.1 -p "$port" ping 2>&1 || true)
	[[ -n $out ]] || die "cache$i: no answer to PING after create"
	record redis_pier "$i" $((t0 + tj - t1)) "$(now_ns)"
	record redis_pier_cli "$i" "$t0" "$t1"
}

# check_redis_creds I: untimed, connect web to cacheI, PING with its
# REDIS_URL, disconnect (so web never has two redis connections).
check_redis_creds() {
	local i=$1 url out
	pier connect web "cache$i" >"$WORK/connect-cache$i.log" 2>&1 || die "connect web cache$i: $(cat "$WORK/connect-cache$i.log")"
	url=$(pier connections show web "cache$i" --reveal --json | jq -r .values.REDIS_URL)
	out=$(redis-cli --no-auth-warning -u "$url" ping 2>&1)
	[[ $out == PONG ]] || die "cache$i: PING with the app's REDIS_URL: $out"
	pier disconnect web "cache$i" >>"$WORK/connect-cache$i.log" 2>&1 || die "disconnect web cache$i"
}

# -------------------------------------------------------------- connect --

# poll_app DEADLINE_NS TEST: runs TEST until it succeeds (every 10 ms).
poll_until() {
	local deadline=$1
	shift
	until "$@"; do
		(($(now_ns) < deadline)) || return 1
		sleep 0.01
	done
}
env_has() {
	local body n
	body=$(app "$APP_URL/env" || true)
	for n in "$@"; do [[ $body == *"\"$n\""* ]] || return 1; done
}
env_lacks() { ! env_has "$1"; }
select_one() { [[ $(app -X POST --data 'SELECT 1' "$APP_URL/pg/query" || true) == 1 ]]; }

# timed_roll LABEL I TEST... -- CMD...: runs CMD in the background; records
# LABEL_env when TEST succeeds (polled), LABEL_cli when CMD exits.
timed_roll() {
	local label=$1 i=$2 t0 t1 cli test=()
	shift 2
	while [[ $1 != -- ]]; do test+=("$1"); shift; done
	shift
	t0=$(now_ns)
	"$@" >"$WORK/$label-$i.log" 2>&1 &
	cli=$!
	poll_until $((t0 + 120 * 1000000000)) "${test[@]}" || die "$label $i: app not serving after 120 s; see $WORK/$label-$i.log"
	t1=$(now_ns)
	record "${label}_env" "$i" "$t0" "$t1"
	wait "$cli" || die "$label $i: command failed: $(cat "$WORK/$label-$i.log")"
	record "${label}_cli" "$i" "$t0" "$(now_ns)"
	LAST_T0=$t0
}

pier_connect() {
	local i=$1 url out
	timed_roll connect "$i" env_has DATABASE_URL "DB${i}_URL" -- pier connect web "db$i"
	poll_until $((LAST_T0 + 120 * 1000000000)) select_one || die "connect $i: SELECT 1 through the app failed"
	record connect_select "$i" "$LAST_T0" "$(now_ns)"
	# Untimed: the resource's credentials work for a plain client too.
	url=$(pier connections show web "db$i" --reveal --json | jq -r .values.DATABASE_URL)
	out=$(PGCONNECT_TIMEOUT=10 psql -qXAt "$url" -c 'SELECT 1')
	[[ $out == 1 ]] || die "db$i: psql with DATABASE_URL: $out"
	pier disconnect web "db$i" >"$WORK/disconnect-db$i.log" 2>&1 || die "disconnect web db$i: $(cat "$WORK/disconnect-db$i.log")"
	poll_until $(($(now_ns) + 60 * 1000000000)) env_lacks DATABASE_URL || die "web still has DATABASE_URL after disconnect"
}

pier_secrets() {
	local i=$1
	timed_roll secrets "$i" env_has "BENCH_ROLL_$i" -- pier secrets set -a web "BENCH_ROLL_$i=1"
}

# ------------------------------------------------------------------ run --

for ((i = 1; i <= N; i++)); do
	log "Iteration $i/$N"
	wait_quiet
	if ((i % 2)); then
		raw_pg "$i"; raw_pg_stop; pier_pg "$i"
		raw_redis "$i"; raw_redis_stop; pier_redis "$i"
	else
		pier_pg "$i"; raw_pg "$i"; raw_pg_stop
		pier_redis "$i"; raw_redis "$i"; raw_redis_stop
	fi
	check_redis_creds "$i"
	wait_quiet
	pier_connect "$i"
	pier_secrets "$i"
	awk -F'\t' -v i="$i" '$2 == i { printf "    %-18s %7.0f ms\n", $1, $3 * 1000 }' "$RESULTS" >&2
done

# pier's own time for the postgres provision, from its log ("took=1.2s").
grep -o 'msg="postgres provisioned".*took=[0-9.]*m\?s' "$WORK/pier-server.log" |
	sed -E 's/.*resource=db([0-9]+).*took=([0-9.]+)(m?s)$/\1 \2 \3/' |
	while read -r i v u; do
		[[ $u == ms ]] && v=$(awk -v v="$v" 'BEGIN { print v / 1000 }')
		printf 'pg_pier_server\t%s\t%s\n' "$i" "$v"
	done >>"$RESULTS"

# stat METRIC: "p50 max" in ms (p50 = the lower median).
stat() {
	awk -F'\t' -v m="$1" '$1 == m { print $3 }' "$RESULTS" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit } printf "%.0f %.0f\n", v[int((NR + 1) / 2)] * 1000, v[NR] * 1000 }'
}
row() { # LABEL PIER_METRIC [RAW_METRIC]
	local p50 max r50 rmax
	read -r p50 max <<<"$(stat "$2")"
	if [[ -n ${3:-} ]]; then
		read -r r50 rmax <<<"$(stat "$3")"
		awk -v l="$1" -v a="$p50" -v b="$max" -v c="$r50" -v d="$rmax" \
			'BEGIN { printf "| %s | %d ms | %d ms | %d ms | %d ms | %.2fx | %.2fx |\n", l, a, b, c, d, a / c, b / d }'
	else
		printf '| %s | %s ms | %s ms | - | - | - | - |\n' "$1" "$p50" "$max"
	fi
}
{
	echo
	echo "Resources on $(nproc) cores, N=$N, $(go version | cut -d' ' -f3), PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }'), redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-):"
	echo
	echo "| measurement | pier p50 | pier max | peer p50 | peer max | p50 ratio | max ratio |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	row "postgres: create → ready (raw: initdb + start + createdb + login)" pg_pier pg_raw
	row "&nbsp;&nbsp;pier server's provision (log \"took\") / raw initdb" pg_pier_server pg_raw_initdb
	row "&nbsp;&nbsp;raw: start until pg_isready" pg_raw_start
	row "&nbsp;&nbsp;raw: CREATE DATABASE + login" pg_raw_db_login
	row "redis: create → ready (raw: redis-server until authenticated PONG)" redis_pier redis_raw
	row "connect web dbI → /env has DATABASE_URL" connect_env
	row "connect web dbI → SELECT 1 through the app" connect_select
	row "connect web dbI: CLI exited" connect_cli
	row "secrets set (same roll, no grant) → /env has it" secrets_env
	row "secrets set: CLI exited" secrets_cli
} | tee "$WORK/table.md"
