"""Generic tests over every row of the optimizer table (`optim_db.py`): the paths agree, the state
lives on the param's device and dtype, each bucket gets the kernel the row expects, checkpoints
resume bit for bit, deepcopy, zero_grad, torch's LR schedulers, step hooks, and the checks of
every hyper. CUDA rows run only with a GPU. (Every row with a float64 reference is checked against
it in test_steppers_math.py.)"""
import copy
import io
import math
import re

import pytest
import torch

from helpers import RefOptimizer, close_scaled, same_state
from optim_db import (FASTAI_ROWS, FLAT, FLOATS, HALVES, MULTI_TENSOR, NATIVE, PER_PARAM, ROWS,
                      inner, set_path)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU")

# two groups of small params (9 and 10: enough for a flat bucket each), one of them without a grad
# ever, one with do_wd=False (a bucket of its own)
SHAPES = [[(3, 4), (5,), (), (2, 3, 2), (7,), (1,), (4, 4), (6,), (2, 5)],
          [(3,), (4, 2), (5, 1), (9,), (2, 2, 2), (3, 3), (1, 6), (8,), (2,), (4,)]]
NONE_GRAD = (1, 9)
NO_WD = (0, 1)
STEPS = 7


def make_params(dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[(1 + torch.rand(s, generator=gen, dtype=torch.float64)).mul_(
                torch.where(torch.rand(s, generator=gen, dtype=torch.float64) < .5, -1., 1.))
             .to(device=device, dtype=dtype) for s in group] for group in SHAPES]


def make_grads(dtype, device="cpu", steps=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        out.append([[None if (gi, pi) == NONE_GRAD else
                     torch.randn(s, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
                     for pi, s in enumerate(group)] for gi, group in enumerate(SHAPES)])
    return out


def flat_list(groups):
    return [p for g in groups for p in g]


def set_grads(groups, grads):
    "The next step's grads, copied into the grads there are (after flatten_params(): views)."
    for group, gs in zip(groups, grads):
        for p, g in zip(group, gs):
            if g is None:
                p.grad = None
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)


def build(row, groups, path=NATIVE):
    opt = row.make(groups)
    if row.fastai_api:
        lr = opt.hypers[0]["lr"]
        opt.set_hyper("lr", [lr / 2, lr])           # the groups differ
        opt.state[groups[NO_WD[0]][NO_WD[1]]]["do_wd"] = False
        set_path(opt, path)
    return opt


def run(row, dtype, path=NATIVE, device="cpu", steps=STEPS, opt=None, groups=None, grads=None,
        start=0):
    groups = make_params(dtype, device) if groups is None else groups
    grads = make_grads(dtype, device) if grads is None else grads
    opt = build(row, groups, path) if opt is None else opt
    for i in range(start, steps):
        set_grads(groups, grads[i])
        if path == FLAT and i == start:
            assert inner(opt).flatten_params() > 0
        opt.step()
    return groups, opt


def backends(opt):
    return [b.backend for b in inner(opt)._plan.buckets]


def ids(rows):
    return [r.name for r in rows]


# ---- the paths agree ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("row", FASTAI_ROWS, ids=ids(FASTAI_ROWS))
def test_paths_agree(row, dtype):
    "per_param, the chain on TensorLists (kernels off), native and flat: the same params and"
    " state, within 1e-6 (float32) / 1e-12 (float64) relative."
    ref_groups, ref = run(row, dtype, PER_PARAM)
    ref_ps = flat_list(ref_groups)

    def close(a, b):
        close_scaled(a, b, dtype)
    for path in row.paths:
        if path == PER_PARAM:
            continue
        groups, opt = run(row, dtype, path)
        got = backends(opt)
        if path == MULTI_TENSOR:
            assert set(got) == {"chain"} and all(b.flat is None for b in inner(opt)._plan.buckets)
        elif path == FLAT:
            assert any(b.flat is not None for b in inner(opt)._plan.buckets) is row.flat_safe
        ps = flat_list(groups)
        for a, b in zip(ps, ref_ps):
            close(a, b)
        same_state(inner(opt).state, ps, inner(ref).state, ref_ps, close)
        if row.lookahead is not None:
            assert opt.count == ref.count == STEPS
            for s, r in zip(flat_list(opt.slow_weights), flat_list(ref.slow_weights)):
                close(s, r)


# ---- state, kernels ----------------------------------------------------------------------------
def _check_state_placement(opt, groups):
    for p in flat_list(groups):
        for k, v in inner(opt).state[p].items():
            if isinstance(v, torch.Tensor):
                assert v.device == p.device, k
                # the half rule: half params keep float32 state (half.py)
                want = torch.float32 if p.dtype in HALVES else p.dtype
                assert v.dtype == want, (k, v.dtype, p.dtype)
                if v.dim() > 0:
                    assert v.shape == p.shape, k
    if getattr(opt, "slow_weights", None) is not None:
        for s, p in zip(flat_list(opt.slow_weights), flat_list(groups)):
            assert s.device == p.device and s.dtype == p.dtype and s.shape == p.shape


ROW_DTYPES = [(r, d) for r in ROWS for d in r.dtypes]


@pytest.mark.parametrize("row,dtype", ROW_DTYPES, ids=[f"{r.name}-{d}" for r, d in ROW_DTYPES])
def test_state_on_the_params_device_and_dtype(row, dtype):
    groups, opt = run(row, dtype, steps=3)
    for p in flat_list(groups):
        assert p.dtype == dtype and torch.isfinite(p.float()).all()
    if row.fastai_api:
        _check_state_placement(opt, groups)
    else:
        for p in flat_list(groups):
            for k, v in opt.opt.state[p].items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:   # torch's own optimizer's state
                    assert v.device == p.device and v.dtype == p.dtype, k


@pytest.mark.parametrize("dtype", FLOATS + HALVES)
@pytest.mark.parametrize("row", FASTAI_ROWS, ids=ids(FASTAI_ROWS))
def test_each_bucket_gets_the_expected_kernel(row, dtype):
    groups, opt = run(row, dtype, steps=2)
    want = row.kernel_for("cpu", dtype)
    got = backends(opt)
    assert got and set(got) == {want}, got
    recipes = {b.kernel.recipe.name for b in inner(opt)._plan.buckets if b.kernel is not None}
    assert recipes <= {row.recipe}


# ---- checkpoints, copies -----------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_checkpoint_resumes_bit_for_bit(row):
    "state_dict -> torch.save -> torch.load(weights_only=True) -> a fresh optimizer -> continue:"
    " the uninterrupted run, bit for bit."
    dtype = torch.float32
    grads = make_grads(dtype)
    whole, _ = run(row, dtype, grads=grads)
    groups, opt = run(row, dtype, steps=4, grads=grads)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    resumed = [[p.detach().clone() for p in g] for g in groups]
    fresh = row.make(resumed)
    fresh.load_state_dict(sd)
    if row.fastai_api:
        assert [dict(h) for h in fresh.hypers] == [dict(h) for h in opt.hypers]
        assert fresh.state[resumed[NO_WD[0]][NO_WD[1]]]["do_wd"] is False
    run(row, dtype, opt=fresh, groups=resumed, grads=grads, start=4)
    for a, b in zip(flat_list(resumed), flat_list(whole)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_deepcopy_is_independent_and_steps_alike(row):
    dtype = torch.float32
    grads = make_grads(dtype)
    groups, opt = run(row, dtype, steps=3, grads=grads)
    twin = copy.deepcopy(opt)
    twin_groups = [list(pg["params"]) for pg in twin.param_groups]
    assert all(a is not b for a, b in zip(flat_list(twin_groups), flat_list(groups)))
    before = [p.clone() for p in flat_list(groups)]
    run(row, dtype, opt=twin, groups=twin_groups, grads=grads, start=3)
    for p, b in zip(flat_list(groups), before):       # stepping the copy left the original alone
        assert torch.equal(p, b)
    run(row, dtype, opt=opt, groups=groups, grads=grads, start=3)
    for a, b in zip(flat_list(twin_groups), flat_list(groups)):
        assert torch.equal(a, b)


# ---- torch's contracts -------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_zero_grad_both_modes(row):
    groups, opt = run(row, torch.float32, steps=1)
    ps = [p for p in flat_list(groups) if p.grad is not None]
    kept = [p.grad for p in ps]
    opt.zero_grad(set_to_none=False)
    for p, g in zip(ps, kept):
        assert p.grad is g and not p.grad.any()
    assert groups[NONE_GRAD[0]][NONE_GRAD[1]].grad is None
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in flat_list(groups))


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_lr_scheduler_drives_lr(row):
    "StepLR halves every group's lr each step; the optimizer's hypers and its updates follow (the"
    " float64 reference run with the same schedule)."
    dtype = torch.float64
    groups = make_params(dtype)
    opt = build(row, groups)
    lrs0 = [pg["lr"] for pg in opt.param_groups]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    grads = make_grads(dtype, steps=4)
    ref = None
    if row.ref is not None:
        cbs, hypers, lookahead = row.reference(lrs0)
        states = [[{} for _ in g] for g in SHAPES]
        states[NO_WD[0]][NO_WD[1]]["do_wd"] = False
        ref = RefOptimizer(make_params(dtype), cbs, hypers, states=states, lookahead=lookahead)
    for k, step_grads in enumerate(grads):
        want = [lr * 0.5 ** k for lr in lrs0]
        assert [pg["lr"] for pg in opt.param_groups] == pytest.approx(want, rel=1e-15)
        if row.fastai_api:
            assert [h["lr"] for h in opt.hypers] == pytest.approx(want, rel=1e-15)
        set_grads(groups, step_grads)
        opt.step()
        sched.step()
        if ref is not None:
            for h, lr in zip(ref.hypers, want):
                h["lr"] = lr
            ref.step(step_grads)
    if ref is not None:
        for p, r in zip(flat_list(groups), ref.flat()):
            torch.testing.assert_close(p, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_step_hooks_run_once_per_step(row):
    groups = make_params(torch.float32)
    opt = build(row, groups)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    run(row, torch.float32, opt=opt, groups=groups, steps=3)
    assert calls == ["pre", "post"] * 3


# ---- the checks of every hyper -----------------------------------------------------------------
HYPER_CASES = [(r, name, bounds) for r in FASTAI_ROWS for name, bounds in r.hypers.items()]


def _bad_values(bounds):
    low, high, high_inclusive = bounds
    bad = [low - 0.1, float("nan"), -math.inf]
    if high != math.inf:
        bad += [high + 0.5] + ([] if high_inclusive else [high])
    return bad


@pytest.mark.parametrize("row,name,bounds", HYPER_CASES,
                         ids=[f"{r.name}-{n}" for r, n, _ in HYPER_CASES])
def test_each_hyper_is_checked(row, name, bounds):
    "Out of bounds or NaN: refused by the factory and by set_hyper, naming the hyper, with nothing"
    " changed; the bounds themselves (and 0) are accepted."
    for bad in _bad_values(bounds):
        with pytest.raises(ValueError, match=re.escape(name)):
            row.make([torch.ones(3)], **{name: bad})
    groups, opt = run(row, torch.float64, steps=2)
    hypers = [dict(h) for h in opt.hypers]
    params = [p.clone() for p in flat_list(groups)]
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
             for k, v in inner(opt).state[groups[0][0]].items()}
    for bad in _bad_values(bounds):
        with pytest.raises(ValueError, match=re.escape(name)):
            opt.set_hyper(name, bad)
        with pytest.raises(ValueError, match=re.escape(name)):
            opt.set_hyper(name, [opt.hypers[0][name], bad])      # the second group's is bad
    assert [dict(h) for h in opt.hypers] == hypers
    assert all(torch.equal(a, b) for a, b in zip(flat_list(groups), params))
    now = inner(opt).state[groups[0][0]]
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v) if isinstance(v, torch.Tensor) else now[k] == v
    low, high, high_inclusive = bounds
    ok = [low] + ([high] if high_inclusive and high != math.inf else [])
    for v in ok:
        opt.set_hyper(name, v)
        assert all(h[name] == v for h in opt.hypers)


# ---- CUDA --------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS + HALVES)
@pytest.mark.parametrize("row", FASTAI_ROWS, ids=ids(FASTAI_ROWS))
def test_cuda_kernels_and_state(row, dtype):
    groups, opt = run(row, dtype, device="cuda", steps=2)
    want = row.kernel_for("cuda", dtype)
    assert set(backends(opt)) == {want}
    _check_state_placement(opt, groups)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("row", FASTAI_ROWS, ids=ids(FASTAI_ROWS))
def test_cuda_paths_agree_with_cpu(row, dtype):
    cpu_groups, _ = run(row, dtype, PER_PARAM)
    for path in (PER_PARAM, MULTI_TENSOR, NATIVE):     # NATIVE: the defaults, fused on CUDA
        groups, _ = run(row, dtype, path, device="cuda")
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
        for a, b in zip(flat_list(groups), flat_list(cpu_groups)):
            torch.testing.assert_close(a.cpu(), b, **tol)
