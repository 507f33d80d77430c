"""pyfastopt's contract on top of fastai's semantics: a real torch.optim.Optimizer (schedulers,
add_param_group, closures, zero_grad(set_to_none), weights_only-safe state_dict with checked
load_state_dict), the fastai bugs it fixes, live hypers / param_groups, and dtype handling.
Expected values are computed here independently (plain formulas, the float64 reference in
helpers.py, or a plain torch.optim.SGD driven by the same scheduler)."""
import copy
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import RefOptimizer, close32, ref_factory  # noqa: E402
from optim_db import rows  # noqa: E402

from pyfastopt import (L, Optimizer, sgd_step, average_grad, SGD, RMSProp, Adam,  # noqa: E402
                       Larc, Lookahead, ranger, OptimWrapper)


def P(vals=(1., 2., 3.), grad=(0.1, 0.2, 0.3), dtype=torch.float32):
    t = torch.tensor(vals, dtype=dtype)
    t.grad = torch.tensor(grad, dtype=dtype)
    return t


# the rows of the optimizer table (tests/optim_db.py); FACTORIES[name](params, **overrides)
FACTORIES = {r.name: r for r in rows("SGD", "SGD_mom", "RMSProp", "RMSProp_mom", "Adam", "RAdam",
                                     "QHAdam", "Larc", "Larc_noclip", "Lamb", "Lion",
                                     "Lookahead_SGD", "ranger")}


# ----------------------------------------------------------------------------------------------
# isinstance torch.optim.Optimizer
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FACTORIES))
def test_factories_are_torch_optimizers(name):
    opt = FACTORIES[name]([P()])
    assert isinstance(opt, torch.optim.Optimizer)


def test_optimizer_lookahead_wrapper_are_torch_optimizers():
    assert isinstance(Optimizer([P()], sgd_step, lr=0.1), torch.optim.Optimizer)
    assert isinstance(Lookahead(SGD([P()], lr=0.1)), torch.optim.Optimizer)
    assert isinstance(ranger([P()], lr=0.1), torch.optim.Optimizer)
    assert isinstance(OptimWrapper([P()], torch.optim.SGD, lr=0.1), torch.optim.Optimizer)
    assert isinstance(OptimWrapper(opt=torch.optim.Adam([P()], lr=0.1)), torch.optim.Optimizer)


# ----------------------------------------------------------------------------------------------
# LR schedulers drive lr
# ----------------------------------------------------------------------------------------------
SCHEDULERS = {
    'StepLR': lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    'LambdaLR': lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
    'CosineAnnealingLR': lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
    'OneCycleLR': lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.2, 0.1], total_steps=8,
                                                                cycle_momentum=False),
    'MultiStepLR': lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.1),
    'ExponentialLR': lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8),
}


def _two_group_params():
    a = torch.tensor([1., 2., 3.])
    b = torch.tensor([[4., 5.], [6., 7.]])
    return a, b


def _grads(k):
    return (torch.tensor([0.1, -0.2, 0.3]) * (1 + 0.1 * k), torch.tensor([[0.5, -0.1], [0.2, 0.4]]) * (1 - 0.05 * k))


@pytest.mark.parametrize("sname", list(SCHEDULERS))
def test_scheduler_drives_lr_sgd(sname):
    a, b = _two_group_params()
    opt = SGD([[a], [b]], lr=[0.1, 0.05])
    sched = SCHEDULERS[sname](opt)
    # an independent reference: torch's own SGD driven by the same scheduler
    ra, rb = _two_group_params()
    ropt = torch.optim.SGD([{'params': [ra], 'lr': 0.1}, {'params': [rb], 'lr': 0.05}], lr=0.1)
    rsched = SCHEDULERS[sname](ropt)
    for k in range(6):
        lrs = [h['lr'] for h in opt.hypers]
        assert lrs == [pg['lr'] for pg in opt.param_groups]
        assert lrs == pytest.approx(sched.get_last_lr(), rel=1e-12)
        assert lrs == pytest.approx([pg['lr'] for pg in ropt.param_groups], rel=1e-12)
        ga, gb = _grads(k)
        a0, b0 = a.double().clone(), b.double().clone()
        a.grad, b.grad = ga.clone(), gb.clone()
        ra.grad, rb.grad = ga.clone(), gb.clone()
        opt.step()
        ropt.step()
        close32(a, a0 - lrs[0] * ga.double())
        close32(b, b0 - lrs[1] * gb.double())
        sched.step()
        rsched.step()
        new = [h['lr'] for h in opt.hypers]
        assert new == [pg['lr'] for pg in opt.param_groups]
        assert new == pytest.approx(sched.get_last_lr(), rel=1e-12)
        assert new == pytest.approx(rsched.get_last_lr(), rel=1e-12)
    torch.testing.assert_close(a, ra, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b, rb, rtol=1e-6, atol=1e-7)


def test_steplr_analytic_values():
    a, b = _two_group_params()
    opt = SGD([[a], [b]], lr=[0.1, 0.05])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    for k in range(1, 4):
        a.grad, b.grad = torch.zeros(3), torch.zeros(2, 2)
        opt.step()
        sched.step()
        assert opt.hypers[0]['lr'] == pytest.approx(0.1 * 0.5 ** k, rel=1e-12)
        assert opt.hypers[1]['lr'] == pytest.approx(0.05 * 0.5 ** k, rel=1e-12)


def test_scheduler_drives_adam_update():
    "Adam under StepLR: the update of each step uses the scheduled lr (float64 reference)"
    torch.manual_seed(0)
    p = torch.randn(4, 3) + 3
    init = p.clone()
    opt = Adam([p], lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    cbs, h = ref_factory('Adam', 0.01)
    ref = RefOptimizer([[init]], cbs, [h])
    for k in range(4):
        g = torch.randn(4, 3)
        p.grad = g.clone()
        ref.hypers[0]['lr'] = sched.get_last_lr()[0]
        assert ref.hypers[0]['lr'] == pytest.approx(0.01 * 0.5 ** k)
        opt.step()
        ref.step([[g]])
        sched.step()
        close32(p, ref.groups[0][0])


def test_setting_hypers_visible_in_param_groups():
    a, b = _two_group_params()
    opt = Adam([[a], [b]], lr=0.1)
    opt.hypers[0]['lr'] = 0.3
    assert opt.param_groups[0]['lr'] == 0.3
    assert opt.param_groups[1]['lr'] == 0.1
    opt.set_hyper('lr', [0.2, 0.4])
    assert [pg['lr'] for pg in opt.param_groups] == [0.2, 0.4]
    opt.set_hyper('mom', 0.8)
    assert [pg['mom'] for pg in opt.param_groups] == [0.8, 0.8]
    opt.param_groups[1]['lr'] = 0.5
    assert opt.hypers[1]['lr'] == 0.5


def test_add_param_group():
    p0 = P()
    opt = SGD([p0], lr=0.1, mom=0.9, wd=0.01)
    t = P((4., 5.), (1., -1.))
    opt.add_param_group({'params': [t], 'lr': 0.5})
    assert len(opt.hypers) == 2
    assert len(opt.param_groups) == 2
    h1 = opt.hypers[1]
    assert h1['lr'] == 0.5 and h1['mom'] == 0.9 and h1['wd'] == 0.01
    assert set(h1.keys()) == set(opt.hypers[0].keys())
    assert 'params' not in h1
    assert len(opt.param_lists) == 2 and opt.param_lists[1][0] is t
    assert opt.param_groups[1]['params'][0] is t
    opt.step()
    # weight decay then momentum step (first grad_avg = g): p*(1 - lr*wd) - lr*g
    close32(t, torch.tensor([4., 5.], dtype=torch.float64) * (1 - 0.5 * 0.01)
            - 0.5 * torch.tensor([1., -1.], dtype=torch.float64))
    close32(p0, torch.tensor([1., 2., 3.], dtype=torch.float64) * (1 - 0.1 * 0.01)
            - 0.1 * torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))


def test_add_param_group_then_scheduler():
    p0 = P()
    opt = Adam([p0], lr=0.1)
    opt.add_param_group({'params': [P()], 'lr': 0.5})
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step()
    sched.step()
    assert [h['lr'] for h in opt.hypers] == pytest.approx([0.01, 0.05])


# ----------------------------------------------------------------------------------------------
# closure
# ----------------------------------------------------------------------------------------------
CLOSURE_OPTS = {
    'Optimizer': lambda ps: Optimizer(ps, sgd_step, lr=0.1),
    'SGD': lambda ps: SGD(ps, lr=0.1),
    'Adam': lambda ps: Adam(ps, lr=0.1),
    'Lookahead': lambda ps: Lookahead(SGD(ps, lr=0.1)),
    'ranger': lambda ps: ranger(ps, lr=0.1),
}


@pytest.mark.parametrize("name", list(CLOSURE_OPTS))
def test_step_closure(name):
    p = nn.Parameter(torch.tensor([1., 2.]))
    opt = CLOSURE_OPTS[name]([p])
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert seen == [True]
    assert isinstance(loss, torch.Tensor) and loss.item() == 5.
    torch.testing.assert_close(p.grad, torch.tensor([2., 4.]))
    assert not torch.equal(p.detach(), torch.tensor([1., 2.]))
    if name in ('Optimizer', 'SGD'):
        torch.testing.assert_close(p.detach(), torch.tensor([0.8, 1.6]))


def test_step_without_closure_returns_none():
    opt = SGD([P()], lr=0.1)
    assert opt.step() is None


# ----------------------------------------------------------------------------------------------
# zero_grad
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FACTORIES))
def test_zero_grad_in_place_and_set_to_none(name):
    p, q = P(), P()
    q.grad = None
    opt = FACTORIES[name]([p, q])
    g = p.grad
    opt.zero_grad()
    assert p.grad is g and p.grad.tolist() == [0., 0., 0.]
    assert q.grad is None
    opt.zero_grad(set_to_none=True)
    assert p.grad is None and q.grad is None


def test_zero_grad_set_to_none_false_explicit():
    p = P()
    opt = Adam([p], lr=0.1)
    g = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is g and p.grad.tolist() == [0., 0., 0.]


# ----------------------------------------------------------------------------------------------
# state_dict -> torch.save -> torch.load (weights_only default) -> load_state_dict
# ----------------------------------------------------------------------------------------------
ROUND_TRIP = {r.name: (lambda g, row=r: row.make(g, lr=[1e-2, 5e-3]))
              for r in rows("Adam", "SGD_mom", "Lookahead_SGD", "ranger", "Larc", "Lamb", "Lion")}


def _rt_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, 4, generator=gen) + 2, torch.randn(5, generator=gen) + 2],
            [torch.randn(2, 2, 2, generator=gen) + 2]]


def _rt_grads(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[[torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)],
             [torch.randn(2, 2, 2, generator=gen)]] for _ in range(n)]


def _apply(groups, grads):
    for grp, gg in zip(groups, grads):
        for p, g in zip(grp, gg):
            p.grad = g.clone()


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_state_dict_save_load_round_trip(name, tmp_path):
    make = ROUND_TRIP[name]
    grads = _rt_grads(6)
    A = _rt_params()
    optA = make(A)
    optA.state[A[0][1]]['do_wd'] = False
    for k in range(3):
        _apply(A, grads[k])
        optA.step()
    sd = optA.state_dict()
    path = tmp_path / 'opt.pth'
    torch.save(sd, path)
    sd2 = torch.load(path)  # default weights_only=True must work
    B = [[p.detach().clone() for p in g] for g in A]
    optB = make(B)
    optB.load_state_dict(sd2)
    assert [dict(h) for h in optB.hypers] == [dict(h) for h in optA.hypers]
    assert optB.state[B[0][1]]['do_wd'] is False
    for k in range(3, 6):
        _apply(A, grads[k])
        _apply(B, grads[k])
        optA.step()
        optB.step()
    for ga, gb in zip(A, B):
        for pa, pb in zip(ga, gb):
            assert torch.equal(pa, pb)


def test_state_dict_layout():
    A = _rt_params()
    opt = Adam(A, lr=[1e-2, 5e-3])
    _apply(A, _rt_grads(1)[0])
    opt.step()
    sd = opt.state_dict()
    flat = [p for g in A for p in g]
    assert len(sd['state']) == 3
    for i, p in enumerate(flat):
        assert torch.equal(sd['state'][i]['grad_avg'], opt.state[p]['grad_avg'])
        assert torch.equal(sd['state'][i]['sqr_avg'], opt.state[p]['sqr_avg'])
        assert sd['state'][i]['step'] == 1
    assert len(sd['hypers']) == 2
    assert [h['lr'] for h in sd['hypers']] == [1e-2, 5e-3]
    assert dict(sd['hypers'][0]) == {'wd': 0.01, 'sqr_mom': 0.99, 'lr': 0.01, 'mom': 0.9, 'eps': 1e-05}


def test_state_dict_grad_none_param_empty_state():
    p, q = P(), P()
    q.grad = None
    opt = SGD([p, q], lr=0.1, mom=0.9)
    opt.step()
    sd = opt.state_dict()
    assert len(sd['state']) == 2
    assert dict(sd['state'][1]) == {}


def test_lookahead_state_dict_has_count_and_slow_weights(tmp_path):
    A = _rt_params()
    opt = Lookahead(SGD(A, lr=[1e-2, 5e-3], mom=0.9))
    _apply(A, _rt_grads(1)[0])
    opt.step()
    sd = opt.state_dict()
    assert sd['count'] == 1
    assert len(sd['slow_weights']) == 2 and len(sd['slow_weights'][0]) == 2
    torch.save(sd, tmp_path / 'la.pth')
    sd2 = torch.load(tmp_path / 'la.pth')
    assert sd2['count'] == 1


def _snapshot(opt, params):
    hy = copy.deepcopy([dict(h) for h in opt.hypers])
    st = {}
    for i, p in enumerate(params):
        s = opt.state[p] if p in opt.state else {}
        st[i] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    return hy, st, [p.clone() for p in params]


def _same_snapshot(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        assert a[1][i].keys() == b[1][i].keys()
        for k in a[1][i]:
            x, y = a[1][i][k], b[1][i][k]
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y)
            else:
                assert x == y
    for x, y in zip(a[2], b[2]):
        assert torch.equal(x, y)


def _stepped(opt_fn, groups):
    opt = opt_fn(groups)
    for g in groups:
        for p in g:
            p.grad = torch.ones_like(p)
    opt.step()
    return opt


@pytest.mark.parametrize("case,match", [
    ("groups", r"(?i)group"),
    ("params", r"(?i)param"),
    ("shape", r"(?i)shape"),
    ("kind", None),
])
def test_load_state_dict_checks(case, match):
    target_groups = [[torch.ones(3), torch.ones(2, 2)]]
    target = _stepped(lambda g: Adam(g, lr=0.1), target_groups)
    flat = [p for g in target_groups for p in g]
    if case == "groups":
        src = _stepped(lambda g: Adam(g, lr=0.1), [[torch.ones(3)], [torch.ones(2, 2)]])
    elif case == "params":
        src = _stepped(lambda g: Adam(g, lr=0.1), [[torch.ones(3), torch.ones(2, 2), torch.ones(1)]])
    elif case == "shape":
        src = _stepped(lambda g: Adam(g, lr=0.1), [[torch.ones(4), torch.ones(2, 2)]])
    else:
        src = _stepped(lambda g: SGD(g, lr=0.1, mom=0.9), [[torch.ones(3), torch.ones(2, 2)]])
    sd = copy.deepcopy(src.state_dict())
    before = _snapshot(target, flat)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(sd)
    _same_snapshot(before, _snapshot(target, flat))
    # still usable afterwards
    target.step()


def test_load_state_dict_kind_message_says_what_differs():
    src = _stepped(lambda g: SGD(g, lr=0.1, mom=0.9), [[torch.ones(3)]])
    target = _stepped(lambda g: Adam(g, lr=0.1), [[torch.ones(3)]])
    with pytest.raises(ValueError) as ei:
        target.load_state_dict(copy.deepcopy(src.state_dict()))
    msg = str(ei.value)
    assert len(msg) > 10
    assert any(w in msg.lower() for w in ('sgd', 'adam', 'kind', 'optimizer', 'optimiser', 'key', 'hyper',
                                          'state', 'stepper', 'callback', 'sqr_mom', 'grad_avg'))


# ----------------------------------------------------------------------------------------------
# fastai bugs fixed
# ----------------------------------------------------------------------------------------------
def test_rmsprop_eps_used_in_step():
    p = P()
    opt = RMSProp([p], lr=0.1, eps=0.5)
    opt.step()
    g = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    v = 0.01 * g * g
    close32(p, torch.tensor([1., 2., 3.], dtype=torch.float64) - 0.1 * g / (v.sqrt() + 0.5))


def test_all_params_int_is_one_group():
    a, b, c = P(), P(), P()
    opt = SGD([[a], [b, c]], lr=0.1)
    ap = opt.all_params(1)
    assert len(ap) == 2
    assert ap[0][0] is b and ap[1][0] is c
    assert all(len(t) == 4 for t in ap)
    assert ap[0][3] is opt.hypers[1]
    sl = opt.all_params(slice(1, 2))
    assert len(sl) == 2 and all(x[0] is y[0] and x[3] is y[3] for x, y in zip(ap, sl))


def test_param_groups_live_both_ways():
    a, b = P(), P()
    opt = Adam([[a], [b]], lr=0.1)
    opt.param_groups[0]['lr'] = 0.5
    assert opt.hypers[0]['lr'] == 0.5
    assert opt.param_groups[0]['params'][0] is a and len(opt.param_groups[0]['params']) == 1
    assert opt.param_groups[1]['params'][0] is b


# ----------------------------------------------------------------------------------------------
# hypers replacement
# ----------------------------------------------------------------------------------------------
def test_hypers_is_L_of_plain_dicts():
    opt = Adam([[P()], [P()]], lr=0.1)
    assert isinstance(opt.hypers, L)
    assert type(opt.hypers.items) is list
    assert all(type(h) is dict for h in opt.hypers.items)


def test_replace_hypers_L_takes_effect():
    p = P()
    opt = SGD([p], lr=0.1)
    opt.step()
    opt.hypers = L([{'wd': 0., 'lr': 0.5, 'mom': 0.}])
    assert opt.param_groups[0]['lr'] == 0.5
    p0 = p.double().clone()
    opt.step()
    close32(p, p0 - 0.5 * p.grad.double())


def test_replace_hypers_items_takes_effect():
    a, b = P(), P()
    opt = SGD([[a], [b]], lr=0.1)
    opt.hypers.items = [{'wd': 0., 'lr': 0.2, 'mom': 0.}, {'wd': 0., 'lr': 0.3, 'mom': 0.}]
    a0, b0 = a.double().clone(), b.double().clone()
    opt.step()
    close32(a, a0 - 0.2 * a.grad.double())
    close32(b, b0 - 0.3 * b.grad.double())
    assert [pg['lr'] for pg in opt.param_groups] == [0.2, 0.3]


def test_larc_local_lr_in_state():
    p = P()
    opt = Larc([p], lr=0.1)
    opt.step()
    ll = opt.state[p]['local_lr']
    pn = torch.tensor([1., 2., 3.], dtype=torch.float64).norm().item()
    gn = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).norm().item()
    assert float(ll) == pytest.approx(0.1 * 0.02 * pn / (gn + 1e-8), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# dtype / device of state
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FACTORIES))
def test_float64_params_float64_state(name):
    p = P(dtype=torch.float64)
    q = P((4., 5., 6.), (0.3, 0.1, -0.2), dtype=torch.float64)
    opt = FACTORIES[name]([p, q], wd=0.01)
    for _ in range(2):
        opt.step()
    assert p.dtype == torch.float64
    for t in (p, q):
        for k, v in opt.state[t].items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.dtype == torch.float64, k
                assert v.device == t.device
                assert v.shape == t.shape


def _lowp_problem(dtype):
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), ()]
    ps, gs = [], []
    for s in shapes:
        mag = 1 + torch.rand(s, generator=gen)
        ps.append((mag * torch.where(torch.rand(s, generator=gen) < .5, -1., 1.)).to(dtype))
        gm = 0.5 + torch.rand((3,) + s, generator=gen)
        gs.append((gm * torch.where(torch.rand((3,) + s, generator=gen) < .5, -1., 1.)).to(dtype))
    return ps, gs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_low_precision_params(name, dtype):
    ps, gs = _lowp_problem(dtype)
    ps32 = [p.float() for p in ps]
    opt = FACTORIES[name](ps, wd=0.01)
    opt32 = FACTORIES[name](ps32, wd=0.01)
    for k in range(3):
        for p, p32, g in zip(ps, ps32, gs):
            p.grad = g[k].clone()
            p32.grad = g[k].float()
        opt.step()
        opt32.step()
    for p, p32 in zip(ps, ps32):
        assert p.dtype == dtype
        assert torch.isfinite(p.float()).all()
        tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
        torch.testing.assert_close(p.float(), p32, rtol=0, atol=tol)
        for k, v in opt.state[p].items():       # the half rule: state in float32
            if k == "lookahead_slow":           # Lookahead's slow weight: a copy of the param
                assert v.dtype == dtype
            elif isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.dtype == torch.float32, k
