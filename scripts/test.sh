#!/usr/bin/env bash
# Every test, from a fresh clone: setup (idempotent), then pytest over tests/ — the Python suite,
# and the R package check, testthat tests and vignette comparison that tests/ drives through R.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
