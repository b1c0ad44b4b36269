#!/usr/bin/env bash
# Create .venv and install the pinned requirements (skipped when they have not changed).
# Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
req=requirements.txt
[ "${1:-}" = dev ] && req=requirements-dev.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.installed-$(cat requirements*.txt "$req" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, torchvision, gradio, diskcache" # fail here, not later, if an install broke
  touch "$stamp"
fi
