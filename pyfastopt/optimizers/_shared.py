"""What the optimizer families share: the decay stepper they start with, the Adam family's chain,
and the type of `params` their factories take."""
from functools import partial
from typing import Any, Dict, Iterable, Union

import torch

from .. import steppers as S
from ..native import fill_moments
from ..recipe import Chain, Opt, Step

__all__ = ["Params", "decay_stepper", "as_flag", "is_zero", "adam_chain", "adam_family_chain",
           "fill_adam_moments"]

# What a factory takes as `params`: tensors, a list of lists (fastai's groups), or torch-style
# group dicts `{'params': [...], 'lr': ...}`.
Params = Union[Iterable[torch.Tensor], Iterable[Iterable[torch.Tensor]], Iterable[Dict[str, Any]]]


def as_flag(name, v):
    "True or False (R sends 1/0 as numbers)."
    if not isinstance(v, (bool, int)) or v not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def decay_stepper(decouple_wd):
    "The first stepper of every factory: true weight decay, or L2 regularization."
    return S.weight_decay if as_flag("decouple_wd", decouple_wd) else S.l2_reg


def is_zero(x):
    "Whether a hyper is 0 (odd types are not: the optimizer's checks reject them later)."
    try:
        return x == 0
    except Exception:  # noqa: BLE001
        return False


def adam_chain(decouple_wd, last, sqr_dampening=None):
    "The Adam family's stepper chain: decay, dampened moving averages, step count, then `last`."
    sqr = S.average_sqr_grad if sqr_dampening is None else \
        partial(S.average_sqr_grad, dampening=sqr_dampening)
    return [decay_stepper(decouple_wd), partial(S.average_grad, dampening=True), sqr, S.step_stat,
            last]


def adam_family_chain(last):
    "The pattern of `adam_chain(..., last)`; the square's dampening is the option `damp2`."
    return Chain(Step(S.average_grad, dampening=True),
                 Step(S.average_sqr_grad, dampening=Opt("damp2")), Step(S.step_stat), Step(last))


def fill_adam_moments(avg, options, hv):
    "The moving averages of the Adam family: dampened by 1 - mom (and 1 - sqr_mom unless not)."
    mom, sqr_mom = hv["mom"], hv["sqr_mom"]
    fill_moments(avg, mom, sqr_mom, 1 - mom, 1 - sqr_mom if options["damp2"] else 1.)
