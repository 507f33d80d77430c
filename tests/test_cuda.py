"""CUDA: every factory on CUDA gives the CPU results, keeps its state on the param's device, and
step() does not synchronise with the host (torch.cuda.set_sync_debug_mode("error"))."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import NONE_GRAD, NO_WD, clone_groups, make_problem, set_grads  # noqa: E402

from optim_db import rows  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# the rows of the optimizer table (tests/optim_db.py), each with its lr and half of it for the
# second group
FACTORIES = {r.name: (lambda g, row=r: row.make(g, lr=[row.kwargs["lr"], row.kwargs["lr"] / 2]))
             for r in rows("SGD", "SGD_mom", "SGD_mom_l2", "RMSProp", "RMSProp_mom", "Adam",
                           "Adam_l2", "RAdam", "RAdam_beta", "QHAdam", "Larc", "Larc_noclip",
                           "Larc_nomom", "Lamb", "Lion", "Lookahead_SGD", "ranger")}


def _run(name, device, n_steps, dtype=torch.float32):
    init, grads = make_problem(n_steps=n_steps, seed=99, dtype=dtype, device=device)
    groups = clone_groups(init)
    opt = FACTORIES[name](groups)
    opt.state[groups[NO_WD[0]][NO_WD[1]]]['do_wd'] = False
    for k in range(n_steps):
        set_grads(groups, grads[k])
        opt.step()
    return init, groups, opt


@pytest.mark.parametrize("name", list(FACTORIES))
def test_cuda_matches_cpu(name):
    _, gc, _ = _run(name, 'cpu', 10)
    init, gg, opt = _run(name, 'cuda', 10)
    for gi, (a, b) in enumerate(zip(gc, gg)):
        for pi, (x, y) in enumerate(zip(a, b)):
            assert y.device.type == 'cuda'
            if (gi, pi) == NONE_GRAD:
                assert torch.equal(y, init[gi][pi])
            torch.testing.assert_close(y.cpu(), x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_cuda_float64_matches_cpu(name):
    _, gc, _ = _run(name, 'cpu', 5, dtype=torch.float64)
    _, gg, _ = _run(name, 'cuda', 5, dtype=torch.float64)
    for a, b in zip(gc, gg):
        for x, y in zip(a, b):
            torch.testing.assert_close(y.cpu(), x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_cuda_state_on_device(name):
    _, gg, opt = _run(name, 'cuda', 3)
    for grp in gg:
        for p in grp:
            for k, v in opt.state[p].items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    assert v.device == p.device, k
                    assert v.dtype == p.dtype, k
    if hasattr(opt, 'slow_weights') and opt.slow_weights is not None:
        for sg in opt.slow_weights:
            for s in sg:
                assert s.device.type == 'cuda'


@pytest.mark.parametrize("name", list(FACTORIES))
def test_cuda_step_no_host_sync(name):
    n = 3
    init, grads = make_problem(n_steps=n, seed=7, device='cuda')
    # CPU copies taken first (l2_reg mutates p.grad in place) and device clones made outside the
    # sync-checked region, so the region holds only grad assignment and opt.step()
    cpu_grads = [[[None if g is None else g.cpu().clone() for g in gg] for gg in step] for step in grads]
    dev_grads = [[[None if g is None else g.clone() for g in gg] for gg in step] for step in grads]
    groups = clone_groups(init)
    opt = FACTORIES[name](groups)
    opt.state[groups[NO_WD[0]][NO_WD[1]]]['do_wd'] = False
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for k in range(n):
            for grp, gg in zip(groups, dev_grads[k]):
                for p, g in zip(grp, gg):
                    p.grad = g
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    # and it computed the same as a CPU run on the same data
    cg = clone_groups([[p.cpu() for p in g] for g in init])
    copt = FACTORIES[name](cg)
    copt.state[cg[NO_WD[0]][NO_WD[1]]]['do_wd'] = False
    for k in range(n):
        set_grads(cg, cpu_grads[k])
        copt.step()
    for a, b in zip(cg, groups):
        for x, y in zip(a, b):
            torch.testing.assert_close(y.cpu(), x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ['SGD_mom', 'Adam', 'RAdam', 'Lamb', 'Larc', 'ranger'])
def test_cuda_low_precision(name, dtype):
    _, g32, _ = _run(name, 'cuda', 3)
    init, glp, opt = _run(name, 'cuda', 3, dtype=dtype)
    for a, b in zip(g32, glp):
        for x, y in zip(a, b):
            assert y.dtype == dtype
            assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", ["Adam", "Lamb", "Larc", "ranger"])
def test_cuda_fsdp2_steps_on_shards(name, tmp_path):
    """FSDP2 on one GPU (NCCL, one rank): the DTensor params step on their shards, give what the
    same optimizer gives on the plain model, and the step does not synchronise with the host."""
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import pyfastopt as po
    if not dist.is_nccl_available():
        pytest.skip("no NCCL")
    make = {"Adam": lambda ps: po.Adam(ps, lr=1e-2, wd=0.01),
            "Lamb": lambda ps: po.Lamb(ps, lr=1e-2, wd=0.01),
            "Larc": lambda ps: po.Larc(ps, lr=0.1),
            "ranger": lambda ps: po.ranger(ps, lr=1e-2, k=2)}[name]
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ref = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)]).cuda()
        model = copy.deepcopy(ref)
        for m in model:
            fully_shard(m)
        fully_shard(model)
        sharded, plain = make(list(model.parameters())), make(list(ref.parameters()))
        x = torch.randn(8, 16, device="cuda")
        for i in range(5):
            for m, opt in ((model, sharded), (ref, plain)):
                opt.zero_grad()
                m(x).pow(2).mean().backward()
                if i and opt is sharded:        # after the first step (state made)
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    opt.step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        inner = sharded.opt if isinstance(sharded, po.Lookahead) else sharded
        assert inner._plan.buckets and all(b.shards is not None for b in inner._plan.buckets)
        for a, b in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(a.full_tensor(), b.detach(), rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()
