#!/usr/bin/env bash
# Builds Shoal's container image (deploy/Dockerfile) with buildah, Debian's package, as root.
#
#   bash scripts/build-image.sh                      # builds localhost/shoal:<version>
#   NODE_IMAGE=node:22.23.3-bookworm-slim bash scripts/build-image.sh
#
# Where Docker Hub is reachable, pass NODE_IMAGE and the official Node image is the base.
# Without it (a machine that reaches only Debian's and npm's mirrors), the script first makes
# a local base image, localhost/shoal-node-base:<node version>-bookworm: a Debian bookworm
# minbase root file system from the Debian mirror apt uses (debootstrap), plus this machine's
# own Node binary and npm, because bookworm's nodejs (18) is older than Shoal needs. The base
# records where its Node came from in /usr/local/share/shoal-node-base/PROVENANCE.
#
# Environment: IMAGE (tag to build), NODE_IMAGE (base to use instead of building one),
# REBUILD_BASE=1 (rebuild the local base even if it exists), SHOAL_IMAGE_WORK (scratch
# directory for the base's root file system, default /var/tmp/shoal-image),
# DEBIAN_MIRROR (default: the first deb.debian.org-style URI in apt's sources).
# Not part of scripts/test.sh: it takes minutes and needs buildah, debootstrap and root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[build-image] %s\n' "$*"; }
die() { printf '[build-image] %s\n' "$*" >&2; exit 1; }

version=$(node -p 'require("./package.json").version')
IMAGE=${IMAGE:-localhost/shoal:${version}}
work=${SHOAL_IMAGE_WORK:-/var/tmp/shoal-image}

[ "$(id -u)" -eq 0 ] || die "run as root: buildah and debootstrap need it here"
command -v buildah >/dev/null || die "buildah is missing: apt-get install -y buildah"

# Builds the local Node base unless it exists (or REBUILD_BASE=1).
build_base() {
  local node_bin node_version npm_dir npm_version base rootfs mirror owner
  node_bin=$(readlink -f "$(command -v node)")
  node_version=$(node -p 'process.versions.node')
  node -e 'const [a,b,c]=process.versions.node.split(".").map(Number);
    process.exit(a>20||(a===20&&(b>18||(b===18&&c>=1)))?0:1)' \
    || die "this machine's Node is $node_version; the image needs >= 20.18.1"
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  npm_version=$(node -p "require('$npm_dir/package.json').version")
  base="localhost/shoal-node-base:${node_version}-bookworm"
  NODE_IMAGE=$base
  if [ "${REBUILD_BASE:-0}" != 1 ] && buildah inspect --type image "$base" >/dev/null 2>&1; then
    log "base image $base exists (REBUILD_BASE=1 to rebuild it)"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
  mirror=${DEBIAN_MIRROR:-$(grep -hoE 'https?://[^ ]+/debian/?$' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | head -n1 || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs="$work/rootfs"
  log "debootstrap bookworm (minbase) from $mirror into $rootfs"
  rm -rf "$rootfs"
  mkdir -p "$work"
  debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $work/debootstrap.log"

  log "adding Node $node_version ($node_bin) and npm $npm_version ($npm_dir)"
  install -D -m 0755 "$node_bin" "$rootfs/usr/local/bin/node"
  # The Node binary of Debian-style packages carries its debug information (tens of MB).
  strip --strip-debug "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/lib/node_modules"
  cp -a "$npm_dir" "$rootfs/usr/local/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  chroot "$rootfs" /usr/local/bin/node --version >/dev/null \
    || die "the copied Node binary does not run in the bookworm root file system"
  owner=$(dpkg -S "$node_bin" 2>/dev/null | cut -d: -f1 || true)
  mkdir -p "$rootfs/usr/local/share/shoal-node-base"
  {
    echo "Debian bookworm minbase, debootstrap from $mirror on $(date -u +%FT%TZ)"
    echo "node $node_version: copied from the build host's $node_bin (debug information stripped)"
    echo "  host package: ${owner:-none}${owner:+ $(dpkg-query -W -f '${Version}' "$owner" 2>/dev/null)}"
    echo "  sha256 of the host binary: $(sha256sum "$node_bin" | cut -d' ' -f1)"
    echo "npm $npm_version: copied from the build host's $npm_dir"
  } >"$rootfs/usr/local/share/shoal-node-base/PROVENANCE"

  # What the official slim images leave out too: package caches, lists, documentation.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

  log "committing $base"
  tar -C "$rootfs" --numeric-owner -cf "$work/rootfs.tar" .
  local container
  container=$(buildah from scratch)
  buildah add --quiet "$container" "$work/rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd node --label "org.opencontainers.image.description=Debian bookworm minbase with Node $node_version (from the build host)" \
    "$container"
  buildah commit --quiet --rm "$container" "$base" >/dev/null
  rm -rf "$rootfs" "$work/rootfs.tar"
}

start=$(date +%s)
if [ -z "${NODE_IMAGE:-}" ]; then
  build_base
fi
base_done=$(date +%s)

# buildah's default isolation (OCI, runc) works here; where nested namespaces are forbidden
# (buildah inside a container), BUILDAH_ISOLATION=chroot is the fallback. The host network:
# npm ci reaches the npm registry as this machine does.
# Where this machine reaches the npm registry through a TLS-inspecting proxy, npm in the build
# trusts the same CA bundle as npm here: mounted for the build's RUN steps only, never copied
# into a layer.
ca_args=()
host_ca=${NODE_EXTRA_CA_CERTS:-$(npm config get cafile 2>/dev/null || true)}
if [ -n "$host_ca" ] && [ "$host_ca" != null ] && [ -f "$host_ca" ]; then
  log "npm in the build trusts $host_ca (mounted read-only, build only)"
  ca_args=(--volume "$host_ca:/run/shoal-build-ca.pem:ro"
    --build-arg NODE_EXTRA_CA_CERTS=/run/shoal-build-ca.pem)
fi
log "building $IMAGE from deploy/Dockerfile (NODE_IMAGE=$NODE_IMAGE)"
buildah bud --layers --network host "${ca_args[@]}" \
  --build-arg "NODE_IMAGE=$NODE_IMAGE" -f deploy/Dockerfile -t "$IMAGE" .
end=$(date +%s)

log "base: $((base_done - start)) s, image: $((end - base_done)) s"
buildah images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE"
