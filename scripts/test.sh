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
go test -race -count=1 $(go list ./... | grep -v /internal/e2e)

echo "==> integration tests"
go test -count=1 -timeout 20m ./internal/e2e/
