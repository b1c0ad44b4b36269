#!/usr/bin/env bash
# Set up (if needed) and start the studio on http://127.0.0.1:7860 (the offline digits set is the default).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python app.py "$@"
