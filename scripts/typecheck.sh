#!/usr/bin/env bash
# mypy over the tierstream namespace. The layers live in top-level folders that
# setuptools maps into tierstream.*; mypy does not follow that mapping, so we
# check a tree of symlinks that has the installed shape.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/tierstream"
for f in tierstream/*.py; do ln -s "$root/$f" "$tree/tierstream/$(basename "$f")"; done
for d in schemas producers processors sinks; do ln -s "$root/$d" "$tree/tierstream/$d"; done
cd "$tree"
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" -p tierstream
