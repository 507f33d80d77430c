#!/usr/bin/env bash
# Install the R package from r-pkg/ into a library folder (default out/Rlib,
# gitignored), so nothing outside the checkout is written.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib=${1:-$root/out/Rlib}
mkdir -p "$lib"
R CMD INSTALL --no-multiarch -l "$lib" "$root/r-pkg"
