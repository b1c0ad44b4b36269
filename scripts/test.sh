#!/usr/bin/env bash
# Set up (if needed) and run the tests. `.ci/run` runs exactly this, with no argument: the whole suite.
#   scripts/test.sh           everything (the browser tests drive Debian's Chromium)
#   scripts/test.sh quick     the unmarked tests only, two at a time: the loop to run while coding (under 2 minutes)
#   scripts/test.sh ARGS...   pytest ARGS (e.g. -k ownership, -m browser)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
# Torch threads of tests and of the processes they start share the cores: waiting threads must sleep, not
# spin (spinning threads make a 2-core machine many times slower; docs/scaling.md). Yours wins.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "${1:-}" = quick ]; then
  shift
  exec .venv/bin/python -m pytest -q -n 2 -m "not slow and not browser and not ray and not bench and not cuda" "$@"
fi
# Browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "warning: could not install chromium; browser tests will fail in CI" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
