#!/usr/bin/env bash
# Render the vignettes (vignettes/*.Rmd) to HTML under out/html (or
# $PYFASTOPT_OUT/html) with the R
# package installed from r-pkg/ into out/Rlib, then compare what every chunk of
# optimizer.Rmd printed with the reference page (scripts/r-compare-chunks.R).
# Needs R (scripts/setup.sh) and the project's Python (.venv, or
# RETICULATE_PYTHON). Exit status 1 names each chunk that differs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RETICULATE_PYTHON=${RETICULATE_PYTHON:-$root/.venv/bin/python}
[ -x "$RETICULATE_PYTHON" ] || { echo "render-vignettes: no Python at $RETICULATE_PYTHON (run scripts/setup.sh)" >&2; exit 1; }
out=${PYFASTOPT_OUT:-$root/out}
lib=$out/Rlib
mkdir -p "$lib"
if ! PYFASTOPT_VIGNETTES=0 bash "$root/scripts/r-install.sh" "$lib" >"$out/r-install.log" 2>&1; then
  cat "$out/r-install.log" >&2; exit 1
fi
export R_LIBS="$lib${R_LIBS:+:$R_LIBS}"
export PYFASTOPT_REQUIRE_PYTHON=1
rm -rf "$out/chunks" "$out/html"
mkdir -p "$out/chunks" "$out/html"
for rmd in "$root"/vignettes/*.Rmd; do
  name=$(basename "$rmd" .Rmd)
  work=$(mktemp -d)
  cp "$rmd" "$work/"
  start=$(date +%s%N)
  PYFASTOPT_CHUNK_OUT="$out/chunks/$name" Rscript -e \
    "rmarkdown::render('$work/$name.Rmd', output_dir = '$out/html', intermediates_dir = '$work', quiet = TRUE)"
  end=$(date +%s%N)
  rm -rf "$work"
  ms=$(( (end - start) / 1000000 ))
  printf 'rendered %s -> %s/html/%s.html in %d.%03d s\n' "$name" "$out" "$name" $((ms / 1000)) $((ms % 1000))
done
ref=""
for c in "$root/shared/reference/000_9c18b15ab63a52c6.txt" "$root/../shared/reference/000_9c18b15ab63a52c6.txt"; do
  if [ -f "$c" ]; then ref=$c; break; fi
done
Rscript "$root/scripts/r-compare-chunks.R" "$root/vignettes" "$out/chunks" "$out/html" "$ref"
