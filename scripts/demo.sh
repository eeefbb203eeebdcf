#!/usr/bin/env bash
# Set up and run the demo (the main job) on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tierstream demo "$@"
