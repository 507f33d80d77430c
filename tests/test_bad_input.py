"""Bad input (issue 9, point 6): every case is refused with an error of the expected type whose
message names the argument, and leaves the optimizer exactly as it was: param values, grads,
state (cloned) and hypers (deep copy), requires_grad and frozen_idx. Valid but unusual input
(numpy scalars, ...) is accepted and steps to the same numbers as plain Python floats."""
import copy
import decimal
import fractions
import math
import os
import re
import sys
import warnings

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import RefOptimizer, native_off, ref_factory  # noqa: E402

from pyfastopt import (SGD, Adam, Larc, Lookahead, Optimizer, RAdam, ranger, sgd_step,  # noqa: E402
                       tensor, tst_param)


# ---- building blocks ------------------------------------------------------------------------------
def P(vals=(1., 2., 3.), grad=(0.1, -0.2, 0.3)):
    t = torch.tensor(vals)
    t.grad = torch.tensor(grad)
    return t


def two_groups():
    return [[P(), P((4., 5.), (0.5, 0.5))], [P((-1., 0.5, 2.), (0.3, 0.3, -0.1))]]


def stepped_adam(path="auto"):
    "An Adam over two groups, stepped once (so it has state), stepping on `path` from then on."
    opt = Adam(two_groups(), lr=0.1)
    if path == "per_param":
        opt.impl = "per_param"
    elif path == "chain":
        opt.fused = False
    opt.step()
    return opt


def snapshot(opt):
    "Everything a refused call must leave alone, copied."
    ps = [p for pl in opt.param_lists for p in pl]
    st = opt.state
    return dict(
        params=[p.detach().clone() for p in ps],
        grads=[None if p.grad is None else p.grad.detach().clone() for p in ps],
        requires_grad=[p.requires_grad for p in ps],
        state=[{k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                for k, v in st[p].items()} for p in ps],
        hypers=copy.deepcopy([dict(h) for h in opt.hypers]),
        frozen_idx=getattr(opt, "frozen_idx", None),
        group_sizes=[len(pl) for pl in opt.param_lists],
    )


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) \
                or (a.dtype, a.shape, a.layout) != (b.dtype, b.shape, b.layout):
            return False
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        if a.is_floating_point():       # NaN where NaN was, every other value bit-equal
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.), b.nan_to_num(0.))
        return torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def assert_unchanged(before, opt):
    after = snapshot(opt)
    for k in before:
        assert _same(before[k], after[k]), f"{k} changed: {before[k]!r} -> {after[k]!r}"


def refused(opt, act, exc, pattern):
    "`act(opt)` raises `exc` matching `pattern`, and `opt` is exactly as it was."
    before = snapshot(opt)
    with pytest.raises(exc, match=pattern):
        act(opt)
    assert_unchanged(before, opt)


# ---- constructor: hyper values ------------------------------------------------------------------
BAD_CTOR_HYPERS = [
    # (factory, kwargs, exception, pattern)
    (Adam, dict(lr=None), TypeError, r"^lr must be a number, got None$"),
    (SGD, dict(lr=None), TypeError, r"^lr must be a number, got None$"),
    (Adam, dict(lr=10 ** 400), ValueError, r"^lr must be a finite number >= 0, got int of 401 digits"),
    (Adam, dict(lr=-10 ** 400), ValueError, r"^lr must be .*int of 401 digits"),
    (Adam, dict(lr="0.1"), TypeError, r"^lr must be a number, got str '0.1'"),
    (Adam, dict(lr=b"0.1"), TypeError, r"^lr must be a number, got bytes"),
    (Adam, dict(lr=[0.1, 0.2]), ValueError, r"2 values for lr but there are 1 parameter groups"),
    (Adam, dict(lr=float("inf")), ValueError, r"^lr must be a finite number >= 0, got inf"),
    (Adam, dict(lr=-float("inf")), ValueError, r"^lr must be a finite number"),
    (Adam, dict(lr=float("nan")), ValueError, r"^lr must be a finite number >= 0, got nan"),
    (Adam, dict(lr=-0.1), ValueError, r"^lr must be a finite number >= 0, got -0.1"),
    (Adam, dict(lr=[[0.1]]), TypeError, r"^lr must be a number, got list \[0.1\]"),
    (Adam, dict(lr={"a": 1}), TypeError, r"^lr must be a number, got dict"),
    (Adam, dict(lr={0.1, 0.2}), TypeError, r"^lr got a set .*a set has no order"),
    (Adam, dict(lr=frozenset({0.1, 0.2})), TypeError, r"^lr got a frozenset"),
    (Adam, dict(lr=1j), TypeError, r"^lr must be a number, got complex"),
    (Adam, dict(lr=True), TypeError, r"^lr must be a number, got True"),
    (Adam, dict(lr=decimal.Decimal("0.1")), TypeError, r"^lr must be a number, got Decimal"),
    (Adam, dict(lr=object()), TypeError, r"^lr must be a number, got object"),
    (Adam, dict(lr="x" * (1 << 20)), TypeError, r"^lr must be a number, got str 'xxx.*\(1048578 characters\)$"),
    (Adam, dict(lr=torch.tensor(0.1)), TypeError, r"^lr got a 0-d tensor"),
    (Adam, dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"2 values for lr but there are 1"),
    (Adam, dict(lr=np.array([0.1, 0.2])), ValueError, r"2 values for lr but there are 1"),
    (Adam, dict(lr=np.bool_(True)), TypeError, r"^lr must be a number, got True"),
    (Adam, dict(lr=np.float64("nan")), ValueError, r"^lr must be a finite number >= 0, got nan"),
    (Adam, dict(lr=np.complex128(1j)), TypeError, r"^lr must be a number, got complex"),
    (Adam, dict(lr=torch.tensor([1j])), TypeError, r"^lr must be a real number, got a torch.complex64"),
    (Adam, dict(lr=slice("a")), TypeError, r"^lr \(slice stop\) must be a number, got str"),
    (Adam, dict(lr=slice(0.1, "x")), TypeError, r"^lr \(slice stop\) must be a number"),
    (Adam, dict(lr=slice(-1, 0.1)), ValueError, r"^lr \(slice start\) must be a finite number >= 0"),
    (Adam, dict(lr=slice(0.1, float("nan"))), ValueError, r"^lr \(slice stop\) must be a finite"),
    (Adam, dict(lr=0.1, mom=1.0), ValueError, r"^mom must be a number in \[0, 1\), got 1.0"),
    (Adam, dict(lr=0.1, sqr_mom=1.0), ValueError, r"^sqr_mom must be a number in \[0, 1\)"),
    (Adam, dict(lr=0.1, eps=-1e-8), ValueError, r"^eps must be a finite number >= 0"),
    (Adam, dict(lr=0.1, wd="0"), TypeError, r"^wd must be a number, got str"),
    (SGD, dict(lr=0.1, mom=1.5), ValueError, r"^mom must be a number in \[0, 1\], got 1.5"),
    (RAdam, dict(lr=0.1, beta=-1), ValueError, r"^beta must be a finite number >= 0, got -1"),
    (Larc, dict(lr=0.1, trust_coeff=float("inf")), ValueError, r"^trust_coeff must be a finite"),
]


@pytest.mark.parametrize("fac,kw,exc,pattern", BAD_CTOR_HYPERS,
                         ids=[f"{f.__name__}-{i}" for i, (f, *_) in enumerate(BAD_CTOR_HYPERS)])
def test_bad_hyper_at_construction(fac, kw, exc, pattern):
    params = two_groups()[0]
    before = [(p.clone(), p.grad.clone()) for p in params]
    with pytest.raises(exc, match=pattern):
        fac(params, **kw)
    for p, (v, g) in zip(params, before):
        assert torch.equal(p, v) and torch.equal(p.grad, g) and p.requires_grad is False


# ---- constructor: params ------------------------------------------------------------------------
def _int_param():
    return torch.tensor([1, 2, 3])


BAD_PARAMS = [
    ([torch.tensor([1, 2, 3])], TypeError, r"^params must be floating point tensors, got torch.int64 \(param 0 of group 0\)$"),
    ([torch.tensor([1, 2], dtype=torch.int32)], TypeError, r"got torch.int32 \(param 0 of group 0\)"),
    ([torch.tensor([True])], TypeError, r"got torch.bool \(param 0 of group 0\)"),
    ([torch.tensor([1 + 1j])], TypeError, r"got torch.complex64 \(param 0 of group 0\) \(complex params are not supported"),
    ([torch.tensor([1 + 1j], dtype=torch.complex128)], TypeError, r"got torch.complex128"),
    ([P(), torch.tensor([1, 2, 3])], TypeError, r"got torch.int64 \(param 1 of group 0\)"),
    ([[P()], [P(), torch.tensor([1 + 1j])]], TypeError, r"got torch.complex64 \(param 1 of group 1\)"),
    ([P(), None], TypeError, r"^params must be tensors, got None \(param 1 of group 0\)"),
    ([P(), "w"], TypeError, r"^params must be tensors, got str 'w'"),
    ([P(), 3], TypeError, r"^params must be tensors, got int 3"),
    ([{"params": [P()]}, {"params": [torch.tensor([7])]}], TypeError, r"got torch.int64 \(param 0 of group 1\)"),
]


@pytest.mark.parametrize("params,exc,pattern", BAD_PARAMS, ids=[str(i) for i in range(len(BAD_PARAMS))])
@pytest.mark.parametrize("fac", [Adam, SGD])
def test_bad_params_at_construction(fac, params, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fac(params, lr=0.1)


def test_duplicate_param_named():
    p = P()
    with pytest.raises(ValueError, match=r"same tensor more than once \(shape \(3,\), param 0 of group 1\)"):
        Adam([[p], [p]], lr=0.1)


# ---- constructor: other arguments ---------------------------------------------------------------
BAD_ARGS = [
    (lambda ps: Adam(ps, lr=0.1, decouple_wd="no"), TypeError, r"^decouple_wd must be True or False, got 'no'"),
    (lambda ps: Adam(ps, lr=0.1, decouple_wd=None), TypeError, r"^decouple_wd must be True or False"),
    (lambda ps: SGD(ps, lr=0.1, decouple_wd=2), TypeError, r"^decouple_wd must be True or False, got 2"),
    (lambda ps: Larc(ps, lr=0.1, clip="yes"), TypeError, r"^clip must be True or False, got 'yes'"),
    (lambda ps: Larc(ps, lr=0.1, clip=0.5), TypeError, r"^clip must be True or False"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), k=0), ValueError, r"^k must be an integer >= 1, got 0"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), k=-1), ValueError, r"^k must be an integer >= 1, got -1"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), k=2.5), ValueError, r"^k must be an integer, got 2.5"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), k=True), TypeError, r"^k must be an integer, got True"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), k="6"), TypeError, r"^k must be an integer, got str"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), k=float("nan")), ValueError, r"^k must be an integer, got nan"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), alpha=float("nan")), ValueError, r"^alpha must be a number in \[0, 1\], got nan"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), alpha=1.5), ValueError, r"^alpha must be a number in \[0, 1\], got 1.5"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), alpha=-0.1), ValueError, r"^alpha must be a number in \[0, 1\]"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), alpha=None), TypeError, r"^alpha must be a number, got None"),
    (lambda ps: Lookahead(SGD(ps, lr=0.1), alpha=torch.tensor(0.5)), TypeError, r"^alpha got a tensor"),
    (lambda ps: Lookahead("sgd"), TypeError, r"^opt must be a pyfastopt optimizer"),
    (lambda ps: ranger(ps, lr=0.1, k=0), ValueError, r"^k must be an integer >= 1"),
    (lambda ps: ranger(ps, lr=0.1, alpha=2), ValueError, r"^alpha must be a number in \[0, 1\]"),
    (lambda ps: Optimizer(ps, [sgd_step, "x"], lr=0.1), TypeError, r"^cbs must be callables"),
    (lambda ps: Optimizer([], sgd_step, lr=0.1), ValueError, r"^params must hold at least one tensor"),
    (lambda ps: Optimizer([{"params": ps, True: 1}], sgd_step, lr=0.1), TypeError, r"^hyper name must be a non-empty string, got True"),
    (lambda ps: Optimizer([{"params": ps, "lr": -1}], sgd_step, lr=0.1), ValueError, r"^lr must be a finite number >= 0, got -1"),
    (lambda ps: Optimizer([{"params": ps, "lr": torch.tensor(0.1)}], sgd_step, lr=0.1), TypeError, r"^lr got a tensor"),
]


@pytest.mark.parametrize("make,exc,pattern", BAD_ARGS, ids=[str(i) for i in range(len(BAD_ARGS))])
def test_bad_argument_at_construction(make, exc, pattern):
    params = two_groups()[0]
    before = [(p.clone(), p.grad.clone()) for p in params]
    with pytest.raises(exc, match=pattern):
        make(params)
    for p, (v, g) in zip(params, before):
        assert torch.equal(p, v) and torch.equal(p.grad, g)


# ---- attributes set later -----------------------------------------------------------------------
BAD_ATTRS = [
    ("impl", "x", ValueError, r"^impl must be one of"),
    ("impl", None, ValueError, r"^impl must be one of"),
    ("fused", 1, TypeError, r"^fused must be True or False, got 1"),
    ("fused", "yes", TypeError, r"^fused must be True or False"),
    ("flatten", None, TypeError, r"^flatten must be True or False, got None"),
]


@pytest.mark.parametrize("name,value,exc,pattern", BAD_ATTRS, ids=[f"{n}-{v!r}" for n, v, *_ in BAD_ATTRS])
def test_bad_attribute(name, value, exc, pattern):
    opt = stepped_adam()
    old = getattr(opt, name)
    refused(opt, lambda o: setattr(o, name, value), exc, pattern)
    assert getattr(opt, name) == old


@pytest.mark.parametrize("name,value,exc,pattern", [
    ("k", 0, ValueError, r"^k must be an integer >= 1"), ("k", 1.5, ValueError, r"^k must be an integer"),
    ("alpha", float("nan"), ValueError, r"^alpha must be"), ("alpha", 2, ValueError, r"^alpha must be"),
], ids=["k0", "k1.5", "alpha-nan", "alpha2"])
def test_lookahead_attribute_checked_when_set(name, value, exc, pattern):
    opt = Lookahead(Adam(two_groups(), lr=0.1), k=2, alpha=0.5)
    opt.step()
    refused(opt, lambda o: setattr(o, name, value), exc, pattern)
    assert (opt.k, opt.alpha) == (2, 0.5)


# ---- set_hyper / set_hypers ---------------------------------------------------------------------
BAD_SET_HYPER = [
    (True, 0.1, TypeError, r"^hyper name must be a non-empty string, got True$"),
    (False, 0.1, TypeError, r"^hyper name must be a non-empty string, got False"),
    (float("nan"), 0.1, TypeError, r"^hyper name must be a non-empty string, got nan"),
    ("", 0.1, TypeError, r"^hyper name must be a non-empty string, got str ''"),
    (None, 0.1, TypeError, r"^hyper name must be a non-empty string, got None"),
    (1, 0.1, TypeError, r"^hyper name must be a non-empty string, got 1"),
    ("params", [P()], ValueError, r"^'params' is not a hyper"),
    ("lr", None, TypeError, r"^lr must be a number, got None$"),
    ("lr", 10 ** 400, ValueError, r"^lr must be a finite number >= 0, got int of 401 digits"),
    ("lr", "0.1", TypeError, r"^lr must be a number, got str '0.1'"),
    ("lr", "x" * (1 << 20), TypeError, r"^lr must be a number, got str .*\(1048578 characters\)$"),
    ("lr", float("inf"), ValueError, r"^lr must be a finite number"),
    ("lr", float("nan"), ValueError, r"^lr must be a finite number"),
    ("lr", -1, ValueError, r"^lr must be a finite number >= 0, got -1"),
    ("lr", [0.1, 0.2, 0.3], ValueError, r"3 values for lr but there are 2 parameter groups"),
    ("lr", {0.1, 0.2}, TypeError, r"^lr got a set"),
    ("lr", torch.tensor(0.1), TypeError, r"^lr got a 0-d tensor"),
    ("lr", torch.tensor([0.1, float("nan")]), ValueError, r"^lr must be a finite number"),
    ("lr", [0.1, "a"], TypeError, r"^lr must be a number, got str 'a'"),
    ("lr", [0.1, [0.2]], TypeError, r"^lr must be a number, got list"),
    ("lr", slice("a"), TypeError, r"^lr \(slice stop\) must be a number"),
    ("lr", slice(0.1, -1.), ValueError, r"^lr \(slice stop\) must be a finite number >= 0"),
    ("mom", 1.0, ValueError, r"^mom must be a number in \[0, 1\), got 1.0"),
    ("mom", [0.9, -0.1], ValueError, r"^mom must be a number in \[0, 1\)"),
    ("sqr_mom", np.float64(1.5), ValueError, r"^sqr_mom must be a number in \[0, 1\)"),
    ("eps", np.int64(-1), ValueError, r"^eps must be a finite number >= 0, got -1"),
    ("name", None, TypeError, r"^name got None: pass a value"),
]


@pytest.mark.parametrize("k,v,exc,pattern", BAD_SET_HYPER, ids=[str(i) for i in range(len(BAD_SET_HYPER))])
def test_bad_set_hyper(k, v, exc, pattern):
    refused(stepped_adam(), lambda o: o.set_hyper(k, v), exc, pattern)


@pytest.mark.parametrize("kw,exc,pattern", [
    (dict(lr=0.5, mom=2.0), ValueError, r"^mom must be"),
    (dict(wd=0.2, lr=[0.1, 0.2, 0.3]), ValueError, r"values for lr"),
    ({"lr": 0.5, "": 1}, TypeError, r"^hyper name must be a non-empty string"),
    (dict(eps=1e-3, lr=None), TypeError, r"^lr must be a number, got None"),
], ids=["mom", "length", "empty-name", "none"])
def test_bad_set_hypers_changes_nothing(kw, exc, pattern):
    refused(stepped_adam(), lambda o: o.set_hypers(**kw), exc, pattern)


# ---- freeze_to / all_params ---------------------------------------------------------------------
BAD_FREEZE = [
    (-10, ValueError, r"^n must be an integer >= -2 \(minus the number of param groups, 2\), got -10$"),
    (-3, ValueError, r"^n must be an integer >= -2"),
    (-2 ** 31, ValueError, r"^n must be an integer >= -2 .*got -2147483648"),
    (float("nan"), ValueError, r"^n must be an integer, got nan"),
    (float("inf"), ValueError, r"^n must be an integer, got inf"),
    (True, TypeError, r"^n must be an integer, got True"),
    (np.bool_(False), TypeError, r"^n must be an integer, got False"),
    (1.5, ValueError, r"^n must be an integer, got 1.5"),
    ("1", TypeError, r"^n must be an integer, got str '1'"),
    (None, TypeError, r"^n must be an integer, got None"),
]


@pytest.mark.parametrize("n,exc,pattern", BAD_FREEZE, ids=[repr(n) for n, *_ in BAD_FREEZE])
def test_bad_freeze_to(n, exc, pattern):
    opt = stepped_adam()
    opt.freeze_to(1)
    refused(opt, lambda o: o.freeze_to(n), exc, pattern)
    assert opt.frozen_idx == 1


BAD_ALL_PARAMS = [
    (5, IndexError, r"^n must be a param group index in \[-2, 1\] \(this optimizer has 2 groups\), got 5$"),
    (2, IndexError, r"^n must be a param group index in \[-2, 1\]"),
    (-3, IndexError, r"^n must be a param group index in \[-2, 1\].*got -3"),
    ("a", TypeError, r"^n must be an integer, got str 'a'"),
    (True, TypeError, r"^n must be an integer, got True"),
    (0.5, ValueError, r"^n must be an integer, got 0.5"),
]


@pytest.mark.parametrize("n,exc,pattern", BAD_ALL_PARAMS, ids=[repr(n) for n, *_ in BAD_ALL_PARAMS])
def test_bad_all_params(n, exc, pattern):
    refused(stepped_adam(), lambda o: o.all_params(n), exc, pattern)


# ---- groups added or replaced -------------------------------------------------------------------
BAD_GROUPS = [
    (lambda o: o.add_param_group({"params": [torch.tensor([1, 2])]}), TypeError, r"got torch.int64 \(param 0 of group 2\)"),
    (lambda o: o.add_param_group({"params": [torch.tensor([1j])]}), TypeError, r"got torch.complex64 \(param 0 of group 2\)"),
    (lambda o: o.add_param_group({"params": [P(), torch.tensor([True])]}), TypeError, r"got torch.bool \(param 1 of group 2\)"),
    (lambda o: o.add_param_group({"params": [o.param_lists[0][0]]}), ValueError, r"same tensor more than once"),
    (lambda o: o.add_param_group({"params": ["w"]}), TypeError, r"^params must be tensors, got str"),
    (lambda o: o.add_param_group({"params": [P()], "lr": None}), TypeError, r"^lr must be a number, got None"),
    (lambda o: o.add_param_group({"params": [P()], "lr": float("nan")}), ValueError, r"^lr must be a finite number"),
    (lambda o: o.add_param_group({"params": [P()], "mom": 1.0}), ValueError, r"^mom must be a number in \[0, 1\)"),
    (lambda o: o.add_param_group({"params": [P()], True: 0.1}), TypeError, r"^hyper name must be a non-empty string, got True"),
    (lambda o: o.add_param_group({"params": [P()], "lr": torch.tensor(0.1)}), TypeError, r"^lr got a tensor"),
    (lambda o: o.add_param_group([P()]), TypeError, r"^param_group must be a dict"),
    (lambda o: o.param_groups[0].__setitem__("params", [torch.tensor([1, 2])]), TypeError, r"got torch.int64 \(param 0 of group 0\)"),
    (lambda o: o.param_groups[1].__setitem__("params", [P(), torch.tensor([1j])]), TypeError, r"got torch.complex64 \(param 1 of group 1\)"),
]


@pytest.mark.parametrize("act,exc,pattern", BAD_GROUPS, ids=[str(i) for i in range(len(BAD_GROUPS))])
def test_bad_group(act, exc, pattern):
    refused(stepped_adam(), act, exc, pattern)


# ---- at the step: grads swapped in, hypers written directly -------------------------------------
def _swap_shape(o):
    o.param_lists[0][1].grad.data = torch.zeros(3)


def _swap_dtype(o):
    g = o.param_lists[1][0].grad
    g.data = g.data.double()


def _swap_sparse(o):
    o.param_lists[0][0].grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.tensor([1., 1.]), (3,),
                                                       check_invariants=True)


def _set(i, k, v, via_groups=False):
    def act(o):
        (o.param_groups if via_groups else o.hypers)[i][k] = v
    return act


AT_STEP = [
    ("grad-shape", _swap_shape, ValueError, r"^grad of param 1 of group 0, shape \(2,\) has shape \(3,\)"),
    ("grad-dtype", _swap_dtype, ValueError, r"^grad of param 0 of group 1, shape \(3,\) has dtype torch.float64"),
    ("grad-sparse", _swap_sparse, ValueError, r"^sparse gradients are not supported \(param 0 of group 0"),
    ("lr-nan", _set(0, "lr", float("nan")), ValueError, r"^lr must be a finite number >= 0, got nan \(hypers\[0\]\['lr'\] of param group 0"),
    ("lr-neg-groups", _set(1, "lr", -1, True), ValueError, r"^lr must be a finite number >= 0, got -1 \(hypers\[1\]\['lr'\] of param group 1"),
    ("lr-str", _set(0, "lr", "0.1"), TypeError, r"^lr must be a number, got str '0.1' \(hypers\[0\]"),
    ("lr-none", _set(1, "lr", None), TypeError, r"^lr must be a number, got None \(hypers\[1\]"),
    ("lr-inf", _set(0, "lr", float("inf"), True), ValueError, r"^lr must be a finite number"),
    ("lr-tensor-nan", _set(0, "lr", torch.tensor(float("nan"))), ValueError, r"^lr must be a finite number"),
    ("mom-1", _set(0, "mom", 1.0), ValueError, r"^mom must be a number in \[0, 1\), got 1.0 \(hypers\[0\]\['mom'\]"),
    ("sqr_mom-1.5", _set(1, "sqr_mom", 1.5), ValueError, r"^sqr_mom must be a number in \[0, 1\)"),
    ("eps-neg", _set(0, "eps", -1e-5, True), ValueError, r"^eps must be a finite number >= 0"),
    ("wd-huge-int", _set(0, "wd", 10 ** 400), ValueError, r"^wd must be a finite number .*int of 401 digits"),
    ("name-true", _set(1, True, 0.1), TypeError, r"^hyper names must be non-empty strings, got True in hypers\[1\]"),
]
PATHS = ["auto", "per_param", "chain", "torch-kernels"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name,act,exc,pattern", AT_STEP, ids=[c[0] for c in AT_STEP])
def test_refused_at_step_before_anything_moves(name, act, exc, pattern, path):
    with native_off() if path == "torch-kernels" else _nothing():
        opt = stepped_adam("auto" if path == "torch-kernels" else path)
        opt.step()                      # a plan exists and is reused: the check runs each step
        act(opt)
        refused(opt, lambda o: o.step(), exc, pattern)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_refused_at_step_then_fixed_steps_like_never_broken():
    "After a refused step and the fix, the numbers are those of an optimizer never broken."
    a, b = stepped_adam(), stepped_adam()
    a.hypers[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        a.step()
    a.hypers[0]["lr"] = 0.1
    a.step()
    b.step()
    for p, q in zip([p for pl in a.param_lists for p in pl], [p for pl in b.param_lists for p in pl]):
        assert torch.equal(p, q)


def test_lookahead_step_checks_the_inner_optimizer():
    opt = Lookahead(Adam(two_groups(), lr=0.1), k=1)
    opt.step()
    opt.hypers[0]["lr"] = -1.
    refused(opt, lambda o: o.step(), ValueError, r"^lr must be a finite number >= 0, got -1.0")
    assert opt.count == 1


# ---- tensor / tst_param -------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: tensor("abc"), TypeError, r"^tensor\(\): x must be a number, a list, an array or a tensor, got str 'abc'"),
    (lambda: tensor(None), TypeError, r"^tensor\(\): x must be .*got NoneType None"),
    (lambda: tensor({"a": 1}), TypeError, r"^tensor\(\): x must be .*got dict"),
    (lambda: tensor([1, "a"]), TypeError, r"^tensor\(\): x must hold numbers of one shape"),
    (lambda: tensor([[1, 2], [3]]), ValueError, r"^tensor\(\): x must hold numbers of one shape"),
    (lambda: tst_param("a"), TypeError, r"^val must be a number, a list, an array or a tensor, got str 'a'"),
    (lambda: tst_param(1., "b"), TypeError, r"^grad must be a number"),
    (lambda: tst_param([1., 2.], [1., 2., 3.]), ValueError, r"^tst_param: grad must have val's shape \(2,\), got shape \(3,\)"),
], ids=["str", "None", "dict", "mixed", "ragged", "tst-val", "tst-grad", "tst-shape"])
def test_bad_tensor_helpers(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ---- accepted: valid but unusual ----------------------------------------------------------------
def _flat(opt):
    return [p for pl in opt.param_lists for p in pl]


@pytest.mark.parametrize("lr,expected", [(np.float64(1e-3), 1e-3), (np.float32(0.5), 0.5),
                                         (np.int64(1), 1), (np.array(0.25), 0.25),
                                         (fractions.Fraction(1, 4), 0.25)],
                         ids=["np.float64", "np.float32", "np.int64", "0-d-array", "Fraction"])
@pytest.mark.parametrize("fac", ["Adam", "SGD"])
def test_numpy_scalar_lr_steps_like_the_python_number(fac, lr, expected):
    factory = {"Adam": Adam, "SGD": SGD}[fac]
    a, b = factory(two_groups(), lr=lr), factory(two_groups(), lr=expected)
    assert [h["lr"] for h in a.hypers] == [expected, expected]
    assert all(type(h["lr"]) is type(expected) for h in a.hypers)
    cbs, hyper = ref_factory(fac, expected)
    ref = RefOptimizer([[p.detach() for p in pl] for pl in two_groups()], cbs, [hyper, hyper])
    for _ in range(3):
        a.step()
        b.step()
        ref.step([[p.grad for p in pl] for pl in two_groups()])
    for p, q, r in zip(_flat(a), _flat(b), ref.flat()):
        assert torch.equal(p, q)
        torch.testing.assert_close(p.double(), r, rtol=1e-6, atol=1e-6)


def test_numpy_values_accepted_everywhere():
    opt = Adam(two_groups(), lr=0.1, mom=np.float32(0.5), eps=np.float64(1e-6))
    assert opt.hypers[0]["mom"] == 0.5 and type(opt.hypers[0]["mom"]) is float
    opt.set_hyper("lr", np.array([0.1, 0.2], dtype=np.float32))
    assert [type(h["lr"]) for h in opt.hypers] == [float, float]
    assert [h["lr"] for h in opt.hypers] == [float(np.float32(0.1)), float(np.float32(0.2))]
    opt.set_hyper("lr", torch.tensor([0.5, 0.25]))
    assert [h["lr"] for h in opt.hypers] == [0.5, 0.25]
    opt.add_param_group({"params": [P()], "lr": np.float64(0.3), "wd": np.int64(0)})
    assert opt.hypers[2]["lr"] == 0.3 and type(opt.hypers[2]["wd"]) is int
    opt.freeze_to(np.int64(1))
    assert opt.frozen_idx == 1
    assert len(opt.all_params(np.int64(2))) == 1
    la = Lookahead(SGD([P()], lr=0.1), k=np.int64(2), alpha=np.float64(0.5))
    assert (la.k, la.alpha) == (2, 0.5) and type(la.alpha) is float
    opt.hypers[0]["lr"] = np.float64(0.05)      # written directly: a number, accepted at the step
    opt.step()


@pytest.mark.parametrize("n,frozen", [(-2, 0), (-1, 1), (0, 0), (1, 1)])
def test_freeze_to_valid_range(n, frozen):
    opt = stepped_adam()
    opt.freeze_to(n)
    assert opt.frozen_idx == frozen
    assert [p.requires_grad for p in opt.param_lists[0]] == [frozen == 0] * 2
    assert [p.requires_grad for p in opt.param_lists[1]] == [True]


def test_freeze_to_beyond_the_groups_is_fastais_freeze_all():
    opt = stepped_adam()
    with pytest.warns(UserWarning, match="Freezing 5 groups; model has 2; whole model is frozen."):
        opt.freeze_to(5)
    assert [p.requires_grad for p in _flat(opt)] == [False] * 3


def test_single_element_set_is_one_value():
    "fastai spreads a set like a list; a one-element set has no order problem"
    opt = stepped_adam()
    opt.set_hyper("lr", {0.3})
    assert [h["lr"] for h in opt.hypers] == [0.3, 0.3]


def test_valid_direct_writes_are_used_at_the_step():
    a, b = stepped_adam(), stepped_adam()
    a.param_groups[1]["lr"] = 0.01
    b.set_hyper("lr", [0.1, 0.01])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.step()
        b.step()
    for p, q in zip(_flat(a), _flat(b)):
        assert torch.equal(p, q)


def test_grad_replaced_through_the_setter_is_still_checked_each_step():
    "A grad replaced by `p.grad = ...` (checked by torch), then swapped through `.data`."
    opt = stepped_adam()
    p = opt.param_lists[0][0]
    p.grad = torch.ones(3)
    opt.step()
    p.grad.data = torch.ones(4)
    refused(opt, lambda o: o.step(), ValueError, r"^grad of param 0 of group 0, shape \(3,\) has shape \(4,\)")
    p.grad.data = torch.ones(3)
    opt.step()


def test_message_of_a_1mb_string_is_short():
    opt = stepped_adam()
    with pytest.raises(TypeError) as e:
        opt.set_hyper("lr", "y" * (1 << 20))
    assert len(str(e.value)) < 200 and re.match(r"^lr must be a number", str(e.value))


@pytest.mark.parametrize("path", PATHS)
def test_grad_swap_seen_when_other_grads_are_none(path):
    "The per-step check over params some of which have no grad (the pointer list skips them)."
    with native_off() if path == "torch-kernels" else _nothing():
        opt = stepped_adam("auto" if path == "torch-kernels" else path)
        opt.param_lists[0][0].grad = None
        opt.step()
        opt.step()
        opt.param_lists[1][0].grad.data = torch.zeros(2, 2)
        refused(opt, lambda o: o.step(), ValueError,
                r"^grad of param 0 of group 1, shape \(3,\) has shape \(2, 2\)")


@pytest.mark.parametrize("path", PATHS)
def test_grad_swap_seen_in_the_step_other_grads_are_new(path):
    """`zero_grad(set_to_none=True)`-style new grads re-point the plan without a full check (torch's
    grad setter checked them); a grad that was kept and swapped through `.data` in the same step is
    still seen."""
    with native_off() if path == "torch-kernels" else _nothing():
        opt = stepped_adam("auto" if path == "torch-kernels" else path)
        opt.step()
        kept = opt.param_lists[1][0]
        for p in (q for pl in opt.param_lists for q in pl):
            if p is not kept:
                p.grad = p.grad.clone()         # new grad tensors, through the setter
        kept.grad.data = torch.zeros(2, 2)
        refused(opt, lambda o: o.step(), ValueError,
                r"^grad of param 0 of group 1, shape \(3,\) has shape \(2, 2\)")
