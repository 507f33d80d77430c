#!/usr/bin/env bash
# CUDA check for issue 4, < 8 minutes on one GPU: the fast-path tests on CUDA (every optimizer,
# no host sync per step under torch.cuda.set_sync_debug_mode("error")), then Adam on 100M fp32
# params against the HBM-bandwidth floor (28 B/param over a measured device copy) and torch fused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
timeout 300 "$PY" -m pytest tests/test_fast_paths.py -q -x
timeout 180 "$PY" bench/bench_gpu.py "$@"
