#!/usr/bin/env bash
# Idempotent setup for a fresh machine: R from Debian (WITH_R=1, the default), then a project venv
# (.venv) with torch 2.13.0, pyfastopt (editable) and the test tools; rpy2 only with R, since it
# builds against R's headers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
if [ "${WITH_R:-1}" = 1 ]; then
  need=()
  for p in r-base-core r-base-dev r-cran-reticulate r-cran-testthat r-cran-knitr \
           r-cran-rmarkdown r-cran-magrittr r-cran-roxygen2 pandoc; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch first, pinned, so the range in pyproject.toml installs nothing more (a bare range would
# download a multi-GB CUDA build).
if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
  "$VPY" -m pip install -q -c constraints.txt torch==2.13.0
fi
# the extras: test tools, the training frameworks of tests/test_frameworks.py (WITH_FRAMEWORKS=0
# leaves them out; ~90 s, ~0.25 GB), and rpy2 with R; constraints.txt keeps torch at 2.13.0
extras=test
[ "${WITH_FRAMEWORKS:-1}" = 1 ] && extras=$extras,frameworks
[ "${WITH_R:-1}" = 1 ] && extras=$extras,r
check='import pyfastopt, pytest, numpy; pyfastopt.Optimizer'
[ "${WITH_FRAMEWORKS:-1}" = 1 ] && check="$check; import lightning, accelerate, transformers"
[ "${WITH_R:-1}" = 1 ] && check="$check; import rpy2"
if ! "$VPY" -c "$check" >/dev/null 2>&1; then
  "$VPY" -m pip install -q -c constraints.txt -e ".[$extras]"
fi
