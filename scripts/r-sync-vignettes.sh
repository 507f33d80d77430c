#!/usr/bin/env bash
# Prepare r-pkg/ for R CMD build: the vignettes' source is the top-level vignettes/ folder and
# R CMD build wants them in r-pkg/vignettes/; the Python package is bundled into
# r-pkg/inst/python/ (r-pkg/tools/bundle-python.sh). Both copies are gitignored.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$root/r-pkg/vignettes"
mkdir -p "$root/r-pkg/vignettes"
cp "$root"/vignettes/*.Rmd "$root/r-pkg/vignettes/"
(cd "$root/r-pkg" && sh tools/bundle-python.sh)
