"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2) against a
float64 reference written here from the paper's formula, on every path; zero grads; its hypers,
their defaults and bounds; checkpoints; torch citizenship."""
import io
import re

import pytest
import torch

import pyfastopt as po
from optim_db import FLAT, MULTI_TENSOR, NATIVE, PATHS, PER_PARAM, set_path

SHAPES = [(3, 4), (5,), (), (2, 3, 2), (7,), (1,), (4, 4), (6,), (2, 5), (3,)]


def lion_reference(params, grads, lr, mom, sqr_mom, wd, decoupled):
    """The paper's update in float64, one step per entry of `grads`:
    decoupled: p <- p * (1 - lr * wd) - lr * sign(mom * m + (1 - mom) * g);
    L2 (not decoupled): g <- g + wd * p first, then the same step without the decay factor;
    then m <- sqr_mom * m + (1 - sqr_mom) * g. Returns the params and the momenta."""
    ps = [p.detach().double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            g = g.double()
            if decoupled:
                ps[i] = ps[i] * (1 - lr * wd)
            else:
                g = g + wd * ps[i]
            update = torch.sign(mom * ms[i] + (1 - mom) * g)
            ps[i] = ps[i] - lr * update
            ms[i] = sqr_mom * ms[i] + (1 - sqr_mom) * g
    return ps, ms


def random_problem(dtype, n_steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
             for _ in range(n_steps)]
    return params, grads


def close(got, want, dtype):
    "1e-6 (float32) or 1e-12 (float64) relative, and that much of the tensor's scale absolute."
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    want = want.to(torch.float64)
    scale = float(want.abs().max()) if want.numel() else 0.
    torch.testing.assert_close(got.detach().double(), want, rtol=rel, atol=rel * scale + 1e-30)


def run_lion(params, grads, path, **kw):
    opt = po.Lion(params, **kw)
    set_path(opt, path)
    for i, step_grads in enumerate(grads):
        for p, g in zip(params, step_grads):
            if p.grad is None:
                p.grad = g.clone()
            else:               # in place: after flatten_params() the grads are views
                p.grad.copy_(g)
        if path == FLAT and i == 0:
            assert opt.flatten_params() == len(params)
        opt.step()
    return opt


def backends(opt):
    return {b.backend for b in opt._plan.buckets} if opt._plan is not None else set()


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", PATHS)
def test_lion_matches_the_papers_formula(path, dtype, decoupled):
    hypers = dict(lr=0.01, mom=0.9, sqr_mom=0.99, wd=0.1)
    params, grads = random_problem(dtype, n_steps=8)
    want_ps, want_ms = lion_reference(params, grads, decoupled=decoupled, **hypers)
    opt = run_lion(params, grads, path, decouple_wd=decoupled, **hypers)
    expected_backend = {PER_PARAM: set(), MULTI_TENSOR: {"chain"}, NATIVE: {"native"},
                        FLAT: {"chain"}}[path]
    assert backends(opt) == expected_backend
    if path == FLAT:
        assert all(b.flat is not None for b in opt._plan.buckets)
    for p, m, want_p, want_m in zip(params, [opt.state[p]["grad_avg"] for p in params],
                                    want_ps, want_ms):
        assert p.dtype == dtype and m.dtype == dtype and m.shape == p.shape
        close(p, want_p, dtype)
        close(m, want_m, dtype)


@pytest.mark.parametrize("path", PATHS)
def test_exactly_zero_grads_take_sign_zero(path):
    "sign(0) = 0: where the momentum and the grad are 0 nothing moves (without decay); where only"
    " the grad is 0 the step follows the momentum's sign; with decay, only the decay applies."
    params = [torch.linspace(-1, 1, 12).reshape(3, 4) + 0.1 * i for i in range(10)]
    start = [p.clone() for p in params]
    zeros = [[torch.zeros_like(p) for p in params]]
    opt = run_lion(params, zeros, path, lr=0.1, wd=0.)
    for p, p0 in zip(params, start):
        assert torch.equal(p, p0)
        assert torch.equal(opt.state[p]["grad_avg"], torch.zeros_like(p))
    # one real grad, then zeros: the step is -lr * sign(mom * m) = -lr * sign(g_1)
    params = [p0.clone() for p0 in start]
    g1 = [torch.where(torch.arange(12).reshape(3, 4) % 3 == 0, 0., 1.) * (-1) ** i
          for i in range(len(params))]
    grads = [g1, [torch.zeros_like(p) for p in params]]
    run_lion(params, grads, path, lr=0.1, mom=0.9, sqr_mom=0.99, wd=0.)
    for p, p0, g in zip(params, start, g1):
        # step 1: sign((1 - mom) * g1); step 2: sign(mom * (1 - sqr_mom) * g1) = sign(g1)
        want = p0.double() - 0.1 * torch.sign(g.double()) * 2
        close(p, want, torch.float32)
    # zero grads with decoupled decay: p * (1 - lr * wd) only
    params = [p0.clone() for p0 in start]
    run_lion(params, zeros, path, lr=0.1, wd=0.5)
    for p, p0 in zip(params, start):
        close(p, p0.double() * (1 - 0.1 * 0.5), torch.float32)


@pytest.mark.parametrize("decouple_wd", [True, False])
def test_hypers_order_and_defaults(decouple_wd):
    "The defaults are the paper's (lr 1e-4, beta1 0.9, beta2 0.99, wd 0.1); the keys come in"
    " fastai's merge order: the decay stepper's `defaults` (wd) first, then the factory's."
    opt = po.Lion([torch.zeros(3)], decouple_wd=decouple_wd)
    assert list(opt.hypers[0].items()) == [("wd", 0.1), ("lr", 1e-4), ("mom", 0.9),
                                           ("sqr_mom", 0.99)]
    assert opt.cbs[0] is (po.weight_decay if decouple_wd else po.l2_reg)
    assert list(opt.cbs[1:]) == [po.lion_step]
    opt = po.Lion([torch.zeros(3)], lr=3e-4, mom=0.95, sqr_mom=0.98, wd=1.)
    assert dict(opt.hypers[0]) == dict(wd=1., lr=3e-4, mom=0.95, sqr_mom=0.98)


@pytest.mark.parametrize("name,bad", [("lr", -1e-4), ("lr", float("nan")), ("mom", -0.1),
                                      ("mom", 1.5), ("sqr_mom", 1.01), ("sqr_mom", -1.),
                                      ("wd", -0.1), ("wd", float("inf")), ("mom", "0.9")])
def test_bounds_errors_name_the_hyper(name, bad):
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        po.Lion([torch.zeros(3)], **{name: bad})
    p = torch.ones(3)
    opt = po.Lion([p])
    before = [dict(h) for h in opt.hypers]
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        opt.set_hyper(name, bad)
    assert [dict(h) for h in opt.hypers] == before


def test_edge_values_accepted():
    "mom and sqr_mom may be 0 or 1 (nothing divides by 1 - beta); lr and wd may be 0."
    p = torch.ones(3)
    p.grad = torch.tensor([1., -1., 0.])
    opt = po.Lion([p], lr=0., mom=1., sqr_mom=0., wd=0.)
    opt.step()
    assert torch.equal(p, torch.ones(3))
    opt.set_hyper("mom", 0.)
    opt.set_hyper("sqr_mom", 1.)


@pytest.mark.parametrize("path", [PER_PARAM, NATIVE, MULTI_TENSOR])
def test_state_dict_round_trip(path):
    "Checkpoint after 4 steps, torch.save/load(weights_only=True), load into a fresh Lion,"
    " continue: bit for bit the uninterrupted run."
    params, grads = random_problem(torch.float32, n_steps=8, seed=3)
    whole = [p.clone() for p in params]
    run_lion(whole, grads, path, lr=0.01)
    first = [p.clone() for p in params]
    opt = run_lion(first, grads[:4], path, lr=0.01)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    resumed = [p.clone() for p in first]
    opt2 = po.Lion(resumed, lr=0.01)
    set_path(opt2, path)
    opt2.load_state_dict(sd)
    assert list(opt2.state[resumed[0]]) == ["grad_avg"]
    for step_grads in grads[4:]:
        for p, g in zip(resumed, step_grads):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(resumed, whole):
        assert torch.equal(a, b)


def test_is_a_torch_optimizer():
    opt = po.Lion([torch.zeros(2)])
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_param_equals_native(dtype):
    params, grads = random_problem(dtype, n_steps=6, seed=5)
    a, b = [p.clone() for p in params], [p.clone() for p in params]
    run_lion(a, grads, PER_PARAM, lr=0.01, wd=0.1)
    opt = run_lion(b, grads, NATIVE, lr=0.01, wd=0.1)
    assert backends(opt) == {"native"}
    for x, y in zip(a, b):
        close(y, x.double(), dtype)
