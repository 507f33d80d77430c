#!/usr/bin/env bash
# Document (roxygen2), build and check the R package in r-pkg/.
#   1. roxygen2::roxygenise() regenerates NAMESPACE and man/;
#   2. the vignettes are copied from vignettes/ into r-pkg/vignettes/;
#   3. R CMD build (which knits the vignettes, so it runs Python) and
#      R CMD check --no-manual (examples, tests, vignettes) in out/check/.
# Fails when the check has an ERROR or a WARNING (NOTEs are listed).
# Python: RETICULATE_PYTHON, else the project's .venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RETICULATE_PYTHON=${RETICULATE_PYTHON:-$root/.venv/bin/python}
[ -x "$RETICULATE_PYTHON" ] || { echo "r-check: no Python at $RETICULATE_PYTHON (run scripts/setup.sh)" >&2; exit 1; }
# the tests and vignettes must not skip for lack of Python here
export PYFASTOPT_REQUIRE_PYTHON=1
# offline machine: no time server to ask, no CRAN to look up
export _R_CHECK_FUTURE_FILE_TIMESTAMPS_=FALSE _R_CHECK_CRAN_INCOMING_=FALSE _R_CHECK_CRAN_INCOMING_REMOTE_=FALSE
export NOT_CRAN=true

(cd r-pkg && Rscript -e 'roxygen2::roxygenise()' >/dev/null)
if ! git diff --quiet -- r-pkg/NAMESPACE r-pkg/man 2>/dev/null; then
  echo "r-check: note: roxygen2 changed r-pkg/NAMESPACE or r-pkg/man (commit them)" >&2
fi
bash scripts/r-sync-vignettes.sh

out=${PYFASTOPT_OUT:-$root/out}/check
rm -rf "$out"; mkdir -p "$out"
cd "$out"
t0=$(date +%s)
R CMD build "$root/r-pkg" > build.log 2>&1 || { cat build.log; exit 1; }
tarball=$(ls pyfastopt_*.tar.gz)
t1=$(date +%s)
status=0
R CMD check --no-manual "$tarball" > check.log 2>&1 || status=$?
t2=$(date +%s)
log=pyfastopt.Rcheck/00check.log
grep -E "^\* checking .*\.\.\. (NOTE|WARNING|ERROR)" -A8 "$log" || true
tail -n 3 "$log"
echo "r-check: build $((t1 - t0)) s, check $((t2 - t1)) s; log in $out/$log"
if [ $status -ne 0 ] || grep -qE "^Status: .*(WARNING|ERROR)" "$log"; then
  echo "r-check: FAILED" >&2
  [ -f pyfastopt.Rcheck/tests/testthat.Rout.fail ] && tail -n 40 pyfastopt.Rcheck/tests/testthat.Rout.fail >&2
  exit 1
fi
echo "r-check: OK (no ERROR, no WARNING)"
