"""The reference tests of fastai's nbs/12_optimizer.ipynb (spec §6, #1-#41) and the printed values of
the R documentation page (/work/shared/reference/000_9c18b15ab63a52c6.txt).

Expected numbers come from the spec ("observed" column: real fastai 2.8.12) or from the notebook's
own formulas recomputed here; never from running pyfastopt."""
import copy
import math
import os
import sys
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import assert_observed, nb_tensor, noop, test_close, tst_param, tst_params  # noqa: E402

import pyfastopt  # noqa: E402
from pyfastopt import (L, Optimizer, sgd_step, weight_decay, l2_reg, average_grad,  # noqa: E402
                       average_sqr_grad, step_stat, debias, SGD, RMSProp, Adam, RAdam, QHAdam,
                       Larc, Lamb, Lookahead, ranger, OptimWrapper, detuplify_pg, set_item_pg)


def vals(params):
    return [p.item() for p in params]


def plain(groups):
    return [list(g) for g in groups]


# notebook test callbacks (#2)
def tst_arg(p, lr=0, **kwargs): return p
tst_arg.defaults = dict(lr=1e-2)


def tst_arg2(p, lr2=0, **kwargs): return p
tst_arg2.defaults = dict(lr2=1e-3)


def tst_arg3(p, mom=0, **kwargs): return p
tst_arg3.defaults = dict(mom=0.9)


def tst_arg4(p, **kwargs): return p


# ----------------------------------------------------------------------------------------------
# #1 param groups
# ----------------------------------------------------------------------------------------------
def test_01_int_params_are_refused():
    "The notebook's #1-#3 and #12 use ints as params; pyfastopt refuses non-tensor params (a"
    " deliberate difference, see the README), so those tests run with tensors below."
    for params in ([1, 2, 3], range(3), [[1, 2], [3]], ([o, o + 1] for o in range(0, 4, 2))):
        with pytest.raises(TypeError, match="params must be tensors, got int"):
            Optimizer(params, noop)


def ts(n):
    return [torch.tensor([float(i)]) for i in range(n)]


def test_01_param_groups_tensors():
    "#1 with tensors instead of the notebook's ints"
    t = ts(4)
    opt = Optimizer(t[:3], noop)
    assert len(opt.param_lists) == 1 and all(x is y for x, y in zip(opt.param_lists[0], t[:3]))
    opt = Optimizer([t[:2], t[2:3]], noop)
    assert [len(g) for g in opt.param_lists] == [2, 1]
    assert opt.param_lists[1][0] is t[2]
    opt = Optimizer((t[o:o + 2] for o in range(0, 4, 2)), noop)
    assert [len(g) for g in opt.param_lists] == [2, 2]
    assert opt.param_lists[1][1] is t[3]


def test_01_param_lists_is_L_of_L():
    t = ts(3)
    opt = Optimizer([t[:2], t[2:]], noop)
    assert isinstance(opt.param_lists, L)
    assert all(isinstance(g, L) for g in opt.param_lists)


# ----------------------------------------------------------------------------------------------
# #2 defaults merge
# ----------------------------------------------------------------------------------------------
def test_02_defaults_merge_tensors():
    "#2 with tensors instead of the notebook's ints"
    t = ts(3)
    opt = Optimizer(t, [tst_arg, tst_arg2, tst_arg3])
    assert list(opt.hypers[0].items()) == [('lr', 0.01), ('lr2', 0.001), ('mom', 0.9)]
    opt = Optimizer(t, tst_arg, lr=0.1)
    assert opt.hypers == [{'lr': 0.1}]
    opt = Optimizer([t[:2], t[2:]], tst_arg)
    assert opt.hypers == [{'lr': 1e-2}] * 2
    opt = Optimizer([t[:2], t[2:]], tst_arg, lr=0.1)
    assert opt.hypers == [{'lr': 0.1}] * 2


def test_02_callback_without_defaults():
    opt = Optimizer(ts(3), [tst_arg4])
    assert opt.hypers == [{}]


# ----------------------------------------------------------------------------------------------
# #3 hyper spreading
# ----------------------------------------------------------------------------------------------
def test_03_hyper_spreading_tensors():
    "#3 with tensors instead of the notebook's ints"
    t = ts(4)
    opt = Optimizer([t[:2], t[2:3]], tst_arg, lr=[0.1, 0.2])
    assert opt.hypers == [{'lr': 0.1}, {'lr': 0.2}]
    groups = [t[:2], t[2:3], t[3:]]
    opt = Optimizer(groups, tst_arg, lr=slice(1e-2))
    assert opt.hypers == [{'lr': 1e-3}, {'lr': 1e-3}, {'lr': 1e-2}]
    opt = Optimizer(groups, tst_arg, lr=slice(1e-4, 1e-2))
    assert opt.hypers == [{'lr': 1e-4}, {'lr': 1e-3}, {'lr': 1e-2}]
    pgs = opt.param_groups
    assert [sorted(pg.keys()) for pg in pgs] == [['lr', 'params']] * 3
    assert [pg['lr'] for pg in pgs] == [1e-4, 1e-3, 1e-2]
    assert [len(pg['params']) for pg in pgs] == [2, 1, 1] and pgs[2]['params'][0] is t[3]


def test_03_numpy_array_wrong_length_fails():
    with pytest.raises((AssertionError, ValueError),
                       match="Trying to set 2 values for lr but there are 3 parameter groups"):
        Optimizer([ts(2), ts(1), ts(1)], tst_arg, lr=np.array([0.1, 0.2]))


# ----------------------------------------------------------------------------------------------
# #4-#6 basic steppers
# ----------------------------------------------------------------------------------------------
def test_04_sgd_step():
    p = tst_param(1., 0.1)
    sgd_step(p, 1.)
    assert torch.equal(p, nb_tensor([0.9]))
    assert torch.equal(p.grad, nb_tensor([0.1]))


def test_05_weight_decay():
    p = tst_param(1., 0.1)
    weight_decay(p, 1., 0.1)
    assert torch.equal(p, nb_tensor([0.9]))
    assert torch.equal(p.grad, nb_tensor([0.1]))


def test_06_l2_reg():
    p = tst_param(1., 0.1)
    l2_reg(p, 1., 0.1)
    assert torch.equal(p, nb_tensor([1.]))
    assert torch.equal(p.grad, nb_tensor([0.2]))


# ----------------------------------------------------------------------------------------------
# #7-#11 Optimizer.step / zero_grad
# ----------------------------------------------------------------------------------------------
def test_07_basic_step():
    params = tst_params()
    opt = Optimizer(params, sgd_step, lr=0.1)
    opt.step()
    test_close(vals(params), [i * 0.99 for i in range(4)])
    assert_observed(vals(params), [0.0, 0.99000001, 1.98000002, 2.97000003])


def test_08_two_callbacks():
    params = tst_params()
    opt = Optimizer(params, [weight_decay, sgd_step], lr=0.1, wd=0.1)
    opt.step()
    test_close(vals(params), [i * 0.98 for i in range(4)])
    assert_observed(vals(params), [0.0, 0.98000002, 1.96000004, 2.94000006])


def test_09_none_grads_ignored():
    params = tst_params()
    opt = Optimizer(params, sgd_step, lr=0.1)
    params[3].grad = None
    opt.step()
    test_close(vals(params), [0., 0.99, 1.98, 3.])
    assert params[3].item() == 3.0


def test_10_discriminative_lr():
    params = tst_params()
    opt = Optimizer([params[:2], params[2:]], sgd_step, lr=0.1)
    opt.hypers[0]['lr'] = 0.01
    opt.step()
    test_close(vals(params), [0., 0.999, 1.98, 2.97])


def test_11_zero_grad():
    params = tst_params()
    opt = Optimizer(params, [weight_decay, sgd_step], lr=0.1, wd=0.1)
    opt.zero_grad()
    for p in params:
        assert torch.equal(p.grad, nb_tensor([0.]))


# ----------------------------------------------------------------------------------------------
# #12 stat callback
# ----------------------------------------------------------------------------------------------
def tst_stat(p, **kwargs):
    s = kwargs.get('sum', torch.zeros_like(p)) + p.data
    return {'sum': s}


tst_stat.defaults = {'mom': 0.9}


def test_12_stat_callback():
    x = torch.randn(4, 5)
    state = tst_stat(x)
    assert 'sum' in state
    assert torch.equal(x, state['sum'])
    state = tst_stat(x, **state)
    assert torch.equal(state['sum'], 2 * x)


def test_12_stat_callback_tensors():
    "#12's hypers with tensor params"
    assert Optimizer(ts(3), tst_stat).hypers == [{'mom': 0.9}]
    assert Optimizer(ts(3), tst_stat, mom=0.99).hypers == [{'mom': 0.99}]


def test_12_stat_callback_through_optimizer():
    p = tst_param([1., 2., 3.], [4., 5., 6.])
    opt = Optimizer(p, tst_stat)
    opt.step()
    assert torch.equal(opt.state[p]['sum'], p.data)
    opt.step()
    assert torch.equal(opt.state[p]['sum'], 2 * p.data)


# ----------------------------------------------------------------------------------------------
# #13 average_grad, #14 average_sqr_grad
# ----------------------------------------------------------------------------------------------
def test_13_average_grad():
    p = tst_param([1, 2, 3], [4, 5, 6])
    state = {}
    state = average_grad(p, mom=0.9, **state)
    assert torch.equal(state['grad_avg'], p.grad)
    assert torch.equal(state['grad_avg'], nb_tensor([[4., 5., 6.]]))
    state = average_grad(p, mom=0.9, **state)
    assert torch.equal(state['grad_avg'], p.grad * 1.9)
    assert_observed(state['grad_avg'], [[7.6, 9.5, 11.4]])
    # dampening
    state = {}
    state = average_grad(p, mom=0.9, dampening=True, **state)
    assert torch.equal(state['grad_avg'], 0.1 * p.grad)
    assert_observed(state['grad_avg'], [[0.4, 0.5, 0.6]])
    state = average_grad(p, mom=0.9, dampening=True, **state)
    test_close(state['grad_avg'], (0.1 * 0.9 + 0.1) * p.grad)
    assert_observed(state['grad_avg'], [[0.76, 0.95, 1.14]])


def test_14_average_sqr_grad():
    p = tst_param([1, 2, 3], [4, 5, 6])
    state = {}
    state = average_sqr_grad(p, sqr_mom=0.99, dampening=False, **state)
    assert torch.equal(state['sqr_avg'], p.grad.pow(2))
    assert torch.equal(state['sqr_avg'], nb_tensor([[16., 25., 36.]]))
    state = average_sqr_grad(p, sqr_mom=0.99, dampening=False, **state)
    assert torch.equal(state['sqr_avg'], p.grad.pow(2) * 1.99)
    assert_observed(state['sqr_avg'], [[31.84, 49.75, 71.64]])
    # dampening (the default)
    state = {}
    state = average_sqr_grad(p, sqr_mom=0.99, **state)
    test_close(state['sqr_avg'], 0.01 * p.grad.pow(2))
    assert_observed(state['sqr_avg'], [[0.16, 0.25, 0.36]])
    state = average_sqr_grad(p, sqr_mom=0.99, **state)
    test_close(state['sqr_avg'], (0.01 * 0.99 + 0.01) * p.grad.pow(2))
    assert_observed(state['sqr_avg'], [[0.3184, 0.4975, 0.7164]])


# ----------------------------------------------------------------------------------------------
# #15 freeze_to, #16 force_train
# ----------------------------------------------------------------------------------------------
def req_grad(groups):
    return [[p.requires_grad for p in g] for g in groups]


def test_15_freeze_to():
    params = [tst_params(), tst_params(), tst_params()]
    opt = Optimizer(params, sgd_step, lr=0.1)
    opt.freeze_to(1)
    assert [p.requires_grad for p in params[0]] == [False] * 4
    for i in (1, 2):
        assert [p.requires_grad for p in params[i]] == [True] * 4
    assert opt.frozen_idx == 1
    opt.unfreeze()
    for i in range(3):
        assert [p.requires_grad for p in params[i]] == [True] * 4


def test_16_force_train():
    params = [tst_params(), tst_params(), tst_params()]
    opt = Optimizer(params, sgd_step, lr=0.1)
    for p in L(params[1])[[1, 3]]:
        opt.state[p] = {'force_train': True}
    opt.freeze()
    assert req_grad(params) == [[False] * 4, [False, True, False, True], [True] * 4]


# ----------------------------------------------------------------------------------------------
# #17 state_dict round trip, #18 clear_state
# ----------------------------------------------------------------------------------------------
def test_17_state_dict_round_trip():
    p = tst_param([1, 2, 3], [4, 5, 6])
    opt = Optimizer(p, average_grad)
    opt.step()
    assert torch.equal(opt.state[p]['grad_avg'], nb_tensor([[4., 5., 6.]]))
    assert opt.hypers == [{'mom': 0.9}]

    sd = opt.state_dict()
    p1 = tst_param([10, 20, 30], [40, 50, 60])
    opt = Optimizer(p1, average_grad, mom=0.99)
    assert opt.hypers[0]['mom'] == 0.99
    assert dict(opt.state) == {}

    opt.load_state_dict(sd)
    assert opt.hypers[0]['mom'] == 0.9
    assert torch.equal(opt.state[p1]['grad_avg'], nb_tensor([[4., 5., 6.]]))


def test_18_clear_state():
    p = tst_param([1, 2, 3], [4, 5, 6])
    opt = Optimizer(p, average_grad)
    opt.state[p] = {'force_train': True}
    opt.step()
    assert opt.state[p]['force_train'] is True
    assert torch.equal(opt.state[p]['grad_avg'], nb_tensor([[4., 5., 6.]]))
    opt.clear_state()
    assert dict(opt.state[p]) == {'force_train': True}


# ----------------------------------------------------------------------------------------------
# #19-#21 SGD
# ----------------------------------------------------------------------------------------------
def test_19_vanilla_sgd():
    params = tst_params()
    opt = SGD(params, lr=0.1)
    opt.step()
    test_close(vals(params), [i * 0.99 for i in range(4)])
    opt.step()
    test_close(vals(params), [i * 0.98 for i in range(4)])


def test_20_sgd_momentum():
    params = tst_params()
    opt = SGD(params, lr=0.1, mom=0.9)
    assert isinstance(opt, Optimizer)
    opt.step()
    test_close(vals(params), [i * 0.99 for i in range(4)])
    opt.step()
    test_close(vals(params), [i * (1 - 0.1 * (0.1 + 0.1 * 1.9)) for i in range(4)])
    assert_observed(vals(params), [0, 0.971, 1.942, 2.9130001])
    for i, p in enumerate(params):
        test_close(opt.state[p]['grad_avg'].item(), i * 0.19)
    assert_observed([opt.state[p]['grad_avg'].item() for p in params], [0, 0.19, 0.38, 0.57])


def test_21_wd_vs_l2():
    params = tst_params()
    opt = SGD(params, lr=0.1, mom=0.9, wd=0.1)
    opt.step()
    test_close(vals(params), [i * 0.98 for i in range(4)])
    assert_observed(vals(params), [0, 0.98, 1.96, 2.94])
    # the notebook's following L2 step (no assertion there): observed i*0.9602, grads mutated to i*0.198
    opt = SGD(params, lr=0.1, mom=0.9, wd=0.1, decouple_wd=False)
    opt.step()
    test_close(vals(params), [i * 0.9602 for i in range(4)])
    test_close([p.grad.item() for p in params], [i * 0.198 for i in range(4)])


def test_21_fresh_l2_first_step_equals_wd():
    params = tst_params()
    opt = SGD(params, lr=0.1, mom=0.9, wd=0.1, decouple_wd=False)
    opt.step()
    test_close(vals(params), [i * 0.98 for i in range(4)])
    test_close([p.grad.item() for p in params], [i * 0.2 for i in range(4)])


# ----------------------------------------------------------------------------------------------
# #22-#23 RMSProp
# ----------------------------------------------------------------------------------------------
def test_22_rmsprop():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = RMSProp(params, lr=0.1)
    opt.step()
    test_close(params[0], nb_tensor([0., 1., 2.]))
    assert_observed(params[0], [9.5367e-07, 1.0000004, 2.0000002])
    opt.step()
    step = -0.1 * 0.1 / (math.sqrt((0.01 * 0.99 + 0.01) * 0.1 ** 2) + 1e-8)
    assert abs(step - -0.7088807) < 1e-7
    test_close(params[0], nb_tensor([step, 1 + step, 2 + step]))
    assert_observed(params[0], [-0.70887977, 0.29111934, 1.29111922])


def test_23_rmsprop_mom():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = RMSProp(params, lr=0.1, mom=0.9)
    opt.step()
    opt.step()
    step = -0.1 * (0.1 + 0.9 * 0.1) / (math.sqrt((0.01 * 0.99 + 0.01) * 0.1 ** 2) + 1e-8)
    assert abs(step - -1.3468733) < 1e-7
    test_close(params[0], nb_tensor([step, 1 + step, 2 + step]))
    assert_observed(params[0], [-1.34687221, -0.3468734, 0.65312624])


# ----------------------------------------------------------------------------------------------
# #24 step_stat (+ debias)
# ----------------------------------------------------------------------------------------------
def test_24_step_stat():
    p = tst_param(1, 0.1)
    state = {}
    state = step_stat(p, **state)
    assert state['step'] == 1
    for _ in range(5):
        state = step_stat(p, **state)
    assert state['step'] == 6
    assert type(state['step']) is int


def test_24_debias_values():
    assert debias(0.9, 0.1, 1) == 0.1
    assert debias(0.99, 0.01, 2) == 0.01990000000000001
    assert debias(0.9, 1, 3) == 2.7099999999999995


# ----------------------------------------------------------------------------------------------
# #25 Adam
# ----------------------------------------------------------------------------------------------
def test_25_adam():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = Adam(params, lr=0.1, wd=0)
    opt.step()
    step = -0.1 * 0.1 / (math.sqrt(0.1 ** 2) + 1e-8)
    test_close(params.data, nb_tensor([1 + step, 2 + step, 3 + step]))
    assert_observed(params[0], [0.90000999, 1.90000498, 2.90000343])
    st = opt.state[params]
    assert_observed(st['grad_avg'], [[0.01, 0.02, 0.03]])
    assert_observed(st['sqr_avg'], [[1e-4, 4e-4, 9e-4]], atol=1e-11)
    assert st['step'] == 1
    opt.step()
    test_close(params.data, nb_tensor([1 + 2 * step, 2 + 2 * step, 3 + 2 * step]), eps=1e-3)
    assert_observed(params[0], [0.80001998, 1.80000997, 2.80000687])


def test_25_adam_default_wd_and_l2_observed():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    Adam(params, lr=0.1).step()
    assert_observed(params[0], [0.89901, 1.898005, 2.897003])
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    Adam(params, lr=0.1, decouple_wd=False).step()
    assert_observed(params[0], [0.9000091, 1.9000045, 2.900003])


# ----------------------------------------------------------------------------------------------
# #26 RAdam
# ----------------------------------------------------------------------------------------------
def test_26_radam():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = RAdam(params, lr=0.1)
    r_inf = 2 / (1 - 0.99) - 1
    assert r_inf == 198.99999999999983
    expected_r = [1.0, 1.99497, 2.98660, 3.97487, 4.95980, 5.94138]
    for i in range(5):
        r = r_inf - 2 * (i + 1) * 0.99 ** (i + 1) / (1 - 0.99 ** (i + 1))
        assert abs(r - expected_r[i]) < 1e-5
        assert r <= 5
        opt.step()
        # plain momentum steps: p - (i+1) * lr * g
        test_close(params[0], nb_tensor([1., 2., 3.]) - (i + 1) * 0.1 * nb_tensor([0.1, 0.2, 0.3]))
    p = nb_tensor([0.95, 1.9, 2.85])
    test_close(params.data, p)
    assert_observed(params[0], [0.95000005, 1.9000001, 2.8500001])
    r = r_inf - 2 * 6 * 0.99 ** 6 / (1 - 0.99 ** 6)
    assert r > 5 and abs(r - expected_r[5]) < 1e-5
    opt.step()
    v = math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))
    assert abs(v - 0.0816792) < 1e-7
    step = -0.1 * 0.1 * v / (math.sqrt(0.1 ** 2) + 1e-8)
    test_close(params.data, p + step)
    assert_observed(params[0], [0.94183296, 1.89183259, 2.84183240])


def test_26_radam_beta1_and_ranger_observed():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = RAdam(params, lr=0.1, beta=1.)
    for _ in range(6):
        opt.step()
    assert_observed(params[0], [0.94890279, 1.89795339, 2.84713197])
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = ranger(params, lr=0.1)
    for _ in range(6):
        opt.step()
    assert_observed(params[0], [0.9679985, 1.940081, 2.9121633])


# ----------------------------------------------------------------------------------------------
# #27 QHAdam
# ----------------------------------------------------------------------------------------------
def test_27_qhadam():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = QHAdam(params, lr=0.1)
    opt.step()
    step = -0.1 * (((1 - 0.7) * 0.1) + (0.7 * 0.1)) / (
        math.sqrt(((1 - 1.0) * 0.1 ** 2) + (1.0 * 0.1 ** 2)) + 1e-8)
    test_close(params[0], nb_tensor([1 + step, 2 + step, 3 + step]))
    assert_observed(params[0], [0.89999998, 1.89999998, 2.9000001])
    opt.step()
    test_close(params[0], nb_tensor([1 + 2 * step, 2 + 2 * step, 3 + 2 * step]), eps=1e-3)
    assert_observed(params[0], [0.79999995, 1.79999995, 2.80000019])


# ----------------------------------------------------------------------------------------------
# #28-#29 Larc
# ----------------------------------------------------------------------------------------------
def test_28_larc_clip():
    params = [tst_param([1, 2, 3], [0.1, 0.2, 0.3]), tst_param([1, 2, 3], [0.01, 0.02, 0.03])]
    opt = Larc(params, lr=0.1)
    opt.step()
    ll0 = opt.state[params[0]]['local_lr']
    ll1 = opt.state[params[1]]['local_lr']
    # first param's local lr is 0.02 < lr: not clipped, a 0-d tensor
    test_close(ll0, 0.02)
    assert isinstance(ll0, torch.Tensor) and ll0.dim() == 0
    # second param's local lr is 0.2 > lr: clipped to the Python float lr
    assert ll1 == 0.1
    assert type(ll1) is float
    test_close(params[0], nb_tensor([0.998, 1.996, 2.994]))
    test_close(params[1], nb_tensor([0.999, 1.998, 2.997]))
    assert list(opt.state[params[0]].keys()) == ['grad_avg', 'local_lr']
    assert list(opt.state[params[1]].keys()) == ['grad_avg', 'local_lr']


def test_29_larc_no_clip():
    params = [tst_param([1, 2, 3], [0.1, 0.2, 0.3]), tst_param([1, 2, 3], [0.01, 0.02, 0.03])]
    opt = Larc(params, lr=0.1, clip=False)
    opt.step()
    ll0 = opt.state[params[0]]['local_lr']
    ll1 = opt.state[params[1]]['local_lr']
    test_close(ll0, 0.02)
    test_close(ll1, 0.2)
    assert isinstance(ll0, torch.Tensor) and ll0.dim() == 0
    assert isinstance(ll1, torch.Tensor) and ll1.dim() == 0
    test_close(params[0], nb_tensor([0.998, 1.996, 2.994]))
    test_close(params[1], nb_tensor([0.998, 1.996, 2.994]))


# ----------------------------------------------------------------------------------------------
# #30 Lamb
# ----------------------------------------------------------------------------------------------
def test_30_lamb():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = Lamb(params, lr=0.1)
    opt.step()
    test_close(params[0], nb_tensor([0.7840, 1.7840, 2.7840]), eps=1e-3)
    assert_observed(params[0], [0.78398371, 1.78397286, 2.7839694])
    # independent recomputation: r1 = sqrt(14/3), u = g/(|g|+eps)
    g = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    u = g / (g.abs() + 1e-5)
    r1 = math.sqrt(14 / 3)
    assert abs(r1 - 2.160247) < 1e-6
    r2 = u.pow(2).mean().sqrt().item()
    ref = torch.tensor([1., 2., 3.], dtype=torch.float64) - 0.1 * (r1 / r2) * u
    assert_observed(params[0], ref)


def test_30_lamb_two_steps_and_zero_param_observed():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    opt = Lamb(params, lr=0.1)
    opt.step()
    opt.step()
    assert_observed(params[0], [0.58779693, 1.58777618, 2.58776951])
    params = tst_param([0, 0, 0], [0.1, 0.2, 0.3])
    Lamb(params, lr=0.1).step()
    assert_observed(params[0], [-0.09999001, -0.09999501, -0.09999666])


# ----------------------------------------------------------------------------------------------
# #31 Lookahead
# ----------------------------------------------------------------------------------------------
def test_31_lookahead():
    params = tst_param([1, 2, 3], [0.1, 0.2, 0.3])
    p, g = params[0].data.clone(), nb_tensor([0.1, 0.2, 0.3])
    opt = Lookahead(SGD(params, lr=0.1))
    for k in range(5):
        opt.step()
    # first 5 steps are normal SGD steps
    test_close(params[0], p - 0.5 * g)
    assert_observed(params[0], [0.95000005, 1.9000001, 2.8500001])
    # k=6: the sixth step is a moving average of the 6 SGD steps with the initial weight
    opt.step()
    test_close(params[0], p * 0.5 + (p - 0.6 * g) * 0.5)
    assert_observed(params[0], [0.97000003, 1.94000006, 2.91000009])
    sw = opt.slow_weights
    assert len(sw) == 1 and len(sw[0]) == 1
    assert sw[0][0].shape == (1, 3)
    test_close(sw[0][0], nb_tensor([[0.9700, 1.9400, 2.9100]]))
    assert opt.k == 6 and opt.alpha == 0.5
    assert opt.count == 6


# ----------------------------------------------------------------------------------------------
# #32-#33 detuplify_pg / set_item_pg
# ----------------------------------------------------------------------------------------------
def test_32_detuplify_pg():
    tst = {'lr': 1e-2, 'mom': 0.9, 'params': [0, 1, 2]}
    assert detuplify_pg(tst) == {'lr': 1e-2, 'mom': 0.9}
    tst = {'lr': 1e-2, 'betas': (0.9, 0.999), 'params': [0, 1, 2]}
    assert detuplify_pg(tst) == {'lr': 1e-2, 'betas__0': 0.9, 'betas__1': 0.999}
    assert detuplify_pg({'lr': 1, 'x': [1, 2]}) == {'lr': 1, 'x__0': 1, 'x__1': 2}


def test_33_set_item_pg():
    tst = {'lr': 1e-2, 'mom': 0.9, 'params': [0, 1, 2]}
    res = set_item_pg(tst, 'lr', 1e-3)
    assert res == {'lr': 1e-3, 'mom': 0.9, 'params': [0, 1, 2]}
    assert tst['lr'] == 1e-3  # in place
    tst = {'lr': 1e-2, 'betas': (0.9, 0.999), 'params': [0, 1, 2]}
    res = set_item_pg(tst, 'betas__0', 0.95)
    assert res == {'lr': 1e-2, 'betas': (0.95, 0.999), 'params': [0, 1, 2]}
    assert isinstance(tst['betas'], tuple)


# ----------------------------------------------------------------------------------------------
# #34-#37 OptimWrapper
# (the notebook uses int tensors `tensor([1,2,3])`; float tensors here, the semantics are the same)
# ----------------------------------------------------------------------------------------------
def T(*xs):
    return torch.tensor([float(x) for x in xs])


def values(groups):
    return [[t.tolist() for t in g] for g in groups]


SGD_TORCH_HYPERS = {'lr': 0.001, 'mom': 0.9, 'dampening': 0, 'wd': 0.01, 'nesterov': False,
                    'maximize': False, 'foreach': None, 'differentiable': False, 'fused': None}


def test_34_optimwrapper_sgd():
    sgd = SGD([T(1, 2, 3)], lr=1e-3, mom=0.9, wd=1e-2)
    tst_sgd = OptimWrapper([T(1, 2, 3)], torch.optim.SGD, lr=1e-3, momentum=0.9, weight_decay=1e-2)
    assert values(tst_sgd.param_lists) == values(sgd.param_lists)
    tst_sgd.param_lists = [[T(4, 5, 6)]]
    assert [t.tolist() for t in tst_sgd.opt.param_groups[0]['params']] == [[4., 5., 6.]]
    hy = tst_sgd.hypers
    assert len(hy) == 1
    for k, v in sgd.hypers[0].items():
        assert hy[0][k] == v
    assert hy[0]['dampening'] == 0. and hy[0]['nesterov'] is False
    assert hy[0] == SGD_TORCH_HYPERS
    tst_sgd.set_hyper('mom', 0.95)
    assert tst_sgd.opt.param_groups[0]['momentum'] == 0.95


def _check_two_group_wrapper(tst_sgd, sgd):
    assert values(tst_sgd.param_lists) == values(sgd.param_lists)
    tst_sgd.param_lists = [[T(4, 5, 6)], [T(1, 2, 3)]]
    assert [t.tolist() for t in tst_sgd.opt.param_groups[0]['params']] == [[4., 5., 6.]]
    assert [t.tolist() for t in tst_sgd.opt.param_groups[1]['params']] == [[1., 2., 3.]]
    hy = tst_sgd.hypers
    assert len(hy) == 2
    for i in range(2):
        for k, v in sgd.hypers[i].items():
            assert hy[i][k] == v
        assert hy[i]['dampening'] == 0. and hy[i]['nesterov'] is False
    tst_sgd.set_hyper('mom', 0.95)
    assert [pg['momentum'] for pg in tst_sgd.opt.param_groups] == [0.95, 0.95]
    tst_sgd.set_hyper('lr', [1e-4, 1e-3])
    assert [pg['lr'] for pg in tst_sgd.opt.param_groups] == [1e-4, 1e-3]


def test_35_optimwrapper_dict_groups():
    tst_sgd = OptimWrapper([{'params': [T(1, 2, 3)], 'lr': 1e-3}, {'params': [T(4, 5, 6)], 'lr': 1e-2}],
                           torch.optim.SGD, momentum=0.9, weight_decay=1e-2)
    sgd = SGD([[T(1, 2, 3)], [T(4, 5, 6)]], lr=[1e-3, 1e-2], mom=0.9, wd=1e-2)
    _check_two_group_wrapper(tst_sgd, sgd)


def test_36_optimwrapper_built_optimizer():
    sgd = SGD([[T(1, 2, 3)], [T(4, 5, 6)]], lr=[1e-3, 1e-2], mom=0.9, wd=1e-2)
    tst_sgd = OptimWrapper(opt=torch.optim.SGD([{'params': [T(1, 2, 3)], 'lr': 1e-3},
                                                {'params': [T(4, 5, 6)], 'lr': 1e-2}],
                                               momentum=0.9, weight_decay=1e-2))
    _check_two_group_wrapper(tst_sgd, sgd)


ADAM_HYPERS = {'lr': 0.01, 'mom': 0.9, 'sqr_mom': 0.99, 'eps': 1e-08, 'wd': 0, 'amsgrad': False, 'maximize': False}


def _check_adam_wrapper(tst_adam):
    hy = tst_adam.hypers
    assert len(hy) == 1
    for k, v in ADAM_HYPERS.items():
        assert hy[0][k] == v
    tst_adam.set_hyper('mom', 0.95)
    assert tst_adam.opt.param_groups[0]['betas'] == (0.95, 0.99)
    tst_adam.set_hyper('sqr_mom', 0.9)
    assert tst_adam.opt.param_groups[0]['betas'] == (0.95, 0.9)


def test_37_optimwrapper_tuple_hypers():
    _check_adam_wrapper(OptimWrapper([T(1, 2, 3)], torch.optim.Adam, lr=1e-2, betas=(0.9, 0.99)))
    _check_adam_wrapper(OptimWrapper(opt=torch.optim.Adam([T(1, 2, 3)], lr=1e-2, betas=(0.9, 0.99))))


def test_37_optimwrapper_construction_errors():
    with pytest.raises(ValueError):
        OptimWrapper()
    with pytest.raises(ValueError):
        OptimWrapper([T(1, 2)], opt=torch.optim.SGD([T(1, 2)], lr=0.1))


# ----------------------------------------------------------------------------------------------
# #38-#41 training equivalence (hidden notebook cells)
# ----------------------------------------------------------------------------------------------
def _mock_train(m, x, y, opt):
    m.train()
    for i in range(0, 100, 25):
        z = m(x[i:i + 25])
        loss = F.mse_loss(z, y[i:i + 25])
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture
def lin_data():
    torch.manual_seed(42)
    m = nn.Linear(4, 5)
    x = torch.randn(100, 3, 4)
    y = torch.randn(100, 3, 5)
    return m, copy.deepcopy(m.state_dict()), x, y


def _train(lin_data, make_opt):
    m, sd, x, y = lin_data
    m.load_state_dict(sd)
    opt = make_opt(m)
    _mock_train(m, x.clone(), y.clone(), opt)
    return m.weight.data.clone(), m.bias.data.clone()


def _compare(a, b, tight):
    (w1, b1), (w2, b2) = a, b
    test_close(w1, w2, eps=1e-3)
    test_close(b1, b2, eps=1e-3)
    assert (w1 - w2).abs().max().item() < tight
    assert (b1 - b2).abs().max().item() < tight


def test_38_wrapper_adamw_vs_adam(lin_data):
    a = _train(lin_data, lambda m: OptimWrapper(m.parameters(), torch.optim.AdamW, betas=(0.9, 0.99),
                                                eps=1e-5, weight_decay=1e-2))
    b = _train(lin_data, lambda m: Adam(m.parameters(), 1e-3, wd=1e-2))
    _compare(a, b, 1e-6)


def test_39_built_adamw_vs_adam(lin_data):
    a = _train(lin_data, lambda m: OptimWrapper(opt=torch.optim.AdamW(m.parameters(), betas=(0.9, 0.99),
                                                                      eps=1e-5, weight_decay=1e-2)))
    b = _train(lin_data, lambda m: Adam(m.parameters(), 1e-3, wd=1e-2))
    _compare(a, b, 1e-6)
    # and the raw torch optimizer (no wrapper) gives the same
    c = _train(lin_data, lambda m: torch.optim.AdamW(m.parameters(), betas=(0.9, 0.99), eps=1e-5,
                                                     weight_decay=1e-2))
    _compare(c, b, 1e-6)


def test_40_wrapper_adam_l2_vs_adam_l2(lin_data):
    a = _train(lin_data, lambda m: OptimWrapper(m.parameters(), torch.optim.Adam, betas=(0.9, 0.99),
                                                eps=1e-5, weight_decay=1e-2))
    b = _train(lin_data, lambda m: Adam(m.parameters(), 1e-3, wd=1e-2, decouple_wd=False))
    _compare(a, b, 1e-6)


def test_41_built_adam_l2_vs_adam_l2(lin_data):
    a = _train(lin_data, lambda m: OptimWrapper(opt=torch.optim.Adam(m.parameters(), betas=(0.9, 0.99),
                                                                     eps=1e-5, weight_decay=1e-2)))
    b = _train(lin_data, lambda m: Adam(m.parameters(), 1e-3, wd=1e-2, decouple_wd=False))
    _compare(a, b, 1e-6)


# ----------------------------------------------------------------------------------------------
# The R documentation page (000_9c18b15ab63a52c6.txt): pyfastopt.tst_param follows it
# (a number gives a 0-d tensor, a list a 1-D tensor; default grad val/10)
# ----------------------------------------------------------------------------------------------
R = pyfastopt.tst_param


def r_params():
    return L([R(float(i)) for i in range(4)])


def test_r_tst_param_shapes():
    p = R(1.)
    assert p.shape == () and p.dtype == torch.float32
    assert repr(p) == 'tensor(1.)'
    assert p.grad.shape == () and abs(p.grad.item() - 0.1) < 1e-8
    p = R([1, 2, 3], [4, 5, 6])
    assert p.shape == (3,) and p.dtype == torch.float32 and p.grad.dtype == torch.float32
    assert p.grad.tolist() == [4., 5., 6.]


def test_r_sgd_step():
    p = R(1., 0.1)
    sgd_step(p, 1.)
    assert repr(p) == 'tensor(0.9000)'
    assert repr(p.grad) == 'tensor(0.1000)'


def test_r_optimizer_steps():
    params = r_params()
    Optimizer(params, sgd_step, lr=0.1).step()
    assert [repr(p) for p in params] == ['tensor(0.)', 'tensor(0.9900)', 'tensor(1.9800)', 'tensor(2.9700)']
    params = r_params()
    Optimizer(params, [weight_decay, sgd_step], lr=0.1, wd=0.1).step()
    assert [repr(p) for p in params] == ['tensor(0.)', 'tensor(0.9800)', 'tensor(1.9600)', 'tensor(2.9400)']
    params = r_params()
    opt = Optimizer(params, sgd_step, lr=0.1)
    params[3].grad = None
    opt.step()
    assert [repr(p) for p in params] == ['tensor(0.)', 'tensor(0.9900)', 'tensor(1.9800)', 'tensor(3.)']
    params = r_params()
    opt = Optimizer([params[0:2], params[2:4]], sgd_step, lr=0.1)
    opt.hypers.items[0]['lr'] = 0.01
    opt.step()
    assert [repr(p) for p in params] == ['tensor(0.)', 'tensor(0.9990)', 'tensor(1.9800)', 'tensor(2.9700)']
    params = r_params()
    opt = Optimizer(params, [weight_decay, sgd_step], lr=0.1, wd=0.1)
    opt.zero_grad()
    assert [repr(p) for p in params] == ['tensor(0.)', 'tensor(1.)', 'tensor(2.)', 'tensor(3.)']
    assert all(p.grad.shape == () and p.grad.item() == 0 for p in params)


def test_r_average_sqr_grad():
    p = R([1, 2, 3], [4, 5, 6])
    state = average_sqr_grad(p, sqr_mom=0.99, dampening=False)
    assert repr(state['sqr_avg']) == 'tensor([16., 25., 36.])'
    state = average_sqr_grad(p, sqr_mom=0.99, dampening=False, **state)
    assert repr(state['sqr_avg']) == 'tensor([31.8400, 49.7500, 71.6400])'
    state = average_sqr_grad(p, sqr_mom=0.99)
    assert repr(state['sqr_avg']) == 'tensor([0.1600, 0.2500, 0.3600])'
    state = average_sqr_grad(p, sqr_mom=0.99, **state)
    assert repr(state['sqr_avg']) == 'tensor([0.3184, 0.4975, 0.7164])'


def test_r_freeze_to_single_group_warns():
    params = r_params()
    opt = Optimizer(params, sgd_step, lr=0.1)
    with pytest.warns(UserWarning, match="Freezing 1 groups; model has 1; whole model is frozen."):
        opt.freeze_to(1)
    assert [p.requires_grad for p in params] == [False] * 4


def test_r_sgd_factories():
    expected99 = ['tensor(0.)', 'tensor(0.9900)', 'tensor(1.9800)', 'tensor(2.9700)']
    expected98 = ['tensor(0.)', 'tensor(0.9800)', 'tensor(1.9600)', 'tensor(2.9400)']
    params = r_params()
    SGD(params, lr=0.1).step()
    assert [repr(p) for p in params] == expected99
    params = r_params()
    SGD(params, lr=0.1, mom=0.9).step()
    assert [repr(p) for p in params] == expected99
    params = r_params()
    SGD(params, lr=0.1, mom=0.9, wd=0.1).step()
    assert [repr(p) for p in params] == expected98
    params = r_params()
    SGD(params, lr=0.1, mom=0.9, wd=0.1, decouple_wd=False).step()
    assert [repr(p) for p in params] == expected98


def test_r_rmsprop():
    params = R([1, 2, 3], [0.1, 0.2, 0.3])
    opt = RMSProp(params, lr=0.1)
    opt.step()
    opt.step()
    assert repr(params) == 'tensor([-0.7089,  0.2911,  1.2911])'
    params = R([1, 2, 3], [0.1, 0.2, 0.3])
    opt = RMSProp(params, lr=0.1, mom=0.9)
    opt.step()
    opt.step()
    assert repr(params) == 'tensor([-1.3469, -0.3469,  0.6531])'


def test_r_adam_qhadam():
    for fac in (lambda p: Adam(p, lr=0.1, wd=0), lambda p: QHAdam(p, lr=0.1)):
        params = R([1, 2, 3], [0.1, 0.2, 0.3])
        opt = fac(params)
        opt.step()
        assert repr(params) == 'tensor([0.9000, 1.9000, 2.9000])'
        opt.step()
        assert repr(params) == 'tensor([0.8000, 1.8000, 2.8000])'


def test_r_larc():
    params = [R([1, 2, 3], [0.1, 0.2, 0.3]), R([1, 2, 3], [0.01, 0.02, 0.03])]
    opt = Larc(params, lr=0.1)
    opt.step()
    assert repr(opt.state[params[0]]['local_lr']) == 'tensor(0.0200)'
    assert opt.state[params[1]]['local_lr'] == 0.1 and type(opt.state[params[1]]['local_lr']) is float
    params = [R([1, 2, 3], [0.1, 0.2, 0.3]), R([1, 2, 3], [0.01, 0.02, 0.03])]
    opt = Larc(params, lr=0.1, clip=False)
    opt.step()
    assert repr(opt.state[params[0]]['local_lr']) == 'tensor(0.0200)'
    assert repr(opt.state[params[1]]['local_lr']) == 'tensor(0.2000)'


def test_r_lamb():
    params = R([1, 2, 3], [0.1, 0.2, 0.3])
    Lamb(params, lr=0.1).step()
    assert repr(params) == 'tensor([0.7840, 1.7840, 2.7840])'


def test_r_lookahead():
    params = R([1, 2, 3], [0.1, 0.2, 0.3])
    opt = Lookahead(SGD(params, lr=0.1))
    for _ in range(5):
        opt.step()
    assert repr(params) == 'tensor([0.9500, 1.9000, 2.8500])'
    opt.step()
    assert repr(params) == 'tensor([0.9700, 1.9400, 2.9100])'
