#!/usr/bin/env bash
# CUDA check for issues 4 and 7, < 8 minutes on one GPU: the CUDA tests (every optimizer on CUDA
# against CPU, state on the device, no host sync per step under
# torch.cuda.set_sync_debug_mode("error"), FSDP2 on one GPU stepping on the shards) and the
# fast-path tests, then Adam on 100M fp32 params against the HBM-bandwidth floor (28 B/param over
# a measured device copy) and torch fused.
# Uses .venv/bin/python when there is one, else python3 with this checkout on PYTHONPATH (a GPU
# machine's own CUDA build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(), torch.__version__)'
timeout 300 "$PY" -m pytest tests/test_cuda.py tests/test_fast_paths.py -q -x -p no:cacheprovider
timeout 180 "$PY" bench/bench_gpu.py "$@"
