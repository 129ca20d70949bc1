#!/usr/bin/env bash
# Shoal's local demo: installs what it needs, then runs a whole swarm on this machine
# (nats-server, a registry with a generated image, a tracker, a seed server, agents, one
# containerd per agent) and pulls the image through every agent at once. Arguments go to the
# demo: --help lists them (--agents N, --layers 64,16,1, --keep, --registry/--image for your own).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
exec node --enable-source-maps tools/local/dist/src/demo.js "$@"
