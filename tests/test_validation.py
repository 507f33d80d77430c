"""pyfastopt's input validation contract: bad hyper-parameters, bad params, sparse grads, Lookahead's k,
freeze_to's n; rejected set_hyper/set_hypers leave hypers unchanged. Messages are checked loosely
(the argument name or the problem is named)."""
import copy
import math
import os
import re
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import tst_params  # noqa: E402
from optim_db import BELOW_ONE, DB, rows  # noqa: E402

from pyfastopt import Optimizer, sgd_step, SGD, Adam, Lookahead  # noqa: E402


def P(vals=(1., 2., 3.), grad=(0.1, 0.2, 0.3)):
    t = torch.tensor(vals)
    t.grad = torch.tensor(grad)
    return t


# one row of the optimizer table (tests/optim_db.py) per factory: the factory and its hypers
FACTORIES = {r.name: (r.factory, list(r.hypers))
             for r in rows("SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "Lion",
                           "ranger")}

BAD_VALUES = {'negative': -0.1, 'nan': float('nan'), 'inf': float('inf'), 'string': 'abc'}

CASES = [(f, a, b) for f, (_, args) in FACTORIES.items() for a in args for b in BAD_VALUES]


def _kwargs(arg, value):
    kw = {'lr': 0.01}
    kw[arg] = value
    return kw


@pytest.mark.parametrize("fname,arg,bad", CASES, ids=[f"{f}-{a}-{b}" for f, a, b in CASES])
def test_bad_hyper_rejected(fname, arg, bad):
    fac = FACTORIES[fname][0]
    with pytest.raises((ValueError, TypeError), match=re.escape(arg)):
        fac([P()], **_kwargs(arg, BAD_VALUES[bad]))


# the hypers whose formula divides by 1 - value: [0, 1) in the table
DIVIDING = [(f, a, v) for f in FACTORIES for a in ('mom', 'sqr_mom')
            if DB[f].hypers.get(a) == BELOW_ONE for v in (1.0, 1.5)]
assert {f for f, _, _ in DIVIDING} == {'Adam', 'RAdam', 'QHAdam', 'Lamb', 'ranger'}


@pytest.mark.parametrize("fname,arg,v", DIVIDING, ids=[f"{f}-{a}-{v}" for f, a, v in DIVIDING])
def test_mom_ge_1_rejected_where_formula_divides(fname, arg, v):
    fac = FACTORIES[fname][0]
    with pytest.raises(ValueError, match=re.escape(arg)):
        fac([P()], **_kwargs(arg, v))


@pytest.mark.parametrize("fname", list(FACTORIES))
def test_valid_edge_values_accepted(fname):
    fac, args = FACTORIES[fname]
    kw = {'lr': 0.}
    if 'wd' in args:
        kw['wd'] = 0.
    p = P()
    opt = fac([p], **kw)
    opt.step()
    fac([P()], lr=1)  # an int lr is fine
    if 'mom' in args:
        fac([P()], lr=0.1, mom=0.)


def test_bad_lr_in_list_rejected():
    with pytest.raises((ValueError, TypeError), match="lr"):
        SGD([[P()], [P()]], lr=[0.1, -0.1])
    with pytest.raises((ValueError, TypeError), match="lr"):
        Adam([[P()], [P()]], lr=[0.1, float('nan')])


# ----------------------------------------------------------------------------------------------
# params
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fname", list(FACTORIES))
def test_empty_params(fname):
    fac = FACTORIES[fname][0]
    with pytest.raises((ValueError, TypeError, IndexError), match=r"(?i)empty|no param"):
        fac([], lr=0.1)


def test_empty_params_optimizer():
    with pytest.raises((ValueError, TypeError, IndexError)):
        Optimizer([], sgd_step, lr=0.1)


@pytest.mark.parametrize("fname", list(FACTORIES))
def test_non_tensor_param_in_factory(fname):
    fac = FACTORIES[fname][0]
    with pytest.raises((TypeError, ValueError), match=r"(?i)tensor"):
        fac([P(), 3], lr=0.1)


@pytest.mark.parametrize("fname", list(FACTORIES))
def test_duplicate_param(fname):
    fac = FACTORIES[fname][0]
    p = P()
    pat = r"(?i)duplicate|more than once|twice|appears|same param"
    with pytest.raises(ValueError, match=pat):
        fac([p, P(), p], lr=0.1)
    with pytest.raises(ValueError, match=pat):
        fac([[p], [P(), p]], lr=0.1)


@pytest.mark.parametrize("fname", list(FACTORIES))
def test_sparse_grad_rejected_params_untouched(fname):
    fac = FACTORIES[fname][0]
    a, b, c = P(), P((4., 5., 6.)), P((7., 8., 9.))
    c.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.tensor([0.5, 0.5]), (3,), check_invariants=True)
    opt = fac([a, b, c], lr=0.1)
    before = [a.clone(), b.clone(), c.clone()]
    with pytest.raises((RuntimeError, ValueError, TypeError), match=r"(?i)sparse"):
        opt.step()
    for x, y in zip((a, b, c), before):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------------------------
# Lookahead k, freeze_to n
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1])
def test_lookahead_bad_k(k):
    with pytest.raises((ValueError, TypeError), match="k"):
        Lookahead(SGD([P()], lr=0.1), k=k)


def test_lookahead_integral_float_k_accepted():
    p = P()
    opt = Lookahead(SGD([p], lr=0.1), k=6.0)
    for _ in range(5):
        opt.step()
    torch.testing.assert_close(p, torch.tensor([0.95, 1.9, 2.85]))
    opt.step()
    torch.testing.assert_close(p, torch.tensor([0.97, 1.94, 2.91]))


def test_freeze_to_non_integral_rejected():
    params = [tst_params(), tst_params()]
    opt = Optimizer(params, sgd_step, lr=0.1)
    before = [[p.requires_grad for p in g] for g in params]
    with pytest.raises((TypeError, ValueError)):
        opt.freeze_to(1.5)
    assert [[p.requires_grad for p in g] for g in params] == before
    assert opt.frozen_idx == 0


def test_freeze_to_integral_float_accepted():
    params = [tst_params(), tst_params()]
    opt = Optimizer(params, sgd_step, lr=0.1)
    opt.freeze_to(1.0)
    assert opt.frozen_idx == 1
    assert [[p.requires_grad for p in g] for g in params] == [[False] * 4, [True] * 4]


# ----------------------------------------------------------------------------------------------
# rejected set_hyper / set_hypers leave hypers unchanged
# ----------------------------------------------------------------------------------------------
def _snap(opt):
    return copy.deepcopy([dict(h) for h in opt.hypers])


@pytest.mark.parametrize("k,v", [('lr', -1.), ('lr', float('nan')), ('lr', 'abc'), ('wd', -0.1),
                                 ('eps', float('inf')), ('lr', [0.1, float('nan')]),
                                 ('mom', [0.9, -0.5])])
def test_rejected_set_hyper_leaves_hypers(k, v):
    opt = Adam([[P()], [P()]], lr=0.1)
    before = _snap(opt)
    with pytest.raises((ValueError, TypeError), match=re.escape(k)):
        opt.set_hyper(k, v)
    assert _snap(opt) == before


def test_rejected_set_hypers_is_atomic():
    opt = Adam([[P()], [P()]], lr=0.1)
    before = _snap(opt)
    with pytest.raises((ValueError, TypeError), match="mom"):
        opt.set_hypers(lr=0.5, mom=-1.)
    assert _snap(opt) == before
    with pytest.raises((ValueError, TypeError)):
        opt.set_hypers(wd=0.2, lr=[0.1, 0.2, 0.3])
    assert _snap(opt) == before


def test_rejected_set_hyper_wrong_count_leaves_hypers():
    opt = SGD([[P()], [P()], [P()]], lr=0.1)
    before = _snap(opt)
    with pytest.raises((AssertionError, ValueError)):
        opt.set_hyper('lr', [0.1, 0.2])
    assert _snap(opt) == before
