"""Checkpoints from elsewhere (issue 8 point 8): converters between pyfastopt and torch.optim state
dicts, proven by resuming training across the libraries, and fastai checkpoints read safely."""
import collections
import copy
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch

from pyfastopt import (SGD, Adam, Lamb, RAdam, RMSProp, StateDictError, UnsafeCheckpointError,
                       from_torch_state_dict, load_fastai_checkpoint, ranger, to_torch_state_dict)

N, M = 4, 5          # steps before and after the switch; RAdam rectifies from step 6 on

# (pyfastopt factory, torch class, torch options): the same math in both libraries
PAIRS = {
    "Adam_decoupled-AdamW": (lambda g, lr: Adam(g, lr=lr, wd=0.05),
                             torch.optim.AdamW, dict(betas=(0.9, 0.99), eps=1e-5, weight_decay=0.05)),
    "Adam_L2-Adam": (lambda g, lr: Adam(g, lr=lr, wd=0.05, decouple_wd=False),
                     torch.optim.Adam, dict(betas=(0.9, 0.99), eps=1e-5, weight_decay=0.05)),
    "Adam_no_wd-Adam": (lambda g, lr: Adam(g, lr=lr, mom=0.8, sqr_mom=0.95, eps=1e-7, wd=0.),
                        torch.optim.Adam, dict(betas=(0.8, 0.95), eps=1e-7, weight_decay=0.)),
    "SGD_mom_L2-SGD": (lambda g, lr: SGD(g, lr=lr, mom=0.9, wd=0.05, decouple_wd=False),
                       torch.optim.SGD, dict(momentum=0.9, weight_decay=0.05)),
    "SGD_mom-SGD": (lambda g, lr: SGD(g, lr=lr, mom=0.9), torch.optim.SGD, dict(momentum=0.9)),
    "SGD-SGD": (lambda g, lr: SGD(g, lr=lr, wd=0.05, decouple_wd=False), torch.optim.SGD,
                dict(weight_decay=0.05)),
    "RAdam_eps0-RAdam": (lambda g, lr: RAdam(g, lr=lr, eps=0., wd=0.05),
                         torch.optim.RAdam, dict(betas=(0.9, 0.99), eps=0., weight_decay=0.05,
                                                 decoupled_weight_decay=True)),
    "RAdam_eps0_L2-RAdam": (lambda g, lr: RAdam(g, lr=lr, eps=0., wd=0.05, decouple_wd=False),
                            torch.optim.RAdam, dict(betas=(0.9, 0.99), eps=0., weight_decay=0.05)),
    "RMSProp-RMSprop": (lambda g, lr: RMSProp(g, lr=lr, wd=0.05, decouple_wd=False),
                        torch.optim.RMSprop, dict(alpha=0.99, eps=1e-8, weight_decay=0.05)),
}
LRS = [1e-2, 3e-3]


def _params():
    gen = torch.Generator().manual_seed(0)
    return [[torch.randn(3, 4, generator=gen) + 1, torch.randn(5, generator=gen)],
            [torch.randn(2, 2, generator=gen), torch.randn(3, generator=gen)]]


def _clone(groups):
    return [[p.detach().clone() for p in g] for g in groups]


def _set_grads(groups, seed):
    "Random grads; the last param never gets one (it keeps no state in either library)."
    gen = torch.Generator().manual_seed(seed)
    flat = [p for g in groups for p in g]
    for p in flat[:-1]:
        p.grad = torch.randn(p.shape, generator=gen)
    flat[-1].grad = None


def _run(opt, groups, seeds):
    for s in seeds:
        _set_grads(groups, s)
        opt.step()


def _torch_opt(cls, groups, lrs, **kw):
    return cls([{"params": g, "lr": lr} for g, lr in zip(groups, lrs)], **kw)


def _close(groups_a, groups_b):
    for a, b in zip([p for g in groups_a for p in g], [p for g in groups_b for p in g]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_pyfastopt_to_torch_resumes_the_same_training(pair):
    make, cls, kw = PAIRS[pair]
    ref_groups = _params()
    ref = make(ref_groups, LRS)                 # N + M steps all in pyfastopt
    _run(ref, ref_groups, range(N))
    sd = to_torch_state_dict(ref, cls)
    groups = _clone(ref_groups)
    other = _torch_opt(cls, groups, [1.0, 1.0])    # wrong lrs on purpose: the dict carries them
    other.load_state_dict(sd)
    assert [g["lr"] for g in other.param_groups] == LRS
    for k, v in kw.items():
        assert other.param_groups[0][k] == v
    _run(ref, ref_groups, range(N, N + M))
    _run(other, groups, range(N, N + M))
    _close(groups, ref_groups)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_torch_to_pyfastopt_resumes_the_same_training(pair):
    make, cls, kw = PAIRS[pair]
    ref_groups = _params()
    ref = _torch_opt(cls, ref_groups, LRS, **kw)      # N + M steps all in torch
    _run(ref, ref_groups, range(N))
    groups = _clone(ref_groups)
    other = make(groups, [1.0, 1.0])
    other.load_state_dict(from_torch_state_dict(ref.state_dict(), other))
    assert [h["lr"] for h in other.hypers] == LRS
    state = other.state[groups[0][0]]
    if "step" in state:
        assert type(state["step"]) is int and state["step"] == N
    _run(ref, ref_groups, range(N, N + M))
    _run(other, groups, range(N, N + M))
    _close(groups, ref_groups)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_the_two_libraries_agree_from_scratch(pair):
    "What makes the conversions exact: N + M steps in each library give the same params."
    make, cls, kw = PAIRS[pair]
    a, b = _params(), _params()
    _run(make(a, LRS), a, range(N + M))
    _run(_torch_opt(cls, b, LRS, **kw), b, range(N + M))
    _close(a, b)


def test_converted_state_is_a_copy_and_step_is_a_float_tensor():
    groups = _params()
    opt = Adam(groups, lr=LRS)
    _run(opt, groups, range(2))
    sd = to_torch_state_dict(opt, torch.optim.AdamW)
    st = sd["state"][0]
    assert st["step"].dtype == torch.float32 and st["step"].ndim == 0 and st["step"].item() == 2
    assert st["exp_avg"].data_ptr() != opt.state[groups[0][0]]["grad_avg"].data_ptr()
    assert 3 not in sd["state"]                # the param that never had a grad has no state
    back = from_torch_state_dict(sd, opt)
    assert back["state"][0]["step"] == 2 and type(back["state"][0]["step"]) is int


def _refused(fn, match):
    with pytest.raises(StateDictError, match=match):
        fn()


def test_to_torch_refuses_what_torch_cannot_do():
    g = [torch.ones(3)]
    g[0].grad = torch.ones(3)
    sgd = SGD(g, lr=0.1, mom=0.9, wd=0.1)             # fastai's decoupled weight decay
    _refused(lambda: to_torch_state_dict(sgd, torch.optim.SGD), r"decoupled weight decay.*L2")
    radam = RAdam(g, lr=0.1)
    _refused(lambda: to_torch_state_dict(radam, torch.optim.RAdam), r"eps=0")
    rms = RMSProp(g, lr=0.1, mom=0.9)
    _refused(lambda: to_torch_state_dict(rms, torch.optim.RMSprop), r"no torch.optim optimizer")
    _refused(lambda: to_torch_state_dict(Lamb(g, lr=0.1), torch.optim.Adam), r"lamb_step")
    _refused(lambda: to_torch_state_dict(ranger(g, lr=0.1), torch.optim.RAdam), r"Lookahead")
    adam = Adam(g, lr=0.1, wd=0.1)
    _refused(lambda: to_torch_state_dict(adam, torch.optim.Adam), r"AdamW")
    _refused(lambda: to_torch_state_dict(adam, torch.optim.SGD), r"Adam or torch.optim.AdamW")
    l2 = Adam(g, lr=0.1, wd=0.1, decouple_wd=False)
    _refused(lambda: to_torch_state_dict(l2, torch.optim.AdamW), r"L2 weight decay.*torch.optim.Adam'")
    adam.step()
    adam.state[g[0]]["do_wd"] = False
    _refused(lambda: to_torch_state_dict(adam, torch.optim.AdamW), r"do_wd=False")
    kindless = {k: v for k, v in Adam(g, lr=0.1).state_dict().items() if k != "kind"}
    _refused(lambda: to_torch_state_dict(kindless, torch.optim.AdamW), r"no 'kind'")


def test_torch_rmsprop_momentum_is_other_math_so_it_is_refused():
    "torch's RMSprop momentum accumulates g/rms, fastai's accumulates g: different numbers."
    a, b = [torch.ones(3)], [torch.ones(3)]
    fa, tb = RMSProp(a, lr=0.1, mom=0.9), torch.optim.RMSprop(b, lr=0.1, momentum=0.9)
    for s in range(3):
        gen = torch.Generator().manual_seed(s)
        grad = torch.randn(3, generator=gen) * (s + 1)
        a[0].grad, b[0].grad = grad.clone(), grad.clone()
        fa.step()
        tb.step()
    assert (a[0] - b[0]).abs().max() > 1e-3
    target = RMSProp([torch.ones(3)], lr=0.1)
    _refused(lambda: from_torch_state_dict(tb.state_dict(), target), r"momentum.*must be 0")


@pytest.mark.parametrize("case,match", [
    (dict(cls=torch.optim.Adam, amsgrad=True), r"amsgrad"),
    (dict(cls=torch.optim.Adam, maximize=True), r"maximize"),
    (dict(cls=torch.optim.AdamW, weight_decay=0.1), r"decoupled.*decouple_wd=True"),
    (dict(cls=torch.optim.RAdam), r"not a torch.optim \('Adam', 'AdamW'\) group"),
    (dict(cls=torch.optim.NAdam), r"not a torch.optim"),
    (dict(cls=torch.optim.Adamax), r"amsgrad|not a torch.optim"),
])
def test_from_torch_refuses_other_options_into_L2_adam(case, match):
    case = dict(case)
    cls = case.pop("cls")
    p = torch.ones(3)
    p.grad = torch.ones(3)
    t = cls([p], lr=0.1, **case)
    t.step()
    target = Adam([torch.ones(3)], lr=0.1, decouple_wd=False)
    before = copy.deepcopy([dict(h) for h in target.hypers])
    _refused(lambda: from_torch_state_dict(t.state_dict(), target), match)
    assert [dict(h) for h in target.hypers] == before


def test_from_torch_refuses_sgd_options_and_wrong_shapes():
    p = torch.ones(3)
    p.grad = torch.ones(3)
    for kw, match in [(dict(momentum=0.9, nesterov=True), r"nesterov"),
                      (dict(momentum=0.9, dampening=0.5), r"dampening"),
                      (dict(momentum=0.), r"momentum.*is 0")]:
        t = torch.optim.SGD([p], lr=0.1, **kw)
        t.step()
        _refused(lambda: from_torch_state_dict(t.state_dict(), SGD([torch.ones(3)], lr=0.1, mom=0.9)),
                 match)
    t = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    t.step()
    _refused(lambda: from_torch_state_dict(t.state_dict(), SGD([torch.ones(4)], lr=0.1, mom=0.9)),
             r"shape \(3,\).*\(4,\)")
    _refused(lambda: from_torch_state_dict(t.state_dict(),
                                           SGD([torch.ones(3), torch.ones(3)], lr=0.1, mom=0.9)),
             r"groups have \[1\] params")


# ---- fastai checkpoints --------------------------------------------------------------------------
class _GetAttrLike:
    "fastcore's GetAttr pickling: the instance __dict__ as state, restored by __setstate__."
    def __setstate__(self, data):
        self.__dict__.update(data)


@pytest.fixture
def fake_fastcore(monkeypatch):
    """A module `fastcore.foundation` with a class `L` that pickles as fastcore's `L` does
    (class reference + `{'items': [...]}` state), present only while a test writes its file."""
    calls = []

    class L(_GetAttrLike):
        def __init__(self, items):
            self.items = list(items)

        def __setstate__(self, data):
            calls.append(data)          # must never run when pyfastopt reads the file
            super().__setstate__(data)
    L.__module__, L.__qualname__ = "fastcore.foundation", "L"
    pkg, mod = types.ModuleType("fastcore"), types.ModuleType("fastcore.foundation")
    mod.L, pkg.foundation = L, mod
    monkeypatch.setitem(sys.modules, "fastcore", pkg)
    monkeypatch.setitem(sys.modules, "fastcore.foundation", mod)
    yield L, calls


def _fastai_adam_ref(p, g, st, lr, mom, sqr_mom, eps, wd):
    "fastai's Adam step in float64, written from the spec's formulas (independent of pyfastopt)."
    p = p * (1 - lr * wd)
    st["grad_avg"] = mom * st.get("grad_avg", torch.zeros_like(p)) + (1 - mom) * g
    st["sqr_avg"] = sqr_mom * st.get("sqr_avg", torch.zeros_like(p)) + (1 - sqr_mom) * g * g
    st["step"] = st.get("step", 0) + 1
    d1, d2 = 1 - mom ** st["step"], 1 - sqr_mom ** st["step"]
    return p - lr / d1 * st["grad_avg"] / ((st["sqr_avg"] / d2).sqrt() + eps)


HYP = dict(wd=0.01, sqr_mom=0.99, lr=0.01, mom=0.9, eps=1e-5)   # fastai's key order


def _grad(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _fastai_file(path, L, steps=3):
    """Write what fastai's `Learner.save(with_opt=True)` writes for a Linear(4, 2) trained with
    fastai's Adam for `steps` steps: `torch.save({'model': ..., 'opt': {'state': [...],
    'hypers': L([...])}}, pickle_protocol=2)`, the numbers from the float64 reference."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    sw, sb = {}, {}
    for s in range(steps):
        w = _fastai_adam_ref(w, _grad((2, 4), s), sw, **HYP)
        b = _fastai_adam_ref(b, _grad((2,), 100 + s), sb, **HYP)
    f32 = lambda st: {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
    model = collections.OrderedDict(weight=w.float(), bias=b.float())
    opt = {"state": [f32(sw), f32(sb)], "hypers": L([dict(HYP)])}
    torch.save({"model": model, "opt": opt}, path, pickle_protocol=2)
    return w, b, sw, sb


def test_fastai_file_really_holds_fastcore_L(fake_fastcore, tmp_path):
    L, _ = fake_fastcore
    _fastai_file(tmp_path / "learner.pth", L)
    with zipfile.ZipFile(tmp_path / "learner.pth") as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"fastcore.foundation\nL\n" in data          # GLOBAL 'fastcore.foundation L'
    with pytest.raises(pickle.UnpicklingError, match="fastcore.foundation.L"):
        torch.load(tmp_path / "learner.pth", weights_only=True)


def test_fastai_checkpoint_resumes_with_fastais_numbers(fake_fastcore, tmp_path, monkeypatch):
    L, calls = fake_fastcore
    w, b, sw, sb = _fastai_file(tmp_path / "learner.pth", L)
    monkeypatch.delitem(sys.modules, "fastcore.foundation")     # nothing of "fastcore" is left
    monkeypatch.delitem(sys.modules, "fastcore")
    ckpt = load_fastai_checkpoint(tmp_path / "learner.pth")
    assert type(ckpt.opt["hypers"]) is list and ckpt.opt["hypers"] == [HYP]
    assert type(ckpt.opt["state"]) is list and ckpt.opt["state"][0]["step"] == 3
    assert calls == []                                          # the stand-in read it, not L
    resumed = {}
    for impl in ("auto", "per_param"):
        model = torch.nn.Linear(4, 2)
        model.load_state_dict(ckpt.model)
        opt = Adam(model.parameters(), lr=0.5)
        opt.impl = impl
        # fastai's layout, as is (a copy each time: like torch, a load keeps the dict's tensors)
        opt.load_state_dict(copy.deepcopy(ckpt.opt))
        assert dict(opt.hypers[0]) == HYP
        for s in range(3, 6):
            model.weight.grad = _grad((2, 4), s).float()
            model.bias.grad = _grad((2,), 100 + s).float()
            opt.step()
        resumed[impl] = (model.weight.detach().clone(), model.bias.detach().clone())
    for s in range(3, 6):                                       # fastai's math, float64
        w = _fastai_adam_ref(w, _grad((2, 4), s), sw, **HYP)
        b = _fastai_adam_ref(b, _grad((2,), 100 + s), sb, **HYP)
    for got in resumed.values():
        torch.testing.assert_close(got[0], w.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], b.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed["auto"], resumed["per_param"], rtol=1e-6, atol=1e-7)


def test_fastai_ranger_layout_with_L_of_L_slow_weights(fake_fastcore, tmp_path):
    L, _ = fake_fastcore
    p = torch.ones(3)
    src = ranger([p], lr=0.1, k=2)
    p.grad = torch.ones(3)
    src.step()
    sd = src.state_dict()
    fastai_sd = {"state": [dict(sd["state"][0])], "hypers": L([dict(sd["hypers"][0])]),
                 "count": 1, "slow_weights": L([L([sd["slow_weights"][0][0]])])}
    torch.save({"model": {}, "opt": fastai_sd}, tmp_path / "r.pth", pickle_protocol=2)
    ckpt = load_fastai_checkpoint(tmp_path / "r.pth")
    assert type(ckpt.opt["slow_weights"][0]) is list
    q = torch.ones(3)
    dst = ranger([q], lr=0.1, k=2)
    dst.load_state_dict(ckpt.opt)
    assert dst.count == 1 and torch.equal(dst.slow_weights[0][0], torch.ones(3))
    q.data.copy_(p)
    p.grad, q.grad = torch.ones(3), torch.ones(3)
    src.step()
    dst.step()
    assert torch.equal(p, q)


def test_fastai_model_only_file(tmp_path):
    torch.save(collections.OrderedDict(weight=torch.ones(2)), tmp_path / "m.pth", pickle_protocol=2)
    ckpt = load_fastai_checkpoint(tmp_path / "m.pth")
    assert ckpt.opt is None and torch.equal(ckpt.model["weight"], torch.ones(2))


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_file_with_os_system_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "opt": _Evil(f"touch {marker}")}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"refused to read.*system"):
        load_fastai_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


class _Plain:
    "Any class at all: a fastai checkpoint never holds one."


def test_file_with_any_other_global_is_refused(tmp_path):
    torch.save({"model": {}, "opt": {"hypers": [_Plain()]}}, tmp_path / "c.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"_Plain"):
        load_fastai_checkpoint(tmp_path / "c.pth")
    torch.save({"model": {}, "opt": {"hypers": _Evil("true")}}, tmp_path / "e.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"system"):
        load_fastai_checkpoint(tmp_path / "e.pth")


def test_fastcore_L_with_other_state_is_refused(fake_fastcore, tmp_path):
    L, _ = fake_fastcore
    bad = L([])
    bad.__dict__ = {"items": [], "extra": "x"}
    torch.save({"model": {}, "opt": {"hypers": bad}}, tmp_path / "l.pth", pickle_protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=r"does not hold a list of items"):
        load_fastai_checkpoint(tmp_path / "l.pth")
