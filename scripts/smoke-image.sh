#!/usr/bin/env bash
# Smoke test of the built image (scripts/build-image.sh): runs every service from it with
# podman against a nats-server on loopback and checks that each answers /healthz, /readyz and
# /metrics; checks that the image runs as its service user and that its node_modules holds no
# development or test-only package; prints the image's size.
#
#   bash scripts/smoke-image.sh                    # IMAGE defaults to localhost/shoal:<version>
#
# The containers share the host's network namespace and every service listens on 127.0.0.1
# only, on free ports; nothing is published beyond loopback. Needs root, podman and
# nats-server (Debian packages). Not part of scripts/test.sh: it needs the built image.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[smoke-image] %s\n' "$*"; }
die() { printf '[smoke-image] FAIL: %s\n' "$*" >&2; exit 1; }

version=$(node -p 'require("./package.json").version')
IMAGE=${IMAGE:-localhost/shoal:${version}}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-90}
command -v podman >/dev/null || die "podman is missing: apt-get install -y podman"
command -v nats-server >/dev/null || die "nats-server is missing: apt-get install -y nats-server"
podman image exists "$IMAGE" || die "no image $IMAGE: run bash scripts/build-image.sh first"

# podman gives a rootful container RLIMIT_NOFILE and RLIMIT_NPROC of 1048576, and runc then
# fails ("error setting rlimit type 7: operation not permitted") where the process may not
# raise its hard limits (no CAP_SYS_RESOURCE, as in this project's sandbox). The containers
# get this shell's open-files limit and 4096 processes instead, plenty for one Node service.
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)

tmp=$(mktemp -d /tmp/shoal-smoke.XXXXXX)
prefix="shoal-smoke-$$"
containers=()
nats_pid=""
cleanup() {
  local status=$?
  for name in "${containers[@]}"; do
    if [ "$status" -ne 0 ]; then
      printf '\n[smoke-image] --- logs of %s ---\n' "$name" >&2
      podman logs --tail 30 "$name" >&2 2>&1 || true
    fi
    podman rm --force --time 5 "$name" >/dev/null 2>&1 || true
  done
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Free loopback ports for nats-server and the services' listeners.
read -r nats_port tracker_port seed_port watcher_port agent_port peer_port < <(node -e '
  const net = require("node:net");
  const take = () => new Promise((resolve) => { const s = net.createServer().listen(0, "127.0.0.1",
    () => { const { port } = s.address(); s.close(() => resolve(port)); }); });
  (async () => { const ports = []; for (let i = 0; i < 6; i++) ports.push(await take());
    console.log(ports.join(" ")); })();')

# Size of the image, as podman counts it and as its unpacked root file system takes on disk.
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
mnt=$(podman image mount "$IMAGE")
rootfs_du=$(du -sh "$mnt" | cut -f1)
modules_du=$(du -sh "$mnt/app/node_modules" | cut -f1)
node_du=$(du -sh "$mnt/usr/local/bin/node" 2>/dev/null | cut -f1 || echo '?')
podman image unmount "$IMAGE" >/dev/null
log "image $IMAGE: $((size_bytes / 1000000)) MB ($size_bytes bytes); root file system $rootfs_du on disk, of which node_modules $modules_du, node $node_du"

# The image runs as its service user, and has only production dependencies.
uid=$(podman run --rm --network none "${limits[@]}" "$IMAGE" -p 'process.getuid() + ":" + process.getgid()')
[ "$uid" = "65532:65532" ] || die "the image runs as $uid, not 65532:65532"
log "runs as uid:gid $uid"
podman run --rm --network none "${limits[@]}" "$IMAGE" -e '
  const fs = require("node:fs");
  // Development and test-only packages: the compiler, linters, the test kit and what only
  // it and the integration tests use (s3rver and its koa, bcryptjs, fast-check).
  const forbidden = ["typescript", "eslint", "typescript-eslint", "@eslint/js", "prettier",
    "@shoal/testkit", "@shoal/integration", "@shoal/bench", "@shoal/local", "s3rver", "koa",
    "bcryptjs", "fast-check"];
  const present = forbidden.filter((name) => fs.existsSync(`node_modules/${name}`));
  const all = fs.readdirSync("node_modules").flatMap((name) => name.startsWith("@")
    ? fs.readdirSync(`node_modules/${name}`).map((sub) => `${name}/${sub}`) : [name])
    .filter((name) => !name.startsWith("."));
  if (present.length > 0) { console.error(`test-only packages in the image: ${present.join(", ")}`); process.exit(1); }
  console.log(`[smoke-image] node_modules: ${all.length} top-level packages, none test-only`);
' || die "the image holds development or test-only packages"

# nats-server with JetStream on loopback, its store in the temporary directory.
nats-server --addr 127.0.0.1 --port "$nats_port" --jetstream --store_dir "$tmp/nats" \
  >"$tmp/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; then break; fi
  sleep 0.2
done
kill -0 "$nats_pid" 2>/dev/null || die "nats-server did not start: $(cat "$tmp/nats.log")"
log "nats-server on 127.0.0.1:$nats_port (JetStream)"
nats_url="nats://127.0.0.1:$nats_port"

# The tracker's hand-out key, made by the image's own key generator as the service user.
mkdir -p "$tmp/keys"
chown 65532:65532 "$tmp/keys"
# The seed server's record key likewise (keygen --name seed-record).
for name in handout seed-record; do
  podman run --rm --network none "${limits[@]}" -v "$tmp/keys:/var/lib/shoal/keys/private" \
    "$IMAGE" services/tracker/dist/src/keygen.js --name "$name" /var/lib/shoal/keys/private \
    >/dev/null
  if [ ! -s "$tmp/keys/$name.key" ] || [ ! -s "$tmp/keys/$name.pub" ]; then
    die "keygen wrote no $name key"
  fi
done
log "hand-out and record keys made with services/tracker/dist/src/keygen.js"
webhook_token=$(node -p 'require("node:crypto").randomBytes(24).toString("hex")')

# run NAME SCRIPT ENV...: starts one service from the image, on the host's loopback.
run() {
  local name="$prefix-$1" script=$2
  shift 2
  local env_args=()
  for assignment in "$@"; do env_args+=(--env "$assignment"); done
  containers+=("$name")
  podman run --detach --name "$name" --network host "${limits[@]}" \
    -v "$tmp/keys:/etc/shoal/handout:ro" \
    --env SHOAL_NATS_URL="$nats_url" --env SHOAL_NATS_STREAM_REPLICAS=1 \
    --env SHOAL_LOG_LEVEL=info "${env_args[@]}" "$IMAGE" "$script" >/dev/null
}
registry="localhost:5000=http://127.0.0.1:5000"
run tracker services/tracker/dist/src/main.js \
  SHOAL_TRACKER_LISTEN="127.0.0.1:$tracker_port" \
  SHOAL_TRACKER_HANDOUT_KEY_FILE=/etc/shoal/handout/handout.key
run seedserver services/seedserver/dist/src/main.js \
  SHOAL_SEED_LISTEN="127.0.0.1:$seed_port" SHOAL_SEED_URL="http://127.0.0.1:$seed_port" \
  SHOAL_SEED_ID=seed-smoke SHOAL_SEED_REGISTRIES="$registry" \
  SHOAL_SEED_HANDOUT_PUBLIC_KEYS_FILE=/etc/shoal/handout/handout.pub \
  SHOAL_SEED_RECORD_KEY_FILE=/etc/shoal/handout/seed-record.key
run watcher services/watcher/dist/src/main.js \
  SHOAL_WATCHER_LISTEN="127.0.0.1:$watcher_port" SHOAL_WATCHER_REGISTRIES="$registry" \
  SHOAL_WATCHER_WEBHOOK_TOKEN="$webhook_token"
run agent services/agent/dist/src/main.js \
  SHOAL_AGENT_LISTEN="127.0.0.1:$agent_port" SHOAL_AGENT_PEER_LISTEN="127.0.0.1:$peer_port" \
  SHOAL_AGENT_PEER_URL="http://127.0.0.1:$peer_port" SHOAL_AGENT_PEER_ID=agent-smoke \
  SHOAL_AGENT_REGISTRIES="$registry" \
  SHOAL_AGENT_HANDOUT_PUBLIC_KEYS_FILE=/etc/shoal/handout/handout.pub \
  SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE=/etc/shoal/handout/seed-record.pub

# Every service answers /healthz, becomes ready, and serves its metrics.
failed=0
for entry in "tracker $tracker_port" "seedserver $seed_port" "watcher $watcher_port" \
  "agent $agent_port" "agent-peer $peer_port"; do
  read -r service port <<<"$entry"
  base="http://127.0.0.1:$port"
  deadline=$((SECONDS + READY_TIMEOUT_S))
  ready=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ready=$(curl -fsS --max-time 2 "$base/readyz" 2>/dev/null); then break; fi
    ready=""
    sleep 1
  done
  if [ -z "$ready" ]; then
    log "$service: NOT ready after ${READY_TIMEOUT_S}s: $(curl -sS --max-time 2 "$base/readyz" 2>&1 || true)"
    failed=1
    continue
  fi
  healthz=$(curl -fsS --max-time 2 -o /dev/null -w '%{http_code}' "$base/healthz" || true)
  metrics=$(curl -fsS --max-time 5 "$base/metrics" | grep -c '^shoal_' || true)
  log "$service on 127.0.0.1:$port: /healthz $healthz, /readyz $ready, /metrics $metrics shoal_ samples"
  if [ "$healthz" != 200 ] || [ "$metrics" -eq 0 ]; then failed=1; fi
done
[ "$failed" -eq 0 ] || die "a service did not come up (logs follow)"
log "PASS: tracker, seed server, watcher and agent from $IMAGE are healthy and ready"
