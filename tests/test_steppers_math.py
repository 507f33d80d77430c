"""Stepper math (spec §3) checked against float64 recomputations of the spec formulas, and every
factory (§4) over 10 steps on mixed shapes / several groups / a None grad / do_wd=False, against the
independent float64 reference in helpers.py (§2.5 loop + §3 formulas + §4.1 Lookahead)."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import (NO_WD, NONE_GRAD, RefOptimizer, close32, debias64, make_problem, radam_r,  # noqa: E402
                     set_grads, clone_groups)
from optim_db import REF_ROWS  # noqa: E402

from pyfastopt import (sgd_step, weight_decay, l2_reg, average_grad, average_sqr_grad,  # noqa: E402
                       momentum_step, rms_prop_step, step_stat, debias, adam_step, radam_step,
                       qhadam_step, larc_layer_lr, larc_step, lamb_step)


def rnd(*shape, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if positive:
        x = x.abs() + 0.1
    return x


def pg(shape=(3, 4), seed=0, pscale=1., gscale=1.):
    p = rnd(*shape, seed=seed) * pscale
    p.grad = rnd(*shape, seed=seed + 100) * gscale
    return p


D = torch.float64


# ----------------------------------------------------------------------------------------------
# single steppers
# ----------------------------------------------------------------------------------------------
def test_sgd_step_math():
    p = pg()
    p0, g0 = p.double().clone(), p.grad.double().clone()
    g_obj = p.grad
    assert sgd_step(p, lr=0.3) is None
    close32(p, p0 - 0.3 * g0)
    assert p.grad is g_obj and torch.equal(p.grad.double(), g0)


def test_weight_decay_math():
    p = pg()
    p0, g0 = p.double().clone(), p.grad.double().clone()
    assert weight_decay(p, lr=0.3, wd=0.2) is None
    close32(p, p0 * (1 - 0.3 * 0.2))
    assert torch.equal(p.grad.double(), g0)
    q = pg(seed=1)
    q0 = q.clone()
    weight_decay(q, lr=0.3, wd=0.2, do_wd=False)
    assert torch.equal(q, q0)
    weight_decay(q, lr=0.3, wd=0.)
    assert torch.equal(q, q0)


def test_l2_reg_math():
    p = pg()
    p0, g0 = p.clone(), p.grad.double().clone()
    g_obj = p.grad
    assert l2_reg(p, lr=0.3, wd=0.2) is None
    assert torch.equal(p, p0)
    assert p.grad is g_obj  # mutated in place
    close32(p.grad, g0 + 0.2 * p0.double())
    q = pg(seed=1)
    gq = q.grad.clone()
    l2_reg(q, lr=0.3, wd=0.2, do_wd=False)
    assert torch.equal(q.grad, gq)
    l2_reg(q, lr=0.3, wd=0.)
    assert torch.equal(q.grad, gq)


@pytest.mark.parametrize("dampening", [False, True])
def test_average_grad_math(dampening):
    p = pg()
    g0 = p.grad.double()
    st = average_grad(p, mom=0.8, dampening=dampening)
    assert list(st.keys()) == ['grad_avg']
    d = 0.2 if dampening else 1.
    close32(st['grad_avg'], d * g0)
    m = st['grad_avg']
    m0 = m.double().clone()
    st2 = average_grad(p, mom=0.8, dampening=dampening, grad_avg=m)
    assert st2['grad_avg'] is m  # in place on the state tensor
    close32(st2['grad_avg'], 0.8 * m0 + d * g0)
    assert st2['grad_avg'].dtype == p.dtype and st2['grad_avg'].shape == p.shape


def test_average_grad_default_undampened():
    p = pg()
    st = average_grad(p, mom=0.8)
    close32(st['grad_avg'], p.grad.double())


@pytest.mark.parametrize("dampening", [False, True])
def test_average_sqr_grad_math(dampening):
    p = pg()
    g0 = p.grad.double()
    st = average_sqr_grad(p, sqr_mom=0.95, dampening=dampening)
    assert list(st.keys()) == ['sqr_avg']
    d = 0.05 if dampening else 1.
    close32(st['sqr_avg'], d * g0 * g0)
    v = st['sqr_avg']
    v0 = v.double().clone()
    st2 = average_sqr_grad(p, sqr_mom=0.95, dampening=dampening, sqr_avg=v)
    assert st2['sqr_avg'] is v
    close32(st2['sqr_avg'], 0.95 * v0 + d * g0 * g0)


def test_average_sqr_grad_default_dampened():
    p = pg()
    st = average_sqr_grad(p, sqr_mom=0.95)
    close32(st['sqr_avg'], 0.05 * p.grad.double() ** 2)


def test_momentum_step_math():
    p = pg()
    m = rnd(3, 4, seed=7)
    p0 = p.double().clone()
    assert momentum_step(p, lr=0.1, grad_avg=m) is None
    close32(p, p0 - 0.1 * m.double())


@pytest.mark.parametrize("with_avg", [False, True])
def test_rms_prop_step_math(with_avg):
    p = pg()
    v = rnd(3, 4, seed=8, positive=True)
    m = rnd(3, 4, seed=9)
    p0, g0 = p.double().clone(), p.grad.double()
    kw = dict(grad_avg=m) if with_avg else {}
    assert rms_prop_step(p, lr=0.01, sqr_avg=v, eps=1e-3, **kw) is None
    x = m.double() if with_avg else g0
    close32(p, p0 - 0.01 * x / (v.double().sqrt() + 1e-3))


def test_step_stat_math():
    p = pg()
    assert step_stat(p) == {'step': 1}
    st = step_stat(p, step=41)
    assert st == {'step': 42} and type(st['step']) is int


@pytest.mark.parametrize("mom,damp,step", [(0.9, 0.1, 1), (0.99, 0.01, 2), (0.9, 1, 3), (0.95, 0.05, 17)])
def test_debias_formula(mom, damp, step):
    assert debias(mom, damp, step) == pytest.approx(damp * (1 - mom ** step) / (1 - mom), rel=1e-15)


def adam_inputs(shape=(3, 4), seed=0):
    p = pg(shape, seed=seed)
    m = rnd(*shape, seed=seed + 1) * 0.1
    v = rnd(*shape, seed=seed + 2, positive=True) * 0.01
    return p, m, v


@pytest.mark.parametrize("step", [1, 3, 10])
def test_adam_step_math(step):
    p, m, v = adam_inputs()
    p0 = p.double().clone()
    m0, v0 = m.clone(), v.clone()
    adam_step(p, lr=0.01, mom=0.9, step=step, sqr_mom=0.99, grad_avg=m, sqr_avg=v, eps=1e-5)
    d1, d2 = 1 - 0.9 ** step, 1 - 0.99 ** step
    ref = p0 - (0.01 / d1) * m.double() / ((v.double() / d2).sqrt() + 1e-5)
    close32(p, ref)
    assert torch.equal(m, m0) and torch.equal(v, v0)


@pytest.mark.parametrize("step,beta,eps", [(3, 0., 1e-5), (5, 0., 1e-5), (6, 0., 1e-5), (10, 0., 1e-5),
                                            (10, 1., 1e-5), (10, 2., 1e-5), (12, 0., 0.)])
def test_radam_step_math(step, beta, eps):
    p, m, v = adam_inputs()
    p0, md, vd = p.double().clone(), m.double(), v.double()
    radam_step(p, lr=0.01, mom=0.9, step=step, sqr_mom=0.99, grad_avg=m, sqr_avg=v, eps=eps, beta=beta)
    d1, d2 = 1 - 0.9 ** step, 1 - 0.99 ** step
    r_inf, r = radam_r(0.99, step)
    if r > 5:
        vr = math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))
        den = (vd / d2).sqrt() + eps
        if beta:
            den = torch.log1p(torch.exp(beta * den)) / beta
        ref = p0 - (0.01 * vr / d1) * md / den
    else:
        ref = p0 - (0.01 / d1) * md
    close32(p, ref)


def test_radam_thresholds_spec_values():
    r_inf, _ = radam_r(0.99, 1)
    assert r_inf == 198.99999999999983
    rs = [radam_r(0.99, s)[1] for s in range(1, 7)]
    assert rs == pytest.approx([1.0, 1.99497, 2.98660, 3.97487, 4.95980, 5.94138], abs=1e-5)


@pytest.mark.parametrize("step", [1, 4])
def test_qhadam_step_math(step):
    p, m, v = adam_inputs()
    p0, g0 = p.double().clone(), p.grad.double()
    qhadam_step(p, lr=0.01, mom=0.999, sqr_mom=0.99, sqr_avg=v, nu_1=0.7, nu_2=0.8, step=step,
                grad_avg=m, eps=1e-8)
    d1, d2 = 1 - 0.999 ** step, 1 - 0.99 ** step
    num = 0.3 * g0 + 0.7 * m.double() / d1
    den = (0.2 * g0 ** 2 + 0.8 * v.double() / d2).sqrt() + 1e-8
    close32(p, p0 - 0.01 * num / den)


def test_larc_layer_lr_unclipped_is_0d_tensor():
    p = pg()
    pn, gn = p.double().norm().item(), p.grad.double().norm().item()
    for wd in (0., 0.1):
        st = larc_layer_lr(p, lr=0.1, trust_coeff=0.02, wd=wd, eps=1e-8, clip=True)
        assert list(st.keys()) == ['local_lr']
        ll = st['local_lr']
        exp = 0.1 * 0.02 * pn / (gn + pn * wd + 1e-8)
        assert exp < 0.1
        assert isinstance(ll, torch.Tensor) and ll.dim() == 0
        assert ll.item() == pytest.approx(exp, rel=1e-6)


def test_larc_layer_lr_clipped_is_python_float_lr():
    p = pg(gscale=1e-4)
    pn, gn = p.double().norm().item(), p.grad.double().norm().item()
    exp = 0.1 * 0.02 * pn / (gn + 1e-8)
    assert exp > 0.1
    st = larc_layer_lr(p, lr=0.1, trust_coeff=0.02, wd=0., eps=1e-8, clip=True)
    assert type(st['local_lr']) is float and st['local_lr'] == 0.1
    st = larc_layer_lr(p, lr=0.1, trust_coeff=0.02, wd=0., eps=1e-8, clip=False)
    ll = st['local_lr']
    assert isinstance(ll, torch.Tensor) and ll.dim() == 0
    assert ll.item() == pytest.approx(exp, rel=1e-6)


def test_larc_layer_lr_default_clip():
    p = pg(gscale=1e-4)
    assert larc_layer_lr(p, lr=0.1, trust_coeff=0.02, wd=0., eps=1e-8)['local_lr'] == 0.1


@pytest.mark.parametrize("with_avg", [False, True])
@pytest.mark.parametrize("ll_kind", ["float", "tensor"])
def test_larc_step_math(with_avg, ll_kind):
    p = pg()
    m = rnd(3, 4, seed=5)
    p0, g0 = p.double().clone(), p.grad.double()
    ll = 0.05 if ll_kind == "float" else torch.tensor(0.05)
    kw = dict(grad_avg=m) if with_avg else {}
    assert larc_step(p, local_lr=ll, **kw) is None
    x = m.double() if with_avg else g0
    close32(p, p0 - 0.05 * x)


def lamb_ref(p0, m, v, lr, mom, sqr_mom, step, eps):
    d1, d2 = 1 - mom ** step, 1 - sqr_mom ** step
    u = (m / d1) / ((v / d2).sqrt() + eps)
    r1 = p0.pow(2).mean().sqrt().item()
    r2 = u.pow(2).mean().sqrt().item()
    q = 1 if r1 == 0 or r2 == 0 else min(r1 / r2, 10)
    return p0 - lr * q * u, r1, r2, q


@pytest.mark.parametrize("pscale,expect_cap", [(1., False), (100., True)])
def test_lamb_step_math(pscale, expect_cap):
    p, m, v = adam_inputs()
    p.data.mul_(pscale)
    p0 = p.double().clone()
    assert lamb_step(p, lr=0.01, mom=0.9, step=2, sqr_mom=0.99, grad_avg=m, sqr_avg=v, eps=1e-5) is None
    ref, r1, r2, q = lamb_ref(p0, m.double(), v.double(), 0.01, 0.9, 0.99, 2, 1e-5)
    assert (q == 10) == expect_cap
    close32(p, ref)


def test_lamb_step_zero_param_q1():
    p = torch.zeros(3)
    p.grad = torch.tensor([0.1, 0.2, 0.3])
    m = torch.tensor([0.01, 0.02, 0.03])
    v = torch.tensor([1e-4, 4e-4, 9e-4])
    lamb_step(p, lr=0.1, mom=0.9, step=1, sqr_mom=0.99, grad_avg=m, sqr_avg=v, eps=1e-5)
    g = torch.tensor([0.1, 0.2, 0.3], dtype=D)
    close32(p, -0.1 * g / (g + 1e-5))
    close32(p, torch.tensor([-0.09999001, -0.09999501, -0.09999666], dtype=D), atol=1e-8)


def test_lamb_step_zero_update_r2_zero():
    p = pg()
    p0 = p.clone()
    m = torch.zeros(3, 4)
    v = rnd(3, 4, seed=3, positive=True)
    lamb_step(p, lr=0.1, mom=0.9, step=1, sqr_mom=0.99, grad_avg=m, sqr_avg=v, eps=1e-5)
    assert torch.equal(p, p0)


# ----------------------------------------------------------------------------------------------
# every factory, 10 steps, mixed shapes, 2 groups, None grad, do_wd=False, wd != 0
# ----------------------------------------------------------------------------------------------
LRS = [1e-2, 5e-3]
RMS_LRS = [1e-3, 5e-4]


def lrs_for(row):
    "One lr per group: RMSProp's steps are ~10x Adam's (lr * g / sqrt((1 - sqr_mom) * g^2))."
    return RMS_LRS if row.ref == 'RMSProp' else LRS


# every row of the optimizer table (tests/optim_db.py) with a float64 reference:
# name -> (optimizer on groups g, reference (cbs, hypers per group), Lookahead's (k, alpha))
CONFIGS = {r.name: (lambda g, row=r: row.make(g, lr=lrs_for(row)),
                    lambda row=r: row.reference(lrs_for(row))[:2], r.lookahead)
           for r in REF_ROWS if r.fastai_api}


def run_both(name, dtype, n_steps=10):
    make_opt, make_ref, la = CONFIGS[name]
    init, grads = make_problem(n_steps=n_steps, seed=1234, dtype=dtype)
    groups = clone_groups(init)
    opt = make_opt(groups)
    p_nowd = groups[NO_WD[0]][NO_WD[1]]
    opt.state[p_nowd]['do_wd'] = False
    cbs, hypers = make_ref()
    states = [[{} for _ in g] for g in init]
    states[NO_WD[0]][NO_WD[1]]['do_wd'] = False
    ref = RefOptimizer(init, cbs, hypers, states=states, lookahead=la)
    for k in range(n_steps):
        set_grads(groups, grads[k])
        opt.step()
        ref.step(grads[k])
    return init, groups, opt, ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_factory_10_steps_float32(name):
    init, groups, opt, ref = run_both(name, torch.float32)
    for gi, (grp, rgrp) in enumerate(zip(groups, ref.groups)):
        for pi, (p, r) in enumerate(zip(grp, rgrp)):
            assert p.dtype == torch.float32 and p.shape == init[gi][pi].shape
            if (gi, pi) == NONE_GRAD:
                assert torch.equal(p, init[gi][pi]), "a param whose grad is None must not move"
                continue
            # the test problem keeps every value well away from 0
            assert r.abs().min().item() > 0.3
            assert not torch.equal(p, init[gi][pi])
            close32(p, r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_factory_10_steps_float64(name):
    init, groups, opt, ref = run_both(name, torch.float64)
    for gi, (grp, rgrp) in enumerate(zip(groups, ref.groups)):
        for pi, (p, r) in enumerate(zip(grp, rgrp)):
            assert p.dtype == torch.float64
            if (gi, pi) == NONE_GRAD:
                assert torch.equal(p, init[gi][pi])
                continue
            torch.testing.assert_close(p, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_factory_10_steps_state(name):
    init, groups, opt, ref = run_both(name, torch.float32)
    la = CONFIGS[name][2]
    for gi, grp in enumerate(groups):
        for pi, p in enumerate(grp):
            rst = ref.state[gi][pi]
            st = opt.state[p]
            if la is not None:      # Lookahead's state also shows its own part of each entry
                assert st['lookahead_slow'] is opt.slow_weights[gi][pi]
                assert st['lookahead_count'] == opt.count
                st = {k: v for k, v in st.items() if k not in ('lookahead_slow', 'lookahead_count')}
            assert set(st.keys()) == set(rst.keys()), (gi, pi)
            for k, rv in rst.items():
                v = st[k]
                if isinstance(rv, torch.Tensor):
                    assert isinstance(v, torch.Tensor) and v.dtype == p.dtype and v.shape == p.shape
                    scale = rv.abs().max().item()
                    close32(v, rv, rtol=1e-5, atol=1e-6 * scale)
                elif k == 'step':
                    assert v == rv and type(v) is int
                elif k == 'local_lr':
                    assert float(v) == pytest.approx(rv, rel=1e-5)
                else:
                    assert v == rv
    if la is not None:
        assert opt.count == 10
        for sg, rsg in zip(opt.slow_weights, ref.slow):
            for s, rs in zip(sg, rsg):
                close32(s, rs, rtol=1e-6, atol=1e-7)


def test_larc_problem_exercises_both_branches():
    "sanity check of the test problem itself: Larc clips on the small-grad param only"
    init, groups, opt, ref = run_both('Larc', torch.float32, n_steps=1)
    lls = [[st.get('local_lr') for st in g] for g in ref.state]
    assert lls[1][1] == LRS[1]           # clipped -> lr
    assert lls[0][0] < LRS[0] and lls[1][0] < LRS[1]
    st = opt.state[groups[1][1]]
    assert type(st['local_lr']) is float and st['local_lr'] == LRS[1]
    assert isinstance(opt.state[groups[0][0]]['local_lr'], torch.Tensor)
