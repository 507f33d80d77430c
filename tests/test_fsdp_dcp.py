"""FSDP2 + DCP, 2 gloo processes on CPU: `get_optimizer_state_dict` of sharded (DTensor) state
(also flattened, for ranger), `dcp.save`, then a fresh sharded model and optimizer, `dcp.load`,
`set_optimizer_state_dict`: the resumed run equals the uninterrupted one bit for bit."""
import os
import sys

import pytest
import torch
import torch.distributed as dist

import pyfastopt as po
from dist_helpers import run_ranks, train_steps

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="no torch.distributed")

OPTS = {
    "Adam": lambda ps: po.Adam(ps, lr=0.01, wd=0.01),
    "SGD_mom": lambda ps: po.SGD(ps, lr=0.05, mom=0.9),
    "Larc": lambda ps: po.Larc(ps, lr=0.1),
    "Lamb": lambda ps: po.Lamb(ps, lr=0.01),
    "ranger": lambda ps: po.ranger(ps, lr=0.01, k=3),
    # DCP's flattened layout: each param's entry rebuilt from the keys `opt.state[p]` shows
    "ranger_flat": lambda ps: po.ranger(ps, lr=0.01, k=3),
    "OptimWrapper": lambda ps: po.OptimWrapper(ps, torch.optim.AdamW, lr=0.01),
}
BEFORE, AFTER = 2, 3


def _sharded():
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 6),
                                torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m)
    fully_shard(model)
    return model


def _worker(rank, world, init_file, out_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 7, generator=g), torch.randn(8, 3, generator=g)
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        out = {}
        for name, make in OPTS.items():
            opts = StateDictOptions(flatten_optimizer_state_dict=name.endswith("_flat"))
            m1 = _sharded()
            o1 = make(list(m1.parameters()))
            train_steps(m1, o1, xs, ys, BEFORE + AFTER)
            m2 = _sharded()
            o2 = make(list(m2.parameters()))
            train_steps(m2, o2, xs, ys, BEFORE)
            ckpt = os.path.join(out_dir, name)
            dcp.save({"model": m2.state_dict(),
                      "optim": get_optimizer_state_dict(m2, o2, options=opts)},
                     checkpoint_id=ckpt)
            m3 = _sharded()
            o3 = make(list(m3.parameters()))
            target = {"model": m3.state_dict(),
                      "optim": get_optimizer_state_dict(m3, o3, options=opts)}
            dcp.load(target, checkpoint_id=ckpt)
            m3.load_state_dict(target["model"])
            set_optimizer_state_dict(m3, o3, target["optim"], options=opts)
            train_steps(m3, o3, xs, ys, AFTER)
            out[name] = all(torch.equal(a.full_tensor(), b.full_tensor())
                            for a, b in zip(m1.parameters(), m3.parameters()))
        torch.save(out, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp_dcp")
    run_ranks(_worker, d, "FSDP + DCP")
    return [torch.load(d / f"{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(OPTS))
def test_fsdp2_dcp_resume_equals_uninterrupted(results, name):
    assert results[0][name] and results[1][name]
