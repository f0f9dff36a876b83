#!/usr/bin/env bash
# Installs what pier and its tests need on a fresh Debian machine with Go:
# git, curl, Python 3 and Node.js/npm (for the Python and Node builders),
# runc, iptables, e2fsprogs and util-linux (the isolating machine runtime:
# machines' disks are loop-mounted ext4 images) and a static busybox
# (its tests put it in their machine images), PostgreSQL 15 and Redis (the
# servers behind managed resources), and pebble (a local ACME server).
# Safe to run again: it only installs what is missing.
set -euo pipefail

missing=()
command -v git >/dev/null || missing+=(git)
command -v curl >/dev/null || missing+=(curl ca-certificates)
command -v python3 >/dev/null || missing+=(python3)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v gcc >/dev/null || missing+=(gcc libc6-dev) # the race detector needs cgo
command -v runc >/dev/null || missing+=(runc)
command -v iptables-restore >/dev/null || missing+=(iptables)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v skopeo >/dev/null || missing+=(skopeo)
[[ -x /usr/bin/tini-static ]] || missing+=(tini) # pid 1 of machines
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15 postgresql-client-15)
command -v redis-server >/dev/null || missing+=(redis-server)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
  else
    SUDO=
  fi
  echo "==> Installing ${missing[*]} (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  echo "pier needs Go (https://go.dev/doc/install); it was not found on PATH" >&2
  exit 1
fi

# pebble (a local ACME server) and its mock DNS, for the HTTPS tests. Pinned:
# its config format changes between versions. The tests also use the test
# certificates in its module, which `go install` leaves in the module cache.
PEBBLE_VERSION=v2.10.1
gobin=$(go env GOPATH)/bin
pebble_certs=$(go env GOMODCACHE)/github.com/letsencrypt/pebble/v2@$PEBBLE_VERSION/test/certs
for tool in pebble pebble-challtestsrv; do
  if [[ ! -x $gobin/$tool || ! -d $pebble_certs ]]; then
    echo "==> Installing $tool $PEBBLE_VERSION (go install)"
    GOTOOLCHAIN=local go install "github.com/letsencrypt/pebble/v2/cmd/$tool@$PEBBLE_VERSION"
  fi
done
