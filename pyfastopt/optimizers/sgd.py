"""SGD: [weight_decay | l2_reg, (average_grad), sgd_step | momentum_step] (fastai's `SGD`)."""
import ctypes

import torch

from .. import steppers as S
from ..native import F_MOM, Decay, doubles
from ..optimizer import Optimizer
from ..recipe import Chain, FusedSpec, NativeSpec, Recipe, Step, register
from ._shared import Params, decay_stepper, is_zero
from ..torch_names import accepts_torch_names


@accepts_torch_names
def SGD(params: Params, lr: float, mom: float = 0., wd: float = 0.,
        decouple_wd: bool = True) -> Optimizer:
    "SGD with `lr`, momentum `mom` and weight decay `wd` (true decay, or L2 if not `decouple_wd`)."
    cbs = [decay_stepper(decouple_wd)]
    if not is_zero(mom):
        cbs.append(S.average_grad)
    cbs.append(S.sgd_step if is_zero(mom) else S.momentum_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, wd=wd)


# ---- native kernel: pfo_sgd_hypers, pfo_sgd ----------------------------------------------------
class SGDHypers(ctypes.Structure):
    _c_name_ = "pfo_sgd_hypers"
    _fields_ = [("decay", Decay)] + doubles("lr", "mom", "damp")


def _native_fill(h, options, hv, step):
    h.lr, h.mom, h.damp = hv["lr"], hv.get("mom", 0.), 1.      # average_grad: undampened
    return F_MOM if options["mom"] else 0


# ---- torch's fused kernel (with momentum): grad_avg = mom * grad_avg + g; p -= lr * grad_avg ---
def _fused_run(k, bucket, hv, step, do_wd):
    lr, mom = hv["lr"], hv["mom"]
    if mom == 0:
        return False
    k.decay_apart(bucket, lr, hv["wd"], do_wd)
    buf = k.zeros(bucket, "grad_avg")
    b = bucket.batch
    torch._fused_sgd_(b.data, b.grad, buf, weight_decay=0., momentum=mom, lr=lr, dampening=0.,
                      nesterov=False, maximize=False, is_first_step=False)
    return True


RECIPE = register(Recipe(
    "sgd",
    chains=[Chain(Step(S.sgd_step), mom=False),
            Chain(Step(S.average_grad, dampening=False), Step(S.momentum_step), mom=True)],
    native=NativeSpec("sgd", SGDHypers, fill=_native_fill,
                      needs=lambda o: ("lr", "mom", "wd") if o["mom"] else ("lr", "wd"),
                      state=lambda o: ("grad_avg",) if o["mom"] else ()),
    fused=FusedSpec(_fused_run, needs=("lr", "mom", "wd"), applies=lambda o: o["mom"]),
))
