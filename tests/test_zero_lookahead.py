"""ZeroRedundancyOptimizer with `optimizer_class=ranger` (Lookahead over RAdam): consolidated,
saved and loaded into a fresh one, the run resumes exactly where the uninterrupted one goes —
Lookahead's count and slow weights travel in each param's state entry. 2 gloo processes, CPU."""
import os
import sys

import pytest
import torch
import torch.distributed as dist

import pyfastopt as po
from dist_helpers import run_ranks, train_steps

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="no torch.distributed")
BEFORE, AFTER = 2, 3            # k=3: the sync falls after the resume, at the count carried


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6),
                               torch.nn.Tanh(), torch.nn.Linear(6, 3))


def _zero(model):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=po.ranger, lr=1e-2, k=3)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        DDP = torch.nn.parallel.DistributedDataParallel
        m1 = _model()
        d1 = DDP(m1)
        o1 = _zero(d1)
        train_steps(d1, o1, xs, ys, BEFORE + AFTER)               # uninterrupted
        m2 = _model()
        d2 = DDP(m2)
        o2 = _zero(d2)
        train_steps(d2, o2, xs, ys, BEFORE)
        o2.consolidate_state_dict(to=0)
        path = os.path.join(out_dir, "ckpt.pt")
        if rank == 0:
            torch.save({"model": m2.state_dict(), "opt": o2.state_dict()}, path)
        dist.barrier()
        ck = torch.load(path, weights_only=True)
        m3 = _model()
        m3.load_state_dict(ck["model"])
        d3 = DDP(m3)
        o3 = _zero(d3)
        o3.load_state_dict(ck["opt"])
        train_steps(d3, o3, xs, ys, AFTER)
        torch.save({"uninterrupted": [p.detach() for p in m1.parameters()],
                    "resumed": [p.detach() for p in m3.parameters()]},
                   os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_zero_with_ranger_resumes_bit_for_bit(tmp_path):
    run_ranks(_worker, tmp_path, "ZeRO")
    for r in range(2):
        out = torch.load(tmp_path / f"{r}.pt")
        for a, b in zip(out["resumed"], out["uninterrupted"]):
            assert torch.equal(a, b)


def test_lookahead_state_dict_regrouped_by_param_resumes():
    # a tool that keeps only `state` and `param_groups` (as ZeRO's consolidation and DCP do)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))

    def run(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    m1 = _model()
    o1 = po.ranger(m1.parameters(), lr=1e-2, k=3)
    run(m1, o1, 5)
    m2 = _model()
    o2 = po.ranger(m2.parameters(), lr=1e-2, k=3)
    run(m2, o2, 2)
    sd = o2.state_dict()
    assert sd["state"][0]["lookahead_count"] == 2
    assert sd["state"][0]["lookahead_slow"] is o2.slow_weights[0][0]
    kept = {"state": sd["state"], "param_groups": sd["param_groups"]}
    m3 = _model()
    m3.load_state_dict(m2.state_dict())
    o3 = po.ranger(m3.parameters(), lr=1e-2, k=3)
    o3.load_state_dict(kept)
    p = next(m3.parameters())
    assert o3.count == 2
    assert "lookahead_slow" not in o3.opt.state[p]       # the wrapped optimizer holds none
    assert o3.state[p]["lookahead_slow"] is o3.slow_weights[0][0]   # Lookahead's view shows it
    assert "lookahead_slow" in kept["state"][0]          # the caller's dict is left alone
    run(m3, o3, 3)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)
