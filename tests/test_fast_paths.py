"""The fast paths (chain kernels, multi-tensor buckets) give the per-parameter reference's numbers
and the same state, for every built-in optimizer; the step plan follows changes to params, grads,
groups and steppers; state does not grow. Runs on CUDA too when a GPU is present."""
import contextlib
import copy
import io
import os
from functools import partial

import pytest
import torch

import pyfastopt as po
from helpers import native_off, same_state
from optim_db import rows
from pyfastopt import kernels
from pyfastopt.recipe import recipe_for

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(3, 4), (5,), (2, 3, 3), (7,), (1,), (4, 6), (3,), (2, 2), (9,), (5, 1), (6,)] * 2

# the rows of the optimizer table (tests/optim_db.py) stepped on every mode
FACTORIES = {r.name: r for r in rows(
    "SGD", "SGD_mom", "SGD_mom_l2", "RMSProp", "RMSProp_mom", "Adam", "Adam_l2", "RAdam",
    "RAdam_l2", "RAdam_beta", "QHAdam", "Larc", "Larc_noclip_nomom", "Lamb", "Lion", "ranger")}
MODES = ("per_param", "generic", "fast", "flat_generic", "list_fused", "torch_fused")




def make_params(dtype, device, n_groups=2):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
          for s in SHAPES]
    ps.append(torch.randn(6, 4, generator=g, dtype=torch.float64).to(device, dtype).t())  # non-contiguous
    if n_groups == 1:
        return ps
    return [ps[:10], ps[10:]]


def flat(params):
    return [p for pl in params for p in pl] if isinstance(params[0], list) else list(params)


def set_mode(opt, mode):
    if mode == "per_param":
        opt.impl = "per_param"
    elif mode == "generic":              # the steppers on TensorLists, no kernel, no flat bucket
        opt.fused, opt.flatten = False, False
    elif mode == "flat_generic":         # the steppers on flat buckets
        opt.fused = False
    elif mode in ("list_fused", "torch_fused"):  # chain kernels on tensor lists
        opt.flatten = False                          # (torch_fused: with native kernels off)


def run(name, mode, dtype=torch.float64, device="cpu", steps=14, none_grad_every=7):
    if mode == "torch_fused":
        with native_off():
            return _run(name, mode, dtype, device, steps, none_grad_every)
    return _run(name, mode, dtype, device, steps, none_grad_every)


def _run(name, mode, dtype, device, steps, none_grad_every):
    params = make_params(dtype, device)
    opt = FACTORIES[name](params)
    set_mode(opt, mode)
    ps = flat(params)
    inner = getattr(opt, "opt", opt)
    inner.state[ps[0]]["do_wd"] = False
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        for j, p in enumerate(ps):
            if (i + j) % none_grad_every == 0 or (j == 3 and i % 3 == 0):
                p.grad = None
            else:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(device, dtype)
        opt.step()
    return ps, opt


def close(a, b, dtype):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_paths_agree(name, dtype, device):
    ref_ps, ref = run(name, "per_param", dtype, device)
    for mode in MODES[1:]:
        ps, opt = run(name, mode, dtype, device)
        for a, b in zip(ref_ps, ps):
            close(b, a, dtype)
        same_state(ref.state, ref_ps, opt.state, ps, lambda a, b: close(a, b, dtype),
                   strict_types=False)


def test_kernels_recognised():
    ps = [torch.randn(3)]
    # which chains torch has a fused kernel for: the recipe's FusedSpec, where it applies
    expect = {"Adam": "adam", "RAdam": "radam", "SGD_mom": "sgd", "SGD": None, "Lamb": None}
    for name, k in expect.items():
        opt = FACTORIES[name](ps)
        kernel = kernels.kernel_for(recipe_for(opt.cbs))
        assert (kernel and kernel.recipe.name) == k, name
    # Adam with an undampened square average: recognised, but torch's kernels always dampen
    cbs = [po.weight_decay, partial(po.average_grad, dampening=True),
           partial(po.average_sqr_grad, dampening=False), po.step_stat, po.adam_step]
    assert recipe_for(cbs).recipe.name == "adam" and kernels.kernel_for(recipe_for(cbs)) is None
    # a user chain that differs (undampened average_grad in an Adam-like chain) is not matched
    cbs = [po.weight_decay, po.average_grad, po.average_sqr_grad, po.step_stat, po.adam_step]
    assert recipe_for(cbs) is None
    cbs = [po.weight_decay, partial(po.average_grad, dampening=True), po.average_sqr_grad,
           po.step_stat, po.adam_step, po.sgd_step]
    assert recipe_for(cbs) is None


def test_kernel_runs_and_matches_fastai_numbers():
    "Adam's fused kernel actually runs, and gives the reference numbers (spec §3 formula)."
    p = torch.tensor([1., 2., 3.], dtype=torch.float64)
    opt = po.Adam([p], lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.)
    m = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    x = p.clone()
    for step in range(1, 4):
        g = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64) * step
        p.grad = g.clone()
        opt.step()
        assert opt._plan.buckets[0].kernel is not None
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        d1, d2 = po.debias(0.9, 0.1, step), po.debias(0.99, 0.01, step)
        x = x - 0.1 / d1 * m / ((v / d2).sqrt() + 1e-5)
    torch.testing.assert_close(p, x, rtol=1e-12, atol=1e-14)
    assert opt.state[p]["step"] == 3 and type(opt.state[p]["step"]) is int


def test_l2_reg_mutates_grad_like_fastai():
    for mode in MODES:
        p = torch.ones(3)
        p.grad = torch.full((3,), 0.1)
        opt = po.Adam([p], lr=0.1, wd=0.5, decouple_wd=False)
        set_mode(opt, mode)
        opt.step()
        torch.testing.assert_close(p.grad, torch.full((3,), 0.6))


def test_tensor_hyper_falls_back():
    ps1, ps2 = [torch.randn(4)], [torch.randn(4)]
    ps2[0].data.copy_(ps1[0])
    o1, o2 = po.Adam(ps1, lr=0.01), po.Adam(ps2, lr=0.01)
    o2.impl = "per_param"
    o1.set_hyper("lr", [torch.tensor(0.01)])
    for _ in range(3):
        for p in ps1 + ps2:
            p.grad = torch.ones(4)
        o1.step()
        o2.step()
    torch.testing.assert_close(ps1[0], ps2[0])


@pytest.mark.parametrize("name", ["Adam", "SGD_mom", "RAdam", "Lamb", "ranger"])
def test_state_dict_moves_between_paths(name):
    "Train on one path, checkpoint, load into another path: same numbers as never switching."
    for a, b in [("fast", "per_param"), ("per_param", "fast"), ("generic", "fast"),
                 ("flat_generic", "list_fused")]:
        ref_ps, ref = run(name, "per_param", steps=10)
        ps1, o1 = run(name, a, steps=6)
        buf = io.BytesIO()
        torch.save(o1.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
        ps2 = [p.detach().clone() for p in ps1]
        o2 = FACTORIES[name]([ps2[:10], ps2[10:]])
        o2.load_state_dict(sd)
        set_mode(o2, b)
        g = torch.Generator().manual_seed(1)
        # replay the grads of run(): regenerate the first 6 steps, then continue
        for i in range(10):
            grads = []
            for j, p in enumerate(ps2):
                grads.append(None if (i + j) % 7 == 0 or (j == 3 and i % 3 == 0) else
                             torch.randn(p.shape, generator=g, dtype=torch.float64))
            if i < 6:
                continue
            for p, gr in zip(ps2, grads):
                p.grad = gr
            o2.step()
        if name != "ranger":       # ranger's slow weights are not moved here
            for x, y in zip(ref_ps, ps2):
                close(y, x, torch.float64)


def test_flat_buckets_used_and_state_views():
    "After flatten_params() (and with no native kernel: fused off) many small params go to a"
    " flat bucket; their state entries are views of one flat buffer. Without it: no flat bucket."
    ps = [torch.randn(10) for _ in range(20)]
    for p in ps:
        p.grad = torch.randn(10)
    opt = po.Lamb(ps, lr=0.01)
    opt.fused = False
    opt.step()
    assert all(b.flat is None for b in opt._plan.buckets)     # no scratch copies without opt-in
    assert opt.flatten_params() == 20
    opt.step()
    assert len(opt._plan.buckets) == 1 and opt._plan.buckets[0].flat is not None
    opt.step()
    st = opt.state
    base = st[ps[0]]["grad_avg"]._base
    assert base is not None and all(st[p]["grad_avg"]._base is base for p in ps)
    opt.step()                                 # rebuilt from the views without copying
    assert opt._plan.buckets[0].state["grad_avg"][0] is base
    m = st[ps[5]]["grad_avg"].clone()
    opt.step()
    assert not torch.equal(st[ps[5]]["grad_avg"], m)


def test_state_objects_are_live():
    "`opt.state[p]` holds the tensors the fast path updates (read after a step: current values)."
    p = torch.randn(5)
    opt = po.Adam([p], lr=0.1)
    for _ in range(3):
        p.grad = torch.randn(5)
        opt.step()
    m = opt.state[p]["grad_avg"]
    before = m.clone()
    p.grad = torch.randn(5)
    opt.step()
    assert not torch.equal(m, before)          # the same object was updated in place
    assert opt.state[p]["grad_avg"] is m


def test_plan_follows_changes():
    ps = [torch.randn(4) for _ in range(3)]
    for p in ps:
        p.grad = torch.ones(4)
    opt = po.SGD(ps, lr=0.1, mom=0.9)
    opt.step()
    plan = opt._plan
    opt.step()
    assert opt._plan is plan                   # reused when nothing changed
    ps[1].grad = None                          # a grad goes away
    before = ps[1].clone()
    opt.step()
    assert opt._plan is not plan and torch.equal(ps[1], before)
    ps[1].grad = torch.ones(4)                 # comes back
    opt.step()
    assert not torch.equal(ps[1], before)
    new = torch.randn(4)
    new.grad = torch.ones(4)
    opt.add_param_group({"params": [new], "lr": 0.5})  # a group is added
    x = new.clone()
    opt.step()
    torch.testing.assert_close(new, x - 0.5 * 1.0)
    opt.param_groups[1]["params"] = []         # a group's params change
    opt.param_lists[1] = po.L([new])
    opt.step()
    plan = opt._plan
    opt.cbs = po.L([po.sgd_step])              # the steppers change
    y = ps[0].clone()
    opt.step()
    assert opt._plan is not plan
    torch.testing.assert_close(ps[0], y - 0.1)
    opt.set_hyper("lr", 0.2)                   # hypers are read every step, no rebuild needed
    y = ps[0].clone()
    opt.step()
    torch.testing.assert_close(ps[0], y - 0.2)


def test_no_state_growth():
    ps = [torch.randn(10) for _ in range(20)]
    for name in FACTORIES:
        opt = FACTORIES[name]([p.clone() for p in ps])
        qs = [p for pl in opt.param_lists for p in pl]
        for p in qs:
            p.grad = torch.randn(10)
        opt.step()
        opt.step()
        n1 = sum(len(s) for s in getattr(opt, "opt", opt).state.values())
        for _ in range(5):
            opt.step()
        n2 = sum(len(s) for s in getattr(opt, "opt", opt).state.values())
        assert n1 == n2, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", list(FACTORIES))
def test_cuda_no_sync_per_param(name):
    ps = [torch.randn(s, device="cuda") for s in SHAPES]
    opt = FACTORIES[name](ps)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()                                 # builds the plan and the state (may sync)
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("name", ["Adam", "RMSProp", "Lamb", "Larc", "QHAdam", "SGD_mom_l2"])
def test_flatten_params_opt_in(name, use_native):
    "After flatten_params() params and grads are views of flat buffers, trained through autograd,"
    " and the numbers are the per-param path's (native list kernels over the views, or a flat"
    " bucket when no native kernel runs)."
    if use_native and not po.native.available():
        pytest.skip("no native kernels (no C compiler)")
    ctx = contextlib.nullcontext() if use_native else native_off()
    with ctx:
        _flatten_params_opt_in(name, use_native)


def _flatten_params_opt_in(name, use_native):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(6)]) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(3, 6)
    opts = [FACTORIES[name](list(n.parameters())) for n in nets]
    opts[1].impl = "per_param"
    for n in nets:
        n(x).pow(2).sum().backward()
    assert opts[0].flatten_params() == 12
    for _ in range(6):
        for n, o in zip(nets, opts):
            o.step()
            o.zero_grad()
            n(x).pow(2).sum().backward()
        b0 = opts[0]._plan.buckets[0]
        if use_native:
            assert b0.flat is None and isinstance(b0.kernel, po.native.NativeKernel)
            ptrs = {q.untyped_storage().data_ptr() for q in nets[0].parameters()}
            assert len(ptrs) == 1                # params stay views of one buffer
        else:
            fb = b0.flat
            assert fb is not None and fb.p_is_view and fb.g_is_view
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    p = next(nets[0].parameters())             # replacing p.data is noticed
    p.data = p.data.clone()
    opts[0].step()
    assert opts[0]._plan.buckets[0].flat is None   # not views any more: a list bucket
