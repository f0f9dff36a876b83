#!/usr/bin/env bash
# Runs pier's whole test suite: formatting, vet, unit tests (with the race
# detector) and the integration tests, which build the real pier binary and
# drive `pier server` with real builds, processes and HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local

bash scripts/deps.sh

echo "==> gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
  echo "gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi

echo "==> go vet"
go vet ./...

echo "==> unit tests (race detector)"
# internal/baseimage assembles real base images (hundreds of MB of files to
# hash and compress); under the race detector that takes minutes, so it runs
# without it, after the rest.
go test -race -count=1 $(go list ./... | grep -v -e /internal/e2e -e /internal/baseimage)
echo "==> base image tests"
go test -count=1 ./internal/baseimage/

echo "==> fuzzing (bounded): source upload extraction, pier.toml parsing"
# FUZZTIME=0 skips; a failure leaves its input under testdata/fuzz/.
fuzztime=${FUZZTIME:-15s}
if [[ $fuzztime != 0 ]]; then
  go test -run '^$' -fuzz '^FuzzExtract$' -fuzztime "$fuzztime" ./internal/build/
  go test -run '^$' -fuzz '^FuzzParse$' -fuzztime "$fuzztime" ./internal/appconfig/
fi

echo "==> integration tests"
go test -count=1 -timeout 40m ./internal/e2e/
