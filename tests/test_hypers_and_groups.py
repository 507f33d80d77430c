"""Optimizer construction, hypers (spec §2.1, §2.2, §2.4), step semantics (§2.5), zero_grad (§2.6),
freezing (§2.7), state management (§2.8), all_params (§2.3), param_groups (§2.9), Lookahead (§4.1)."""
import os
import sys
import warnings
from functools import partial

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import noop, tst_param, tst_params  # noqa: E402

from pyfastopt import (L, Optimizer, sgd_step, weight_decay, average_grad, SGD, RMSProp, Adam,  # noqa: E402
                       RAdam, QHAdam, Larc, Lamb, Lookahead, ranger)


def P():
    "a float32 param with a grad"
    t = torch.tensor([1., 2., 3.])
    t.grad = torch.tensor([0.1, 0.2, 0.3])
    return t


def no_defaults_cb(p, **kw):
    return None


# ----------------------------------------------------------------------------------------------
# §2.2 key order of hypers for every factory
# ----------------------------------------------------------------------------------------------
HYPER_ORDER = [
    ("SGD", lambda p, **kw: SGD(p, lr=0.1, **kw),
     [('wd', 0.0), ('lr', 0.1), ('mom', 0.0)]),
    ("SGD_mom", lambda p, **kw: SGD(p, lr=0.1, mom=0.9, **kw),
     [('wd', 0.0), ('mom', 0.9), ('lr', 0.1)]),
    ("RMSProp", lambda p, **kw: RMSProp(p, lr=0.1, **kw),
     [('wd', 0.0), ('sqr_mom', 0.99), ('eps', 1e-08), ('lr', 0.1), ('mom', 0.0)]),
    ("RMSProp_mom", lambda p, **kw: RMSProp(p, lr=0.1, mom=0.9, **kw),
     [('wd', 0.0), ('mom', 0.9), ('sqr_mom', 0.99), ('eps', 1e-08), ('lr', 0.1)]),
    ("Adam", lambda p, **kw: Adam(p, lr=0.1, **kw),
     [('wd', 0.01), ('sqr_mom', 0.99), ('lr', 0.1), ('mom', 0.9), ('eps', 1e-05)]),
    ("RAdam", lambda p, **kw: RAdam(p, lr=0.1, **kw),
     [('wd', 0.0), ('sqr_mom', 0.99), ('lr', 0.1), ('mom', 0.9), ('eps', 1e-05), ('beta', 0.0)]),
    ("QHAdam", lambda p, **kw: QHAdam(p, lr=0.1, **kw),
     [('wd', 0.0), ('lr', 0.1), ('nu_1', 0.7), ('nu_2', 1.0), ('mom', 0.999), ('sqr_mom', 0.999), ('eps', 1e-08)]),
    ("Larc", lambda p, **kw: Larc(p, lr=0.1, **kw),
     [('wd', 0.0), ('mom', 0.9), ('lr', 0.1), ('trust_coeff', 0.02), ('eps', 1e-08)]),
    ("Larc_mom0", lambda p, **kw: Larc(p, lr=0.1, mom=0., **kw),
     [('wd', 0.0), ('lr', 0.1), ('mom', 0.0), ('trust_coeff', 0.02), ('eps', 1e-08)]),
    ("Lamb", lambda p, **kw: Lamb(p, lr=0.1, **kw),
     [('wd', 0.0), ('sqr_mom', 0.99), ('lr', 0.1), ('mom', 0.9), ('eps', 1e-05)]),
    ("ranger", lambda p, **kw: ranger(p, lr=0.1, **kw),
     [('wd', 0.01), ('sqr_mom', 0.99), ('lr', 0.1), ('mom', 0.95), ('eps', 1e-06), ('beta', 0.0)]),
]


@pytest.mark.parametrize("name,fac,expected", HYPER_ORDER, ids=[r[0] for r in HYPER_ORDER])
def test_hypers_key_order(name, fac, expected):
    opt = fac([P()])
    assert list(opt.hypers[0].items()) == expected
    assert len(opt.hypers) == 1


@pytest.mark.parametrize("name,fac,expected", HYPER_ORDER, ids=[r[0] for r in HYPER_ORDER])
def test_hypers_key_order_l2(name, fac, expected):
    "decouple_wd=False gives the same order (l2_reg.defaults is also {wd})"
    opt = fac([P()], decouple_wd=False)
    assert list(opt.hypers[0].items()) == expected


def test_hypers_two_groups_same_order():
    opt = Adam([[P()], [P()]], lr=0.1)
    exp = [('wd', 0.01), ('sqr_mom', 0.99), ('lr', 0.1), ('mom', 0.9), ('eps', 1e-05)]
    assert [list(h.items()) for h in opt.hypers] == [exp, exp]
    assert opt.hypers[0] is not opt.hypers[1]


def test_rmsprop_eps_honoured():
    "fastai ignores RMSProp(eps=...); pyfastopt fixes it, keeping the table's key order"
    opt = RMSProp([P()], lr=.1, eps=0.5)
    assert opt.hypers[0]['eps'] == 0.5
    assert list(opt.hypers[0].items()) == [('wd', 0.0), ('sqr_mom', 0.99), ('eps', 0.5), ('lr', 0.1), ('mom', 0.0)]
    opt = RMSProp([P()], lr=.1, mom=0.9, eps=0.5)
    assert list(opt.hypers[0].items()) == [('wd', 0.0), ('mom', 0.9), ('sqr_mom', 0.99), ('eps', 0.5), ('lr', 0.1)]


def test_larc_qhadam_eps_reach_hypers():
    assert Larc([P()], lr=.1, eps=0.5).hypers[0]['eps'] == 0.5
    assert QHAdam([P()], lr=.1, eps=0.5).hypers[0]['eps'] == 0.5


def test_hypers_repr_and_types():
    opt = Adam([P()], lr=0.1)
    assert repr(opt.hypers) == "[{'wd': 0.01, 'sqr_mom': 0.99, 'lr': 0.1, 'mom': 0.9, 'eps': 1e-05}]"
    assert type(opt.hypers) is L
    assert type(opt.hypers.items) is list
    assert all(type(h) is dict for h in opt.hypers)


# ----------------------------------------------------------------------------------------------
# §2.1 defaults merge rules
# ----------------------------------------------------------------------------------------------
def test_merge_later_value_first_position():
    def cb1(p, **kw): pass
    cb1.defaults = {'a': 1, 'b': 2}

    def cb2(p, **kw): pass
    cb2.defaults = {'b': 3, 'c': 4}
    opt = Optimizer([P(), P()], [cb1, cb2], b=5, d=6)
    assert list(opt.hypers[0].items()) == [('a', 1), ('b', 5), ('c', 4), ('d', 6)]
    opt = Optimizer([P(), P()], [cb1, cb2])
    assert list(opt.hypers[0].items()) == [('a', 1), ('b', 3), ('c', 4)]


def test_partial_contributes_no_defaults():
    def my_step(p, lr, foo, **kw):
        p.data.add_(p.grad.data, alpha=-lr * foo)
    my_step.defaults = {'foo': 2.}
    opt = Optimizer([P()], partial(my_step), lr=0.1)
    assert opt.hypers == [{'lr': 0.1}]
    p = P()
    opt = Optimizer([p], partial(my_step, foo=3.), lr=0.1)
    assert opt.hypers == [{'lr': 0.1}]
    opt.step()
    torch.testing.assert_close(p, torch.tensor([1., 2., 3.]) - 0.3 * torch.tensor([0.1, 0.2, 0.3]))


def test_underscore_defaults_never_read():
    def cb(p, **kw): pass
    cb._defaults = {'eps': 1e-5}
    opt = Optimizer([P()], cb, lr=0.1)
    assert opt.hypers == [{'lr': 0.1}]


def test_user_stepper_with_defaults():
    def my_step(p, lr, foo, **kw):
        p.data.add_(p.grad.data, alpha=-lr * foo)
    my_step.defaults = {'foo': 2.}
    p = P()
    opt = Optimizer([p], my_step, lr=0.1)
    assert list(opt.hypers[0].items()) == [('foo', 2.), ('lr', 0.1)]
    opt.step()
    torch.testing.assert_close(p, torch.tensor([1., 2., 3.]) - 0.2 * torch.tensor([0.1, 0.2, 0.3]))


def test_single_callable_and_none_cbs():
    p = P()
    opt = Optimizer([p], sgd_step, lr=0.1)
    assert len(opt.cbs) == 1
    opt = Optimizer([p], None, lr=0.1)
    assert len(opt.cbs) == 0
    opt.step()
    assert p.tolist() == [1., 2., 3.]


def test_train_bn_warning():
    with pytest.warns(UserWarning, match="Setting `train_bn` in `Optimizer` has no effect"):
        opt = Optimizer([P()], sgd_step, lr=0.1, train_bn=True)
    assert 'train_bn' not in opt.hypers[0]
    assert opt.hypers == [{'lr': 0.1}]


# ----------------------------------------------------------------------------------------------
# §2.1 param groups
# ----------------------------------------------------------------------------------------------
def test_generator_params():
    ts = [P(), P()]
    opt = Optimizer((t for t in ts), sgd_step, lr=0.1)
    assert len(opt.param_lists) == 1 and len(opt.param_lists[0]) == 2
    assert opt.param_lists[0][0] is ts[0] and opt.param_lists[0][1] is ts[1]
    opt.step()
    for t in ts:
        torch.testing.assert_close(t, torch.tensor([0.99, 1.98, 2.97]))


def test_generator_params_factory():
    ts = [P(), P()]
    opt = SGD((t for t in ts), lr=0.1)
    opt.step()
    for t in ts:
        torch.testing.assert_close(t, torch.tensor([0.99, 1.98, 2.97]))


def test_single_tensor_not_iterated():
    t = P()
    opt = Optimizer(t, sgd_step, lr=0.1)
    assert len(opt.param_lists) == 1 and len(opt.param_lists[0]) == 1
    assert opt.param_lists[0][0] is t


def test_tuple_is_not_a_group():
    "spec §2.1: tuples are not groups; fastai took them as params, pyfastopt refuses non-tensors"
    a, b, c = P(), P(), P()
    with pytest.raises(TypeError, match="params must be tensors, got tuple"):
        Optimizer([(a, b), (c,)], noop)


def test_only_first_element_decides_groups_tensors():
    a, b, c = P(), P(), P()
    opt = Optimizer([[a, b], c], noop)
    assert len(opt.param_lists) == 2 and len(opt.hypers) == 2
    assert opt.param_lists[0][1] is b and len(opt.param_lists[1]) == 1 and opt.param_lists[1][0] is c


def test_L_groups():
    ps = tst_params()
    opt = Optimizer([ps[:2], ps[2:]], sgd_step, lr=0.1)
    assert len(opt.param_lists) == 2
    assert opt.param_lists[1][0] is ps[2]


# ----------------------------------------------------------------------------------------------
# §2.4 set_hyper table
# ----------------------------------------------------------------------------------------------
def opt_groups(n):
    return Optimizer([[P()] for i in range(n)], no_defaults_cb)


def snapshot(opt):
    return [dict(h) for h in opt.hypers]


@pytest.mark.parametrize("v,n,expected", [
    (0.1, 2, [0.1, 0.1]),
    ([0.1, 0.2], 2, [0.1, 0.2]),
    ((0.1, 0.2), 2, [0.1, 0.2]),
    (slice(1e-2), 3, [0.001, 0.001, 0.01]),
    (slice(1e-4, 1e-2), 3, [0.0001, 0.001, 0.01]),
    (slice(1e-5, 1e-3), 4, [1e-05, 4.641588833612779e-05, 0.00021544346900318834, 0.0009999999999999998]),
    (slice(1e-2), 1, [0.01]),
    (slice(1e-4, 1e-2), 1, [0.01]),
    (slice(0, 1e-2), 2, [0.001, 0.01]),
    (np.array([0.1, 0.2]), 2, [0.1, 0.2]),
    (np.array([0.1]), 1, [0.1]),
])
def test_set_hyper_values(v, n, expected):
    opt = opt_groups(n)
    opt.set_hyper('lr', v)
    assert [h['lr'] for h in opt.hypers] == expected
    assert all(isinstance(h['lr'], float) for h in opt.hypers)


def test_set_hyper_tensor_vector():
    opt = opt_groups(2)
    opt.set_hyper('lr', torch.tensor([0.1, 0.2]))
    got = [float(h['lr']) for h in opt.hypers]
    assert got == pytest.approx([0.1, 0.2], rel=1e-7)


@pytest.mark.parametrize("v,n", [
    (np.array([0.1, 0.2]), 3),
    (np.array([0.1]), 2),
    ([0.1, 0.2, 0.3], 2),
])
def test_set_hyper_wrong_length(v, n):
    opt = opt_groups(n)
    opt.set_hyper('lr', 0.5)
    before = snapshot(opt)
    with pytest.raises((AssertionError, ValueError), match=f"for lr but there are {n} parameter groups"):
        opt.set_hyper('lr', v)
    assert snapshot(opt) == before


def test_set_hyper_none_fails():
    opt = opt_groups(2)
    opt.set_hyper('lr', 0.5)
    before = snapshot(opt)
    with pytest.raises((AssertionError, ValueError, TypeError)):
        opt.set_hyper('lr', None)
    assert snapshot(opt) == before


def test_set_hyper_tuple_is_spread_never_stored():
    opt = opt_groups(1)
    with pytest.raises((AssertionError, ValueError)):
        opt.set_hyper('betas', (0.9, 0.99))
    assert 'betas' not in opt.hypers[0]


@pytest.mark.parametrize("v,expected", [(np.float64(0.1), 0.1), (np.float32(0.5), 0.5),
                                        (np.int64(2), 2), (np.array(0.25), 0.25)],
                         ids=["np.float64", "np.float32", "np.int64", "0-d ndarray"])
@pytest.mark.parametrize("n", [1, 2])
def test_set_hyper_numpy_scalar_stored_as_python_number(v, expected, n):
    "numpy scalars are numbers (issue 9): stored as the Python number of the same value"
    opt = opt_groups(n)
    opt.set_hyper('lr', v)
    assert [h['lr'] for h in opt.hypers] == [expected] * n
    assert all(type(h['lr']) is type(expected) for h in opt.hypers)


@pytest.mark.parametrize("n", [1, 2])
def test_set_hyper_0d_tensor_rejected(n):
    opt = opt_groups(n)
    opt.set_hyper('lr', 0.5)
    before = snapshot(opt)
    with pytest.raises(TypeError, match="lr got a 0-d tensor"):
        opt.set_hyper('lr', torch.tensor(0.1))
    assert snapshot(opt) == before


def test_set_hyper_odd_values():
    opt = opt_groups(2)
    opt.set_hyper('name', 'abc')
    assert [h['name'] for h in opt.hypers] == ['abc', 'abc']
    d = {'a': 1}
    opt.set_hyper('cfg', d)
    assert opt.hypers[0]['cfg'] is d and opt.hypers[1]['cfg'] is d
    opt = opt_groups(1)
    opt.set_hyper('flag', True)
    opt.set_hyper('n', 1)
    opt.set_hyper('s', {0.1})
    opt.set_hyper('g', (x for x in [0.3]))
    h = opt.hypers[0]
    assert h['flag'] is True and h['n'] == 1 and type(h['n']) is int
    assert h['s'] == 0.1 and h['g'] == 0.3


def test_set_hyper_preserves_identity_and_appends_key():
    opt = Adam([[P()], [P()]], lr=0.1)
    hyp, d0, d1 = opt.hypers, opt.hypers[0], opt.hypers[1]
    opt.set_hyper('lr', [0.2, 0.3])
    assert opt.hypers is hyp and opt.hypers[0] is d0 and opt.hypers[1] is d1
    assert [h['lr'] for h in opt.hypers] == [0.2, 0.3]
    assert list(d0.keys()) == ['wd', 'sqr_mom', 'lr', 'mom', 'eps']
    opt.set_hyper('newkey', 7)
    assert list(d0.keys())[-1] == 'newkey' and list(d1.keys())[-1] == 'newkey'


def test_set_hypers_kwargs_order():
    opt = opt_groups(2)
    opt.set_hypers(x=1, lr=[0.1, 0.2], y=slice(1.))
    assert list(opt.hypers[0].items()) == [('x', 1), ('lr', 0.1), ('y', 0.1)]
    assert list(opt.hypers[1].items()) == [('x', 1), ('lr', 0.2), ('y', 1.)]


# ----------------------------------------------------------------------------------------------
# §2.5 step semantics
# ----------------------------------------------------------------------------------------------
def test_grad_none_params_skipped_even_wd():
    p0, p1 = P(), P()
    p0.grad = None
    opt = SGD([p0, p1], lr=0.1, wd=0.1)
    opt.step()
    assert p0.tolist() == [1., 2., 3.]
    assert p0.grad is None
    assert dict(opt.state[p0]) == {}
    torch.testing.assert_close(p1, torch.tensor([1., 2., 3.]) * (1 - 0.01) - 0.1 * torch.tensor([0.1, 0.2, 0.3]))


def test_grad_none_adam_no_state():
    p0, p1 = P(), P()
    p0.grad = None
    opt = Adam([p0, p1], lr=0.1)
    opt.step()
    assert p0.tolist() == [1., 2., 3.]
    assert dict(opt.state[p0]) == {}
    assert set(opt.state[p1].keys()) == {'grad_avg', 'sqr_avg', 'step'}


def test_zero_grad_param_processed():
    p = torch.tensor([1., 2.])
    p.grad = torch.zeros(2)
    opt = SGD([p], lr=0.1, wd=0.1)
    opt.step()
    torch.testing.assert_close(p, torch.tensor([0.99, 1.98]))


def test_do_wd_false():
    params = [tst_param(1.), tst_param(2.)]
    opt = SGD(params, lr=0.1, wd=0.1)
    opt.state[params[0]]['do_wd'] = False
    opt.step()
    torch.testing.assert_close(torch.cat([p for p in params]), torch.tensor([0.99, 1.96]))


def test_do_wd_false_l2():
    params = [tst_param(1.), tst_param(2.)]
    opt = SGD(params, lr=0.1, wd=0.1, decouple_wd=False)
    opt.state[params[0]]['do_wd'] = False
    opt.step()
    # p0: 1 - .1*.1 = .99 ; p1: g = .2 + .1*2 = .4 -> 2 - .04 = 1.96
    torch.testing.assert_close(torch.cat([p for p in params]), torch.tensor([0.99, 1.96]))
    torch.testing.assert_close(params[0].grad, torch.tensor([0.1]))
    torch.testing.assert_close(params[1].grad, torch.tensor([0.4]))


def test_hypers_override_state_and_state_flows():
    record = []

    def cb1(p, **kw):
        return {'lr': 99, 'seen1': True}

    def cb2(p, lr, seen1=False, **kw):
        record.append((lr, seen1))
        return {'c2': kw.get('c2', 0) + 1}

    p = P()
    opt = Optimizer([p], [cb1, cb2], lr=0.1)
    opt.step()
    assert record == [(0.1, True)]
    assert opt.state[p]['lr'] == 99
    opt.step()
    assert record == [(0.1, True), (0.1, True)]
    assert opt.state[p]['c2'] == 2


def test_non_dict_returns_ignored():
    p = P()
    opt = Optimizer([p], [lambda p, **kw: p, lambda p, **kw: 3, lambda p, **kw: None,
                          lambda p, **kw: torch.zeros(1)], lr=0.1)
    opt.step()
    assert dict(opt.state[p]) == {}


def test_state_dict_object_kept_across_steps():
    p = P()
    opt = SGD([p], lr=0.1, mom=0.9)
    opt.step()
    st = opt.state[p]
    opt.step()
    assert opt.state[p] is st


def test_callback_order_and_group_order():
    order = []
    a, b, c = P(), P(), P()
    names = {id(a): 'a', id(b): 'b', id(c): 'c'}

    def cb1(p, **kw): order.append(('cb1', names[id(p)]))

    def cb2(p, **kw): order.append(('cb2', names[id(p)]))
    opt = Optimizer([[a, b], [c]], [cb1, cb2])
    opt.step()
    assert order == [('cb1', 'a'), ('cb2', 'a'), ('cb1', 'b'), ('cb2', 'b'), ('cb1', 'c'), ('cb2', 'c')]


# ----------------------------------------------------------------------------------------------
# §2.6 zero_grad
# ----------------------------------------------------------------------------------------------
def test_zero_grad_in_place():
    p0, p1 = P(), P()
    p1.grad = None
    g = p0.grad
    opt = SGD([p0, p1], lr=0.1)
    opt.zero_grad()
    assert p0.grad is g
    assert p0.grad.tolist() == [0., 0., 0.]
    assert p1.grad is None


# ----------------------------------------------------------------------------------------------
# §2.7 freezing
# ----------------------------------------------------------------------------------------------
def three_groups():
    params = [tst_params(), tst_params(), tst_params()]
    return params, Optimizer(params, sgd_step, lr=0.1)


def rg(params):
    return [[p.requires_grad for p in g] for g in params]


def test_freeze_to_no_warning():
    params, opt = three_groups()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.freeze_to(1)
    assert rg(params) == [[False] * 4, [True] * 4, [True] * 4]
    assert opt.frozen_idx == 1


def test_freeze_to_negative():
    params, opt = three_groups()
    opt.freeze_to(-1)
    assert opt.frozen_idx == 2
    assert rg(params) == [[False] * 4, [False] * 4, [True] * 4]


@pytest.mark.parametrize("n", [3, 5])
def test_freeze_to_whole_model_warns(n):
    params, opt = three_groups()
    with pytest.warns(UserWarning, match=f"Freezing {n} groups; model has 3; whole model is frozen."):
        opt.freeze_to(n)
    assert opt.frozen_idx == n
    assert rg(params) == [[False] * 4] * 3


def test_freeze_unfreeze_force_train():
    params, opt = three_groups()
    opt.freeze()
    assert opt.frozen_idx == 2
    assert rg(params) == [[False] * 4, [False] * 4, [True] * 4]
    opt.unfreeze()
    assert opt.frozen_idx == 0
    assert rg(params) == [[True] * 4] * 3
    for p in L(params[1])[[1, 3]]:
        opt.state[p]['force_train'] = True
    opt.freeze()
    assert rg(params) == [[False] * 4, [False, True, False, True], [True] * 4]
    opt.unfreeze()
    assert rg(params) == [[True] * 4] * 3


def test_freeze_single_group_fails():
    opt = Optimizer(tst_params(), sgd_step, lr=0.1)
    with pytest.raises((AssertionError, ValueError)):
        opt.freeze()


def test_frozen_params_not_stepped_when_grad_none():
    "freezing only toggles requires_grad; frozen params normally have no grad and are skipped"
    params, opt = three_groups()
    opt.freeze_to(1)
    for p in params[0]:
        p.grad = None
    opt.step()
    assert [p.item() for p in params[0]] == [0., 1., 2., 3.]
    assert [round(p.item(), 5) for p in params[1]] == [0., 0.99, 1.98, 2.97]


# ----------------------------------------------------------------------------------------------
# §2.8 state management
# ----------------------------------------------------------------------------------------------
def test_clear_state_keeps_force_train_do_wd_in_order():
    p0, p1 = P(), P()
    p1.grad = None
    opt = SGD([p0, p1], lr=0.1, mom=0.9)
    opt.state[p0]['other'] = 1
    opt.state[p0]['do_wd'] = False
    opt.step()
    opt.state[p0]['force_train'] = True
    opt.state[p1]['do_wd'] = False
    opt.state[p1]['junk'] = 3
    assert 'grad_avg' in opt.state[p0]
    opt.clear_state()
    assert dict(opt.state[p0]) == {'force_train': True, 'do_wd': False}
    assert list(opt.state[p0].keys()) == ['force_train', 'do_wd']
    assert dict(opt.state[p1]) == {'do_wd': False}


def test_clear_state_leaves_no_empty_entries():
    # torch's tools (DCP's `_init_optim_state`) read a `state` with entries as initialised
    p0, p1 = P(), P()
    opt = Adam([p0, p1], lr=0.1)
    opt.step()
    opt.state[p1]['force_train'] = True
    opt.clear_state()
    assert p0 not in opt.state and dict(opt.state[p1]) == {'force_train': True}
    p1_only = Adam([P()], lr=0.1)
    p1_only.step()
    p1_only.clear_state()
    assert not p1_only.state


def test_clear_state_then_step_restarts():
    p = P()
    opt = Adam([p], lr=0.1)
    opt.step()
    opt.step()
    opt.clear_state()
    opt.step()
    assert opt.state[p]['step'] == 1


def test_state_keyed_by_identity():
    a, b = P(), P()
    opt = SGD([a], lr=0.1, mom=0.9)
    opt.step()
    assert a in opt.state
    assert b not in opt.state


def test_state_dict_references_and_positions():
    p0, p1, p2 = P(), P(), P()
    p1.grad = None
    opt = SGD([[p0, p1], [p2]], lr=[0.1, 0.2], mom=0.9)
    opt.step()
    sd = opt.state_dict()
    assert len(sd['state']) == 3
    assert torch.equal(sd['state'][0]['grad_avg'], opt.state[p0]['grad_avg'])
    assert dict(sd['state'][1]) == {}
    assert torch.equal(sd['state'][2]['grad_avg'], opt.state[p2]['grad_avg'])
    assert [dict(h) for h in sd['hypers']] == [dict(h) for h in opt.hypers]
    assert [h['lr'] for h in sd['hypers']] == [0.1, 0.2]


# ----------------------------------------------------------------------------------------------
# §2.3 all_params
# ----------------------------------------------------------------------------------------------
def test_all_params_tuples():
    ps = [tst_param(1.), tst_param(2.), tst_param(3.)]
    ps[1].grad = None
    opt = Optimizer([ps[:2], ps[2:]], sgd_step, lr=0.1)
    ap = opt.all_params()
    assert len(ap) == 3
    assert all(t[0] is p for t, p in zip(ap, ps))
    for t in ap:
        assert len(t) == 4
    assert len(ap[0][1]) == 2 and all(x is y for x, y in zip(ap[0][1], ps[:2]))
    assert ap[0][2] is opt.state[ps[0]]
    assert ap[0][3] is opt.hypers[0] and ap[2][3] is opt.hypers[1]
    wg = opt.all_params(with_grad=True)
    assert len(wg) == 2 and wg[0][0] is ps[0] and wg[1][0] is ps[2]
    s = opt.all_params(slice(1, 2))
    assert len(s) == 1 and s[0][0] is ps[2] and s[0][3] is opt.hypers[1]


def test_all_params_int_fixed():
    "fastai's all_params(int) is broken; pyfastopt returns the 4-tuples of that group only"
    ps = [tst_param(1.), tst_param(2.), tst_param(3.), tst_param(4.)]
    opt = Optimizer([ps[:2], ps[2:]], sgd_step, lr=0.1)
    a = opt.all_params(1)
    b = opt.all_params(slice(1, 2))
    assert len(a) == 2 == len(b)
    for x, y in zip(a, b):
        assert len(x) == 4
        assert x[0] is y[0] and x[2] is y[2] and x[3] is y[3]
    assert a[0][0] is ps[2] and a[1][0] is ps[3]
    assert a[0][3] is opt.hypers[1]
    a0 = opt.all_params(0)
    assert [t[0] for t in a0][0] is ps[0] and len(a0) == 2
    # no pollution of state with views or hyper key strings
    assert all(any(k is p for p in ps) for k in opt.state.keys())


# ----------------------------------------------------------------------------------------------
# §2.9 param_groups (pyfastopt: live)
# ----------------------------------------------------------------------------------------------
def test_param_groups_adam_order():
    p = P()
    opt = Adam([p], lr=0.1)
    pg = opt.param_groups[0]
    assert list(pg.keys()) == ['params', 'wd', 'sqr_mom', 'lr', 'mom', 'eps']
    assert len(pg['params']) == 1 and pg['params'][0] is p


def test_param_groups_live():
    a, b, c = P(), P(), P()
    opt = SGD([[a, b], [c]], lr=[0.1, 0.2])
    assert all(x is y for x, y in zip(opt.param_groups[0]['params'], [a, b]))
    assert len(opt.param_groups[0]['params']) == 2
    assert len(opt.param_groups[1]['params']) == 1 and opt.param_groups[1]['params'][0] is c
    opt.param_groups[0]['lr'] = 0.5
    assert opt.hypers[0]['lr'] == 0.5
    assert opt.hypers[1]['lr'] == 0.2
    opt.hypers[1]['lr'] = 0.7
    assert opt.param_groups[1]['lr'] == 0.7
    opt.set_hyper('mom', 0.3)
    assert [pg['mom'] for pg in opt.param_groups] == [0.3, 0.3]
    assert 'params' not in opt.hypers[0]


# ----------------------------------------------------------------------------------------------
# §4.1 Lookahead bookkeeping
# ----------------------------------------------------------------------------------------------
def test_lookahead_delegation_and_state_dict_keys():
    p = P()
    inner = SGD([p], lr=0.1, mom=0.9)
    opt = Lookahead(inner)
    assert opt.opt is inner
    assert opt.hypers is inner.hypers
    assert opt.count == 0 and opt.slow_weights is None
    opt.step()
    assert opt.count == 1
    # the inner entry's items, plus Lookahead's own part (as torch's tools read state per param)
    e = opt.state[p]
    assert all(e[k] is v for k, v in inner.state[p].items())
    assert set(e) == {*inner.state[p], 'lookahead_slow', 'lookahead_count'}
    assert 'grad_avg' in inner.state[p]
    sd = opt.state_dict()
    # fastai's keys (spec §4.1); pyfastopt may add its own
    assert {'state', 'hypers', 'count', 'slow_weights'} <= set(sd.keys())
    assert sd['count'] == 1
    opt.clear_state()
    assert opt.count == 0 and opt.slow_weights is None
    assert dict(inner.state[p]) == {}


def test_lookahead_slow_weights_copied_before_first_step():
    p = P()
    opt = Lookahead(SGD([p], lr=0.1), k=2, alpha=0.5)
    opt.step()
    torch.testing.assert_close(opt.slow_weights[0][0], torch.tensor([1., 2., 3.]))
    opt.step()
    # slow = 1 + .5*(fast - 1), fast = p - 2*lr*g
    exp = torch.tensor([1., 2., 3.]) - 0.5 * 2 * 0.1 * torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(p, exp)
    torch.testing.assert_close(opt.slow_weights[0][0], exp)
    assert opt.slow_weights[0][0] is not p


def test_lookahead_grad_none_params_synced():
    p, q = P(), P()
    q.grad = None
    opt = Lookahead(SGD([p, q], lr=0.1), k=1)
    opt.step()
    assert q.tolist() == [1., 2., 3.]
    assert len(opt.slow_weights[0]) == 2


def test_ranger_is_lookahead_over_radam():
    p = P()
    opt = ranger([p], lr=0.1)
    assert isinstance(opt, Lookahead)
    assert opt.k == 6 and opt.alpha == 0.5
    assert isinstance(opt.opt, type(RAdam([P()], lr=0.1)))
    opt = ranger([P()], lr=0.1, k=3, alpha=0.3, sqr_mom=0.9, beta=1.)
    assert opt.k == 3 and opt.alpha == 0.3
    assert opt.hypers[0]['sqr_mom'] == 0.9 and opt.hypers[0]['beta'] == 1.
