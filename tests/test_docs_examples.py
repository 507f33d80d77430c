"""The FSDP2 + DCP example of docs/distributed.md runs as written, with torchrun and 2 gloo
processes, and its checkpoint restores what it saved."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="no torch.distributed")

# spliced in before the example's `dcp.load`: forget what was trained, as a new job would not
# have it (and clear_state() as fastai's Learner.create_opt does), so the load must bring it back;
# and after `set_state_dict`: check that it did
FORGET = '''
want_params = [p.full_tensor().clone() for p in model.parameters()]
want_count, want_slow = opt.count, [s.full_tensor().clone() for sl in opt.slow_weights for s in sl]
with torch.no_grad():
    for p in model.parameters():
        p.zero_()
opt.zero_grad(set_to_none=True)
opt.clear_state()
'''
CHECK = '''
assert opt.count == want_count == 4, (opt.count, want_count)
for p, w in zip(model.parameters(), want_params):
    assert torch.equal(p.full_tensor(), w)
for s, w in zip((s for sl in opt.slow_weights for s in sl), want_slow):
    assert torch.equal(s.full_tensor(), w)
assert all(type(v).__name__ == "DTensor" for st in opt.opt.state.values() for v in st.values()
           if hasattr(v, "ndim") and v.ndim)
print("restored", dist.get_rank())
'''


def _example():
    text = (ROOT / "docs" / "distributed.md").read_text()
    code = re.search(r"## FSDP2 \+ DCP: a working example\n\n```python\n(.*?)```", text, re.S).group(1)
    load = "model_sd, optim_sd = get_state_dict(model, opt)\nstate ="
    restored = "optim_state_dict=state[\"optim\"])\n"
    assert code.count(load) == 1 and code.count(restored) == 1, "the example changed: update this test"
    return code.replace(load, FORGET + load).replace(restored, restored + CHECK)


def test_fsdp2_dcp_example_runs_and_restores(tmp_path):
    (tmp_path / "train.py").write_text(_example())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "train.py"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(re.findall(r"restored (\d)", r.stdout)) == ["0", "1"]
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(os.listdir(tmp_path / "ckpt"))
