#!/usr/bin/env bash
# Generates Shoal's secrets for a deployment, so that nothing ships with a placeholder:
#
#   bash scripts/gen-secrets.sh                  # deploy/k8s/secrets (then kubectl apply -k ...)
#   bash scripts/gen-secrets.sh k8s DIR          # another directory laid out the same way
#   bash scripts/gen-secrets.sh compose          # deploy/compose/.env (then docker compose up)
#   bash scripts/gen-secrets.sh compose FILE
#
# k8s writes, for the secrets component of the mixed and seeder overlays: nats-users.env (a
# password per NATS user), handout.key and handout.pub (the tracker's Ed25519 pair),
# seed-record.key and seed-record.pub (the seed server's Ed25519 pair for its signed records),
# seedserver-s3.env (the object gateway's key) and watcher-webhook.env (the webhook token); and
# for the leecher overlay, leecher/nats-users.env (the agent password only),
# leecher/handout.pub and leecher/seed-record.pub. A file that exists is kept: running it
# again changes nothing, and rotating a secret is deleting its file and running it again. The
# leecher's copies are kept too (they may be all a leecher's machine has): rotating a key or
# the agent password a leecher holds is deleting its leecher copy as well; the script says
# when a copy differs from the seeder's file. compose writes the variables the file lacks, so
# deleting one line and running it again makes that value anew.
# Needs openssl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
  echo "usage: bash scripts/gen-secrets.sh [k8s [DIR] | compose [FILE]]" >&2
  exit 2
}

command -v openssl >/dev/null || {
  echo "gen-secrets: openssl is needed (apt-get install openssl)" >&2
  exit 1
}

# Letters and digits only: the NATS passwords go into nats://user:password@host URLs.
random() { openssl rand -hex 24; }
# A NATS password starts with a letter: nats-server reads the value of a $VARIABLE in its
# configuration (auth.conf) as a configuration value, and one that starts with a digit is
# taken for a number (1e24c8..., 0505e0...: about one hex string in 13), so NATS refused to
# start.
nats_password() { printf 'n%s' "$(random)"; }

# Writes stdin to $1 unless it exists (mode 600); says which.
write_new() {
  if [ -e "$1" ]; then
    cat >/dev/null
    echo "kept      $1"
  else
    (umask 077 && cat >"$1")
    echo "generated $1"
  fi
}

# Writes stdin to the leecher's copy $1 unless it exists (mode 600); on the seeder's machine
# ($2 = 1: its files were there before this run) says when an existing copy is not what the
# seeder's files hold now (a rotated key or password). On a leecher's machine the copies are
# all there is, and the seeder's files were just made up here: nothing to say.
write_leecher_copy() {
  local content
  content=$(cat)
  if [ -e "$1" ]; then
    echo "kept      $1"
    if [ "$2" = 1 ] && [ "$(cat "$1")" != "$content" ]; then
      echo "note      $1 is not the seeder's current value: if that was rotated, delete $1 and run this again"
    fi
  else
    (umask 077 && printf '%s\n' "$content" >"$1")
    echo "generated $1"
  fi
}

# Appends NAME=VALUE ($2, $3) to the env file $1 unless it sets NAME already; says which.
add_missing() {
  if grep -q "^$2=" "$1"; then
    echo "kept      $1: $2"
  else
    # A file edited by hand may not end with a newline: the value goes on a line of its own.
    if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then
      echo >>"$1"
    fi
    printf '%s=%s\n' "$2" "$3" >>"$1"
    echo "generated $1: $2"
  fi
}

# Makes the Ed25519 key $1.key unless it exists, and its public half $1.pub from it.
ed25519_pair() {
  if [ ! -e "$1.key" ]; then
    (umask 077 && openssl genpkey -algorithm ed25519 -out "$1.key")
    rm -f "$1.pub"
    echo "generated $1.key"
  else
    echo "kept      $1.key"
  fi
  openssl pkey -in "$1.key" -pubout | write_new "$1.pub"
}

k8s() {
  local dir=$1
  [ -f "$dir/kustomization.yaml" ] || {
    echo "gen-secrets: $dir is not the secrets component (no kustomization.yaml)" >&2
    exit 1
  }
  local seeder=0 file
  for file in nats-users.env handout.key seed-record.key seedserver-s3.env watcher-webhook.env; do
    if [ -e "$dir/$file" ]; then
      seeder=1
    fi
  done
  printf 'agent=%s\ntracker=%s\nseedserver=%s\nwatcher=%s\n' \
    "$(nats_password)" "$(nats_password)" "$(nats_password)" "$(nats_password)" |
    write_new "$dir/nats-users.env"
  ed25519_pair "$dir/handout"
  ed25519_pair "$dir/seed-record"
  printf 'SHOAL_S3_ACCESS_KEY_ID=shoal-seedserver\nSHOAL_S3_SECRET_ACCESS_KEY=%s\n' "$(random)" |
    write_new "$dir/seedserver-s3.env"
  printf 'token=%s\n' "$(random)" | write_new "$dir/watcher-webhook.env"
  # A leecher cluster gets the seeder's agent password and public keys, nothing more.
  if [ -d "$dir/leecher" ]; then
    local agent
    agent=$(grep '^agent=' "$dir/nats-users.env") || {
      echo "gen-secrets: $dir/nats-users.env has no agent= line" >&2
      exit 1
    }
    printf '%s\n' "$agent" | write_leecher_copy "$dir/leecher/nats-users.env" "$seeder"
    write_leecher_copy "$dir/leecher/handout.pub" "$seeder" <"$dir/handout.pub"
    write_leecher_copy "$dir/leecher/seed-record.pub" "$seeder" <"$dir/seed-record.pub"
  fi
}

compose() {
  local file=$1
  echo "# Generated by scripts/gen-secrets.sh; docker compose reads it (never commit it)." |
    write_new "$file"
  local name
  for name in NATS_AGENT_PASSWORD NATS_TRACKER_PASSWORD NATS_SEEDSERVER_PASSWORD \
    NATS_WATCHER_PASSWORD; do
    add_missing "$file" "$name" "$(nats_password)"
  done
  add_missing "$file" SEEDSERVER_S3_SECRET "$(random)"
  add_missing "$file" WATCHER_WEBHOOK_TOKEN "$(random)"
}

case "${1:-k8s}" in
  k8s) [ $# -le 2 ] || usage; k8s "${2:-deploy/k8s/secrets}" ;;
  compose) [ $# -le 2 ] || usage; compose "${2:-deploy/compose/.env}" ;;
  *) usage ;;
esac
