"""torch.optim's contracts that code written for torch relies on (issue 8, points 1, 2, 5, 6):
torch's setting names honoured or refused (never stored unused), torch's momentum-cycling
schedulers with their defaults, named parameters, global step hooks once per step for wrappers,
and autograd's version counters bumped on every path. Expected numbers come from torch.optim
itself or from an independent float64 computation."""
import copy
import io
import math
import pickle

import pytest
import torch
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

import pyfastopt as po
from helpers import native_off

# ---- one row per optimizer: factory, whether it has betas (mom and sqr_mom read), momentum ----
ROWS = {
    "SGD": (lambda ps, **kw: po.SGD(ps, lr=0.1, **kw), False, False),
    "SGD_mom": (lambda ps, **kw: po.SGD(ps, lr=0.1, mom=0.9, **kw), False, True),
    "RMSProp": (lambda ps, **kw: po.RMSProp(ps, lr=0.01, **kw), False, False),
    "RMSProp_mom": (lambda ps, **kw: po.RMSProp(ps, lr=0.01, mom=0.9, **kw), True, True),
    "Adam": (lambda ps, **kw: po.Adam(ps, lr=0.01, **kw), True, True),
    "RAdam": (lambda ps, **kw: po.RAdam(ps, lr=0.01, **kw), True, True),
    "QHAdam": (lambda ps, **kw: po.QHAdam(ps, lr=0.01, **kw), True, True),
    "Larc": (lambda ps, **kw: po.Larc(ps, lr=0.1, **kw), False, True),
    "Lamb": (lambda ps, **kw: po.Lamb(ps, lr=0.01, **kw), True, True),
    "Lion": (lambda ps, **kw: po.Lion(ps, lr=0.01, **kw), True, True),
    "ranger": (lambda ps, **kw: po.ranger(ps, lr=0.01, **kw), True, True),
}


def params(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, generator=g) for _ in range(n)]


def grads(steps, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, generator=g) for _ in range(n)] for _ in range(steps)]


# ==============================================================================================
# 1. torch's names
# ==============================================================================================
def test_group_weight_decay_zero_means_no_decay():
    "torch's 'no decay on biases' recipe: the second group is not decayed."
    w, b = torch.ones(3), torch.ones(3)
    opt = po.SGD([{"params": [w]}, {"params": [b], "weight_decay": 0.}], lr=0.1, wd=0.5)
    assert opt.hypers[0]["wd"] == 0.5 and opt.hypers[1]["wd"] == 0.
    assert "weight_decay" not in opt.hypers[1]
    w.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    assert w.tolist() == pytest.approx([1 - 0.1 * 0.5] * 3) and b.tolist() == [1., 1., 1.]


@pytest.mark.parametrize("impl", ["auto", "per_param"])
def test_group_momentum_and_betas_are_used_like_torch(impl):
    "Group 'momentum' (SGD) and 'betas' (Adam): pyfastopt steps as torch.optim does."
    ps, ts = params(2), params(2)
    ts = [t.requires_grad_() for t in ts]
    sgd = po.SGD([{"params": ps[:1], "momentum": 0.5}, {"params": ps[1:]}], lr=0.1, mom=0.9)
    tsgd = torch.optim.SGD([{"params": ts[:1], "momentum": 0.5}, {"params": ts[1:]}], lr=0.1,
                           momentum=0.9)
    qs, us = params(2), [t.requires_grad_() for t in params(2)]
    adam = po.Adam([{"params": qs[:1], "betas": (0.8, 0.95)}, {"params": qs[1:]}], lr=0.01,
                   sqr_mom=0.999, eps=1e-8, wd=0.)
    tadam = torch.optim.Adam([{"params": us[:1], "betas": (0.8, 0.95)}, {"params": us[1:]}],
                             lr=0.01, eps=1e-8)
    sgd.impl = adam.impl = impl
    assert [h["mom"] for h in sgd.hypers] == [0.5, 0.9]
    assert [(h["mom"], h["sqr_mom"]) for h in adam.hypers] == [(0.8, 0.95), (0.9, 0.999)]
    for row in grads(5, 2):
        for xs in (ps, ts, qs, us):
            for x, gr in zip(xs, row):
                x.grad = gr.clone()
        for o in (sgd, tsgd, adam, tadam):
            o.step()
    for a, b in zip(ps + qs, ts + us):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


def test_group_alpha_is_sqr_mom():
    p = torch.ones(2)
    opt = po.RMSProp([{"params": [p], "alpha": 0.5}], lr=0.1)
    assert opt.hypers[0]["sqr_mom"] == 0.5


def test_constructor_keywords():
    ps = params()
    opt = po.Adam(ps, lr=0.01, betas=(0.8, 0.9), weight_decay=0.05)
    assert (opt.hypers[0]["mom"], opt.hypers[0]["sqr_mom"], opt.hypers[0]["wd"]) == (0.8, 0.9, 0.05)
    ref = po.Adam(params(), lr=0.01, mom=0.8, sqr_mom=0.9, wd=0.05)
    assert list(opt.hypers[0]) == list(ref.hypers[0])         # fastai's keys, fastai's order
    sgd = po.SGD(params(), lr=0.1, momentum=0.9)
    assert sgd.hypers[0]["mom"] == 0.9 and len(sgd.cbs) == 3     # the momentum chain
    assert po.RMSProp(params(), lr=0.1, alpha=0.9).hypers[0]["sqr_mom"] == 0.9
    assert po.ranger(params(), lr=0.1, alpha=0.3).alpha == 0.3    # ranger's own alpha
    o = po.Optimizer(params(), [po.weight_decay, po.sgd_step], lr=0.1, weight_decay=0.2)
    assert o.hypers[0]["wd"] == 0.2 and "weight_decay" not in o.hypers[0]


@pytest.mark.parametrize("call, word", [
    (lambda ps: po.SGD(ps, lr=0.1, betas=(0.9, 0.99)), "betas"),
    (lambda ps: po.SGD(ps, lr=0.1, alpha=0.9), "alpha"),
    (lambda ps: po.Adam(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: po.Adam(ps, lr=0.1, amsgrad=True), "amsgrad"),
    (lambda ps: po.Adam(ps, lr=0.1, mom=0.9, betas=(0.9, 0.99)), "betas"),
    (lambda ps: po.Adam(ps, 0.1, 0.9, momentum=0.9), "momentum"),      # mom given by position
    (lambda ps: po.Adam(ps, lr=0.1, betas=0.9), "betas"),
    (lambda ps: po.SGD([{"params": ps, "momentum": 0.9}], lr=0.1), "momentum"),   # no mom chain
    (lambda ps: po.SGD([{"params": ps, "betas": (0.9, 0.9)}], lr=0.1, mom=0.9), "betas"),
    (lambda ps: po.Adam([{"params": ps, "maximize": True}], lr=0.1), "maximize"),
    (lambda ps: po.Optimizer(ps, [po.sgd_step], lr=0.1, momentum=0.9), "momentum"),
])
def test_torch_names_without_a_mapping_are_refused(call, word):
    with pytest.raises(ValueError, match=word):
        call(params())


def test_refusals_in_add_param_group_and_param_groups_change_nothing():
    ps = params(3)
    opt = po.SGD(ps[:2], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": ps[2:], "momentum": 0.9})
    assert len(opt.param_lists) == 1 and len(opt.hypers) == 1
    before = dict(opt.hypers[0])
    with pytest.raises(ValueError, match="betas"):
        opt.param_groups[0]["betas"] = (0.9, 0.9)
    with pytest.raises(ValueError, match="nesterov"):
        opt.param_groups[0]["nesterov"] = True
    assert opt.hypers[0] == before
    adam = po.Adam(ps[:2], lr=0.1)
    adam.add_param_group({"params": ps[2:], "weight_decay": 0., "betas": (0.5, 0.6)})
    assert (adam.hypers[1]["wd"], adam.hypers[1]["mom"], adam.hypers[1]["sqr_mom"]) == (0., 0.5, 0.6)
    assert list(adam.hypers[1]) == list(adam.hypers[0])


def test_unknown_group_keys_are_kept():
    "Free-form keys stay (torch and fastai both keep them; custom steppers may read them)."
    opt = po.Adam([{"params": params(), "my_note": "x"}], lr=0.1)
    assert opt.hypers[0]["my_note"] == "x" and opt.param_groups[0]["my_note"] == "x"


@pytest.mark.parametrize("name", list(ROWS))
def test_param_groups_views(name):
    make, betas, momentum = ROWS[name]
    opt = make(params())
    pg, h = opt.param_groups[0], opt.hypers[0]
    keys = list(h)
    assert ("betas" in pg) == betas and ("betas" in opt.defaults) == betas
    assert ("momentum" in pg) == momentum and ("momentum" in opt.defaults) == momentum
    assert "weight_decay" in pg and pg["weight_decay"] == h["wd"]
    if betas:
        assert pg["betas"] == (h["mom"], h["sqr_mom"])
        pg["betas"] = (0.7, 0.8)
        assert (h["mom"], h["sqr_mom"]) == (0.7, 0.8)
    if momentum:
        pg["momentum"] = 0.6
        assert h["mom"] == 0.6 and pg["momentum"] == 0.6
    pg["weight_decay"] = 0.25
    assert h["wd"] == 0.25
    assert list(h) == keys                              # views are not stored
    assert "betas" not in list(pg) and "momentum" not in list(pg) and len(pg) == 1 + len(h)
    assert dict(opt.defaults) == {k: v for k, v in opt.defaults.items()}
    assert not any(k in dict(opt.defaults) for k in ("betas", "momentum", "weight_decay"))
    for o in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert ("betas" in o.defaults) == betas and ("momentum" in o.defaults) == momentum


def test_sgd_without_momentum_refuses_momentum_cycling():
    "SGD(mom=0) has no momentum stepper: cycling momentum would be ignored, so torch refuses."
    with pytest.raises(ValueError, match="momentum"):
        OneCycleLR(po.SGD(params(), lr=0.1), max_lr=0.1, total_steps=5)


def _reference_adamw(p0, gs, lrs, moms, sqr_mom, eps, wd):
    "float64 AdamW with the per-step lr and beta1 a scheduler gave (torch's and fastai's math)."
    p = p0.double().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, (g, lr, b1) in enumerate(zip(gs, lrs, moms), 1):
        g = g.double()
        p = p * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, sqr_mom * v + (1 - sqr_mom) * g * g
        p = p - lr / (1 - b1 ** t) * m / ((v / (1 - sqr_mom ** t)).sqrt() + eps)
    return p


@pytest.mark.parametrize("impl", ["auto", "per_param", "chain"])
@pytest.mark.parametrize("sched", ["onecycle", "cyclic"])
def test_adam_under_momentum_cycling_scheduler_matches_torch_adamw(sched, impl):
    steps = 12
    p0 = params(1)[0]
    gs = [row[0] for row in grads(steps, 1)]
    a, b = p0.clone(), p0.clone().requires_grad_()
    opt = po.Adam([a], lr=0.01, sqr_mom=0.999, eps=1e-8, wd=0.01)
    if impl == "chain":
        opt.fused = False
    else:
        opt.impl = impl
    topt = torch.optim.AdamW([b], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def make(o):
        if sched == "onecycle":
            return OneCycleLR(o, max_lr=0.1, total_steps=steps)            # cycle_momentum=True
        return CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3)         # cycle_momentum=True
    s, ts = make(opt), make(topt)
    lrs, moms = [], []
    for g in gs:
        assert opt.param_groups[0]["betas"] == topt.param_groups[0]["betas"]
        assert opt.hypers[0]["lr"] == topt.param_groups[0]["lr"]
        lrs.append(opt.hypers[0]["lr"])
        moms.append(opt.hypers[0]["mom"])
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
        s.step()
        ts.step()
    assert len(set(moms)) > 3                              # the momentum did cycle
    torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
    ref = _reference_adamw(p0, gs, lrs, moms, 0.999, 1e-8, 0.01)
    torch.testing.assert_close(a.double(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["auto", "per_param", "chain"])
@pytest.mark.parametrize("sched", ["onecycle", "cyclic"])
def test_sgd_under_momentum_cycling_scheduler_matches_torch_sgd(sched, impl):
    steps = 12
    p0 = params(1)[0]
    gs = [row[0] for row in grads(steps, 1)]
    a, b = p0.clone(), p0.clone().requires_grad_()
    opt = po.SGD([a], lr=0.01, mom=0.9)
    if impl == "chain":
        opt.fused = False
    else:
        opt.impl = impl
    topt = torch.optim.SGD([b], lr=0.01, momentum=0.9)
    make = (lambda o: OneCycleLR(o, max_lr=0.1, total_steps=steps)) if sched == "onecycle" \
        else (lambda o: CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3))
    s, ts = make(opt), make(topt)
    p, buf, moms = p0.double().clone(), torch.zeros(4, dtype=torch.float64), []
    for g in gs:
        assert opt.param_groups[0]["momentum"] == topt.param_groups[0]["momentum"]
        lr, mom = opt.hypers[0]["lr"], opt.hypers[0]["mom"]
        moms.append(mom)
        buf = mom * buf + g.double()                      # float64: torch's SGD momentum
        p = p - lr * buf
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
        s.step()
        ts.step()
    assert len(set(moms)) > 3
    torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.double(), p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n, r in ROWS.items() if r[1] or r[2]])
def test_every_momentum_optimizer_runs_under_onecycle_defaults(name):
    ps = params()
    opt = ROWS[name][0](ps)
    s = OneCycleLR(opt, max_lr=0.05, total_steps=4)
    seen = []
    for row in grads(3):
        for p, g in zip(ps, row):
            p.grad = g
        opt.step()
        s.step()
        seen.append(opt.hypers[0]["mom"])
    assert len(set(seen)) == 3 and all(math.isfinite(p.sum().item()) for p in ps)


# ==============================================================================================
# 2. named parameters
# ==============================================================================================
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("name", ["Adam", "SGD_mom", "ranger"])
def test_named_parameters_state_dict_like_torch(name):
    m, tm = model(), model()
    opt = ROWS[name][0](m.named_parameters())
    topt = torch.optim.Adam(tm.named_parameters(), lr=0.1)
    names = [n for n, _ in m.named_parameters()]
    assert [p for pl in opt.param_lists for p in pl] == list(m.parameters())
    assert opt.param_groups[0]["param_names"] == names
    assert "param_names" in list(opt.param_groups[0])
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert [g["param_names"] for g in sd["param_groups"]] == \
        [g["param_names"] for g in tsd["param_groups"]]
    assert all("param_names" not in h for h in opt.hypers)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    opt2 = ROWS[name][0](model().named_parameters())
    opt2.load_state_dict(back)
    assert all("param_names" not in h for h in opt2.hypers)
    assert opt2.param_groups[0]["param_names"] == names


def test_named_parameters_load_through_param_groups_only():
    "A state dict without 'hypers' (torch's layout): param_names is not taken for a hyper."
    m = model()
    opt = po.Adam(m.named_parameters(), lr=0.1)
    sd = opt.state_dict()
    del sd["hypers"]
    opt2 = po.Adam(model().named_parameters(), lr=0.2)
    opt2.load_state_dict(sd)
    assert "param_names" not in opt2.hypers[0] and opt2.hypers[0]["lr"] == 0.1


def test_named_groups_and_rules():
    m = model()
    named = list(m.named_parameters())
    opt = po.Adam([{"params": named[:2], "lr": 0.1}, {"params": named[2:]}], lr=0.01)
    assert opt.param_groups[0]["param_names"] == ["0.weight", "0.bias"]
    assert opt.param_groups[1]["param_names"] == ["2.weight", "2.bias"]
    assert opt.hypers[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="names"):
        po.Adam([named[0], named[1][1]], lr=0.1)                      # some names missing
    with pytest.raises(ValueError, match="names"):
        po.Adam([{"params": named[:2]}, {"params": [p for _, p in named[2:]]}], lr=0.1)
    opt = po.Adam(named[:2], lr=0.1)
    with pytest.raises(ValueError, match="names"):
        opt.add_param_group({"params": [p for _, p in named[2:]]})
    assert len(opt.param_lists) == 1
    opt.add_param_group({"params": named[2:]})
    assert opt.state_dict()["param_groups"][1]["param_names"] == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="param_names"):
        po.Adam([{"params": [p for _, p in named], "param_names": ["a"]}], lr=0.1)
    with pytest.raises(ValueError, match="param_names"):
        opt.param_groups[0]["param_names"] = ["only_one"]
    assert opt.param_groups[0]["param_names"] == ["0.weight", "0.bias"]
    plain = po.Adam(m.parameters(), lr=0.1)
    assert "param_names" not in plain.param_groups[0]
    assert "param_names" not in plain.state_dict()["param_groups"][0]


def test_named_params_step_like_unnamed():
    m1, m2 = model(), model()
    o1, o2 = po.Adam(m1.named_parameters(), lr=0.1), po.Adam(m2.parameters(), lr=0.1)
    for m in (m1, m2):
        m(torch.ones(2, 3)).sum().backward()
    o1.step()
    o2.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


# ==============================================================================================
# 5. global step hooks once per step, wrappers included
# ==============================================================================================
WRAPPED = {
    "Adam": lambda ps: po.Adam(ps, lr=0.1),
    "ranger": lambda ps: po.ranger(ps, lr=0.1),
    "Lookahead_SGD": lambda ps: po.Lookahead(po.SGD(ps, lr=0.1, mom=0.9), k=2),
    "OptimWrapper": lambda ps: po.OptimWrapper(ps, torch.optim.SGD, lr=0.1),
}


@pytest.mark.parametrize("name", list(WRAPPED))
def test_global_step_hooks_run_once_per_step(name):
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = WRAPPED[name]([p])
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(0)),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(5))]
    try:
        opt.register_step_pre_hook(lambda o, a, k: calls.append(1))
        opt.register_step_post_hook(lambda o, a, k: calls.append(2))
        opt.step()
        assert calls == [0, 1, 2, 5]
        calls.clear()
        opt.step()
        assert calls == [0, 1, 2, 5]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ["ranger", "Lookahead_SGD", "OptimWrapper"])
def test_inner_optimizers_own_hooks_still_run(name):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = WRAPPED[name]([p])
    calls = []
    opt.opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o is opt.opt)))
    opt.opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o is opt.opt)))
    opt.step()
    assert calls == [("pre", True), ("post", True)]
    assert p.tolist() != [1., 1., 1.]


# ==============================================================================================
# 6. version counters on every path
# ==============================================================================================
def _set_path(opt, path):
    inner = getattr(opt, "opt", opt)
    if path == "per_param":
        inner.impl = "per_param"
    elif path == "chain":
        inner.fused, inner.flatten = False, False
    elif path == "flat":
        inner.fused = False


PATH_NAMES = ["native", "torch_fused", "chain", "flat", "per_param"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("path", PATH_NAMES)
@pytest.mark.parametrize("name", list(ROWS))
def test_step_between_forward_and_backward_is_refused(name, path, dtype):
    ps = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64).to(dtype)) for _ in range(10)]
    opt = ROWS[name][0](ps)
    _set_path(opt, path)
    if path == "flat":
        for p in ps:
            p.grad = torch.zeros_like(p)
        getattr(opt, "opt", opt).flatten_params()
    loss = sum((p * p).float().sum() for p in ps)      # the products save every p for backward
    before = [p._version for p in ps]
    for p in ps:
        p.grad = torch.full_like(p, 0.5)
    if path == "torch_fused":
        with native_off():
            opt.step()
    else:
        opt.step()
    assert all(p._version > v for p, v in zip(ps, before))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
