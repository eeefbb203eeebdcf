#!/usr/bin/env bash
# Set up and run the test suite against the real Redis and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/setup.sh
exec .venv/bin/pytest "$@"
