"""FSDP2 (`torch.distributed.fsdp.fully_shard`: the params become DTensors sharded over 2 gloo
processes on CPU): every optimizer, Lookahead and ranger included, steps them with its default
settings and ends where a single process training the unsharded model ends (1e-5)."""
import os
import sys

import pytest
import torch
import torch.distributed as dist

import pyfastopt as po
from dist_helpers import run_ranks, train_steps

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="no torch.distributed")

STEPS = 7                       # ranger's Lookahead (k=6) syncs once
OPTS = {
    "SGD": lambda ps: po.SGD(ps, lr=0.05),
    "SGD_mom_l2": lambda ps: po.SGD(ps, lr=0.05, mom=0.9, wd=0.01, decouple_wd=False),
    "RMSProp": lambda ps: po.RMSProp(ps, lr=0.01, mom=0.9, wd=0.01),
    "Adam": lambda ps: po.Adam(ps, lr=0.01, wd=0.01),
    "RAdam": lambda ps: po.RAdam(ps, lr=0.01, wd=0.01),
    "QHAdam": lambda ps: po.QHAdam(ps, lr=0.01),
    "Larc": lambda ps: po.Larc(ps, lr=0.1, wd=0.01),
    "Larc_noclip": lambda ps: po.Larc(ps, lr=0.1, clip=False),
    "Lamb": lambda ps: po.Lamb(ps, lr=0.01, wd=0.01),
    "Lion": lambda ps: po.Lion(ps, lr=1e-3),
    "ranger": lambda ps: po.ranger(ps, lr=0.01),
    "Lookahead_SGD": lambda ps: po.Lookahead(po.SGD(ps, lr=0.05, mom=0.9), k=3),
}


def _model():
    torch.manual_seed(0)
    # 10 params; odd sizes so that some shards are uneven
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 6),
                               torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 7, generator=g), torch.randn(8, 3, generator=g)


def _worker(rank, world, init_file, out_dir):
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        x, y = _data()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        out = {}
        for name, make in OPTS.items():
            model = _model()
            for m in model:
                if isinstance(m, torch.nn.Linear):
                    fully_shard(m)
            fully_shard(model)
            assert all(type(p).__name__ == "DTensor" for p in model.parameters())
            opt = make(list(model.parameters()))
            train_steps(model, opt, xs, ys, STEPS)
            out[name] = [p.full_tensor().detach() for p in model.parameters()]
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "fsdp.pt"))
        dist.barrier()          # both ranks done before gloo is torn down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    run_ranks(_worker, d, "FSDP")
    return torch.load(d / "fsdp.pt")


@pytest.mark.parametrize("name", list(OPTS))
def test_fsdp2_matches_one_process(fsdp_results, name):
    model = _model()
    assert len(list(model.parameters())) >= 8
    opt = OPTS[name](list(model.parameters()))
    x, y = _data()
    train_steps(model, opt, x, y, STEPS)     # equal shards + mean loss: FSDP's averaged grad = full batch
    for got, want in zip(fsdp_results[name], model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
