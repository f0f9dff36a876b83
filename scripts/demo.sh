#!/usr/bin/env bash
# Quickstart: builds pier, starts `pier server` in the background (unless one
# is already answering), launches examples/hello and prints its URL.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local

bash scripts/deps.sh
echo "==> Building pier"
go build -o bin/pier ./cmd/pier
PIER="$PWD/bin/pier"

data_dir=${PIER_DATA_DIR:-}
if [[ -z $data_dir ]]; then
  if [[ $(id -u) -eq 0 ]]; then data_dir=/var/lib/pier; else data_dir=$HOME/.local/share/pier; fi
fi
mkdir -p "$data_dir"
log="$data_dir/server.log"

if "$PIER" apps list >/dev/null 2>&1; then
  echo "==> pier server is already running"
else
  echo "==> Starting pier server (log: $log)"
  nohup "$PIER" server --data-dir "$data_dir" >>"$log" 2>&1 &
  for _ in $(seq 1 100); do
    "$PIER" apps list >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$PIER" apps list >/dev/null || { echo "pier server did not start; see $log" >&2; tail -20 "$log" >&2; exit 1; }
fi

"$PIER" launch examples/hello --yes
url=$("$PIER" status -a hello --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
echo
echo "Try it:  curl $url"
echo "         (or: curl -H 'Host: hello.localhost' http://127.0.0.1:8080/)"
echo "More:    $PIER status -a hello"
echo "         $PIER logs -a hello -f"
echo "         $PIER --help"
echo "Stop:    kill \$(pgrep -f 'bin/pier server')   (isolated apps keep running for the next server;"
echo "         start it with --stop-machines-on-exit, then kill it, to stop them too)"
