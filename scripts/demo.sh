#!/usr/bin/env bash
# Shoal's local demo: installs what it needs, then runs a registry, an agent and containerd
# on this machine and pulls a generated image through the agent. Arguments go to the demo
# (--keep to leave it running, --layers 64,16,1 for layer sizes in MiB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
exec node --enable-source-maps tools/local/dist/src/demo.js "$@"
