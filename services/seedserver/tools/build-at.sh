#!/usr/bin/env bash
# Builds the seed server as it was at a commit, into a directory of its own, sharing this
# checkout's installed packages, so that cost-per-byte can compare it with the current build:
#
#   bash services/seedserver/tools/build-at.sh <commit> <dir>
#   node services/seedserver/dist/tools/cost-per-byte.js \
#     before=<dir>/services/seedserver/dist/src/main.js after=services/seedserver/dist/src/main.js
#
# A third argument names the project to build instead: `.` builds every service, for the
# data-path bench's `--baseline <dir>`.
set -euo pipefail
commit=${1:?commit}
dir=${2:?directory}
project=${3:-services/seedserver}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
rm -rf "$dir"
mkdir -p "$dir/node_modules/@shoal"
git -C "$root" archive "$commit" | tar -x -C "$dir"
# Third-party packages from this checkout; the workspace packages from the commit's own tree.
for entry in "$root"/node_modules/* "$root"/node_modules/.bin; do
  name=$(basename "$entry")
  [ "$name" = "@shoal" ] || ln -s "$entry" "$dir/node_modules/$name"
done
for link in "$root"/node_modules/@shoal/*; do
  ln -s "$(readlink "$link")" "$dir/node_modules/@shoal/$(basename "$link")"
done
(cd "$dir" && npx --no-install tsc -b "$project")
echo "$dir/services/seedserver/dist/src/main.js"
