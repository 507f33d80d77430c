#!/usr/bin/env bash
# The main job, from a fresh clone: setup (idempotent), then render the vignettes to HTML (out/)
# and compare every value they print with the R documentation page, chunk by chunk.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
exec bash scripts/render-vignettes.sh "$@"
