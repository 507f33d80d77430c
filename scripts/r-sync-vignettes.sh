#!/usr/bin/env bash
# The vignettes' source is the top-level vignettes/ folder; R CMD build wants
# them in r-pkg/vignettes/, so copy them there (r-pkg/vignettes is gitignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$root/r-pkg/vignettes"
mkdir -p "$root/r-pkg/vignettes"
cp "$root"/vignettes/*.Rmd "$root/r-pkg/vignettes/"
