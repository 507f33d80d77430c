"""fastai's optimizer factories: each returns an `Optimizer` with a stepper chain (spec §4).

Signatures, defaults and the order of the hypers they pass are fastai 2.8.12's, so `hypers`
keys come out in fastai's order. One fastai bug is fixed: `RMSProp(eps=...)` is honoured.
"""
from functools import partial

from .optimizer import Optimizer
from .steppers import (adam_step, average_grad, average_sqr_grad, l2_reg, lamb_step, larc_layer_lr,
                       larc_step, momentum_step, qhadam_step, radam_step, rms_prop_step, sgd_step,
                       step_stat, weight_decay)
from .wrappers import Lookahead

__all__ = ["SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "ranger"]


def _flag(name, v):
    if not isinstance(v, (bool, int)) or v not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def _decay(decouple_wd):
    "The first stepper of every factory: true weight decay, or L2 regularization."
    return weight_decay if _flag("decouple_wd", decouple_wd) else l2_reg


def _adam_chain(decouple_wd, last, sqr_dampening=None):
    "The chain of the Adam family: decay, dampened moving averages, step count, then `last`."
    sqr = average_sqr_grad if sqr_dampening is None else \
        partial(average_sqr_grad, dampening=sqr_dampening)
    return [_decay(decouple_wd), partial(average_grad, dampening=True), sqr, step_stat, last]


def _is_zero(mom):
    try:
        return mom == 0
    except Exception:  # noqa: BLE001 - odd types are rejected by the optimizer's checks
        return False


def SGD(params, lr, mom=0., wd=0., decouple_wd=True):
    "SGD with `lr`, momentum `mom` and weight decay `wd` (true decay, or L2 if not `decouple_wd`)."
    cbs = [_decay(decouple_wd)]
    if not _is_zero(mom):
        cbs.append(average_grad)
    cbs.append(sgd_step if _is_zero(mom) else momentum_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, wd=wd)


def RMSProp(params, lr, mom=0., sqr_mom=0.99, eps=1e-8, wd=0., decouple_wd=True):
    "RMSProp with `lr`, `sqr_mom` (the alpha of the course), optional momentum `mom`, `eps`, `wd`."
    cbs = [_decay(decouple_wd)]
    cbs += [average_sqr_grad] if _is_zero(mom) else [average_grad, average_sqr_grad]
    cbs.append(rms_prop_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, wd=wd, eps=eps)


def Adam(params, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01, decouple_wd=True):
    "Adam with `lr`, `mom` (beta1), `sqr_mom` (beta2), `eps` and weight decay `wd` (AdamW-like by default)."
    cbs = _adam_chain(decouple_wd, adam_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


def RAdam(params, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0., beta=0., decouple_wd=True):
    "RAdam (rectified Adam); `beta` > 0 applies SAdam's softplus to the denominator."
    cbs = _adam_chain(decouple_wd, radam_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd, beta=beta)


def QHAdam(params, lr, mom=0.999, sqr_mom=0.999, nu_1=0.7, nu_2=1.0, eps=1e-8, wd=0.,
           decouple_wd=True):
    "QHAdam (quasi-hyperbolic Adam) with `lr`, `mom`, `sqr_mom`, `nu_1`, `nu_2`, `eps`, `wd`."
    cbs = _adam_chain(decouple_wd, qhadam_step, sqr_dampening=True)
    return Optimizer(params, cbs, lr=lr, nu_1=nu_1, nu_2=nu_2, mom=mom, sqr_mom=sqr_mom, eps=eps,
                     wd=wd)


def Larc(params, lr, mom=0.9, clip=True, trust_coeff=0.02, eps=1e-8, wd=0., decouple_wd=True):
    "LARC (LARS with `clip=False`): SGD with a per-layer learning rate from `trust_coeff`."
    cbs = [_decay(decouple_wd)]
    if not _is_zero(mom):
        cbs.append(average_grad)
    cbs += [partial(larc_layer_lr, clip=_flag("clip", clip)), larc_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, trust_coeff=trust_coeff, eps=eps, wd=wd)


def Lamb(params, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0., decouple_wd=True):
    "LAMB: Adam's update scaled per layer by a trust ratio."
    cbs = _adam_chain(decouple_wd, lamb_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


def ranger(params, lr, mom=0.95, wd=0.01, eps=1e-6, k=6, alpha=0.5, *, sqr_mom=0.99, beta=0.,
           decouple_wd=True):
    "Ranger: `Lookahead` over `RAdam`."
    return Lookahead(RAdam(params, lr=lr, mom=mom, wd=wd, eps=eps, sqr_mom=sqr_mom, beta=beta,
                           decouple_wd=decouple_wd), k=k, alpha=alpha)
