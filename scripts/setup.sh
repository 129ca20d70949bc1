#!/usr/bin/env bash
# Installs everything Shoal's tests and local demo need, idempotently, on Debian with Node:
# the Debian packages of the real servers the test kit runs, the npm packages, and a build.
# Safe to run again: it installs only what is missing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[setup] %s\n' "$*"; }

# Node: 20.18.1 or newer (undici 7 and the test runner's flags need it).
node_ok=$(node -e 'const [a,b,c]=process.versions.node.split(".").map(Number);process.stdout.write(String(a>20||(a===20&&(b>18||(b===18&&c>=1)))))')
if [ "$node_ok" != "true" ]; then
  echo "Shoal needs Node.js >= 20.18.1; this is $(node --version)" >&2
  exit 1
fi

# Debian packages: binary -> package.
declare -A packages=(
  [nats-server]=nats-server
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [containerd]=containerd
  [ctr]=containerd
  [ip]=iproute2
  # Blackholed hosts in the fault tests: packets dropped in a namespace, no RST, no FIN.
  [iptables]=iptables
  [openssl]=openssl
  [promtool]=prometheus
  [docker-compose]=docker-compose
)
missing=()
for binary in "${!packages[@]}"; do
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$binary" >/dev/null 2>&1; then
    missing+=("${packages[$binary]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing Debian packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# npm packages, from the lock file; reinstalled only when the lock file changed.
stamp=node_modules/.shoal-lock.sha256
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
  log "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$stamp"
else
  log "npm packages up to date"
fi

# Build every workspace (incremental).
log "building (tsc -b)"
npx --no-install tsc -b
