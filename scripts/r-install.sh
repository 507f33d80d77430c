#!/usr/bin/env bash
# Install the R package from r-pkg/ into a library folder (default out/Rlib, gitignored), so
# nothing outside the checkout is written unless asked. The Python package is bundled into it
# (r-pkg/tools/bundle-python.sh). When the Python side works (RETICULATE_PYTHON, else the
# project's .venv), the package is built first with R CMD build, which knits the vignettes, so
# vignette("optimizer", package = "pyfastopt") works; PYFASTOPT_VIGNETTES=0 skips that.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib=${1:-$root/out/Rlib}
mkdir -p "$lib"
lib=$(cd "$lib" && pwd)
bash "$root/scripts/r-sync-vignettes.sh"
py=${RETICULATE_PYTHON:-$root/.venv/bin/python}
if [ "${PYFASTOPT_VIGNETTES:-1}" != 0 ] && [ -x "$py" ] \
    && env -u PYTHONHOME -u PYTHONPATH "$py" -c 'import torch, pyfastopt' >/dev/null 2>&1; then
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  (cd "$build" && RETICULATE_PYTHON=$py R CMD build "$root/r-pkg")
  R CMD INSTALL --no-multiarch -l "$lib" "$build"/pyfastopt_*.tar.gz
else
  echo "r-install: installing without vignettes (no Python side to knit them with)"
  R CMD INSTALL --no-multiarch -l "$lib" "$root/r-pkg"
fi
