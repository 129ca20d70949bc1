#!/usr/bin/env bash
# The whole test suite: setup, type-checked lint, format check, then every test file
# (unit and integration, against real servers) with node's test runner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

# Lint (type-checked, a minute or two) and the format check run beside the tests, at the
# lowest CPU priority: they take the time the tests spend waiting on servers and timers and
# hardly any from a test that is busy, and CI has 30 minutes in all. Their output is shown
# once the tests have ended, and either failing fails the run; stopped meanwhile, the script
# stops them.
echo "[test] lint and format (beside the tests)"
checks="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$checks"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
nice -n 19 npx --no-install eslint --max-warnings=0 . >"$checks/lint" 2>&1 &
lint=$!
nice -n 19 npx --no-install prettier --check . >"$checks/format" 2>&1 &
format=$!

mapfile -t files < <(find libs services test tools -path '*/node_modules' -prune -o -path '*/dist/*' -name '*.test.js' -print | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test files found" >&2
  exit 1
fi
echo "[test] ${#files[@]} test files"
# One file at a time: integration tests start real servers and move gigabytes. A file that has
# not ended after 6 minutes (the slowest takes under 3) fails with its name instead of
# holding the run until CI's own limit. A file ends when its tests have: a handle something
# left open (a timer, a socket) must not hold it until that limit. Ended that way, a file's
# last results could be lost on their way to the runner, and with them its last tests, with
# no failure: flush-test-reports makes every process's stdout blocking first.
tests=0
node --enable-source-maps --import "$PWD/libs/testkit/dist/src/flush-test-reports.js" \
  --test --test-concurrency=1 --test-timeout=360000 --test-force-exit \
  --test-reporter=spec "${files[@]}" || tests=$?

failed=0
wait "$lint" || { echo "[test] lint failed:" >&2; cat "$checks/lint" >&2; failed=1; }
wait "$format" || { echo "[test] format check failed:" >&2; cat "$checks/format" >&2; failed=1; }
[ "$tests" -eq 0 ] || { echo "[test] tests failed" >&2; failed=1; }
exit "$failed"
