#!/usr/bin/env bash
# Runs every test of Tutti against the real components, installing what is missing first.
# Extra arguments go to pytest (e.g. ./test.sh -k journal).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo
.venv/bin/ruff check .
(cd clients && node --test test/*.test.js)
exec .venv/bin/pytest "$@"
