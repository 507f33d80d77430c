"""`zero_grad(set_to_none=True)` (torch's, Accelerate's and the Trainer's default) gives every
param a new grad tensor each step: the plan is kept and re-pointed at them (no rebuild), the
numbers are the per-param reference's, and the old grads are let go in `zero_grad` itself."""
import gc
import weakref

import pytest
import torch

import pyfastopt as po
from helpers import native_off
from test_fast_paths import FACTORIES, close, same_state

MODES = ["fast", "torch_fused", "generic"]


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _train(name, mode, steps=8):
    net = _net()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    opt = FACTORIES[name](list(net.parameters()))
    inner = getattr(opt, "opt", opt)
    if mode == "per_param":
        inner.impl = "per_param"
    elif mode == "generic":
        inner.fused = False
    plans = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        opt.step()
        plans.append(inner._plan)
    return list(net.parameters()), opt, plans


@pytest.mark.parametrize("name", list(FACTORIES))
def test_new_grads_keep_the_plan_and_the_numbers(name):
    ref_ps, ref, _ = _train(name, "per_param")
    for mode in MODES:
        if mode == "torch_fused":
            with native_off():
                ps, opt, plans = _train(name, mode)
        else:
            ps, opt, plans = _train(name, mode)
        assert plans[0] is not None and all(p is plans[0] for p in plans), mode   # never rebuilt
        for a, b in zip(ref_ps, ps):
            close(b, a, torch.float32)
        same_state(ref.state, ref_ps, opt.state, ps,
                   lambda a, b: close(a, b, torch.float32), strict_types=False)


def test_old_grads_are_freed_in_zero_grad():
    net = _net()
    opt = po.Adam(list(net.parameters()), lr=1e-2)
    net(torch.randn(2, 6)).sum().backward()
    opt.step()
    old = weakref.ref(net[0].weight.grad)
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert old() is None                    # the plan holds no grad after set_to_none


def test_changed_grad_layout_rebuilds_and_stays_right():
    ps = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref = po.Adam(ps, lr=0.1), po.Adam(qs, lr=0.1)
    ref.impl = "per_param"
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        grads = [torch.randn(4, 3, generator=g) for _ in ps]
        opt.zero_grad(set_to_none=True)
        for p, q, gr in zip(ps, qs, grads):
            # step 2: a non-contiguous grad (a transposed view) for param 0
            p.grad = gr.t().contiguous().t() if i == 2 and p is ps[0] else gr.clone()
            q.grad = gr.clone()
        plan = opt._plan
        opt.step()
        ref.step()
        if i == 1:
            assert opt._plan is plan        # new, alike grads: re-pointed
        elif i == 2:
            assert opt._plan is not plan    # the native bucket cannot take a strided grad
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    opt.zero_grad(set_to_none=True)
    ps[0].grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
