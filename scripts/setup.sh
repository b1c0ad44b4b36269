#!/usr/bin/env bash
# Create .venv, install the pinned requirements (the lock) and the project itself (editable, with the `pdd`
# command); skipped when nothing changed. Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
req=requirements.txt
[ "${1:-}" = dev ] && req=requirements-dev.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.installed-$(cat requirements*.txt "$req" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req" 2>&1 | grep -v "is ignored" || true
  # the project on top of the lock: no dependency is resolved again (--no-deps), no build download
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  .venv/bin/python -c "import torch, torchvision, gradio, diskcache, pdd_engine" # fail here, not later, if an install broke
  touch "$stamp"
fi
