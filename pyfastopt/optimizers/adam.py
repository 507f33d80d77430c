"""Adam: [weight_decay | l2_reg, average_grad(dampening=True), average_sqr_grad, step_stat,
adam_step] (fastai's `Adam`; AdamW-like by default)."""
import ctypes

import torch

from .. import steppers as S
from ..native import F_ADAPTIVE, F_EPS, Decay, Moments, doubles
from ..optimizer import Optimizer
from ..recipe import FusedSpec, NativeSpec, Recipe, register
from ._shared import Params, adam_chain, adam_family_chain, fill_adam_moments
from ..torch_names import accepts_torch_names


@accepts_torch_names
def Adam(params: Params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
         wd: float = 0.01, decouple_wd: bool = True) -> Optimizer:
    "Adam with `lr`, `mom` (beta1), `sqr_mom` (beta2), `eps` and weight decay `wd` (AdamW-like by default)."
    return Optimizer(params, adam_chain(decouple_wd, S.adam_step), lr=lr, mom=mom,
                     sqr_mom=sqr_mom, eps=eps, wd=wd)


# ---- native kernel: pfo_adam_hypers, pfo_adam (shared with RAdam) ------------------------------
class AdamHypers(ctypes.Structure):
    _c_name_ = "pfo_adam_hypers"
    _fields_ = [("decay", Decay), ("avg", Moments)] + doubles("step_size", "eps", "debias2")


def _native_fill(h, options, hv, step):
    fill_adam_moments(h.avg, options, hv)
    h.step_size = -hv["lr"] / S.debias(hv["mom"], 1 - hv["mom"], step)
    h.eps, h.debias2 = hv["eps"], S.debias(hv["sqr_mom"], 1 - hv["sqr_mom"], step)
    return F_ADAPTIVE | F_EPS


# ---- torch's fused kernels: _fused_adamw_ (decay inside) or _fused_adam_ after l2_reg ----------
def fused_adam(k, bucket, lr, hv, step):
    "One `_fused_adam_` call (no decay) at `lr`: Adam's update, also RAdam's rectified one."
    m, v = k.zeros(bucket, "grad_avg"), k.zeros(bucket, "sqr_avg")
    b = bucket.batch
    torch._fused_adam_(b.data, b.grad, m, v, [], k.step_tensors(bucket, step), lr=lr,
                       beta1=hv["mom"], beta2=hv["sqr_mom"], weight_decay=0., eps=hv["eps"],
                       amsgrad=False, maximize=False)


def _fused_run(k, bucket, hv, step, do_wd):
    lr, wd = hv["lr"], hv["wd"]
    if not k.decoupled:
        k.decay_apart(bucket, lr, wd, do_wd)
        fused_adam(k, bucket, lr, hv, step)
        return True
    m, v = k.zeros(bucket, "grad_avg"), k.zeros(bucket, "sqr_avg")
    b = bucket.batch
    torch._fused_adamw_(b.data, b.grad, m, v, [], k.step_tensors(bucket, step), lr=lr,
                        beta1=hv["mom"], beta2=hv["sqr_mom"],
                        weight_decay=wd if (do_wd and wd != 0) else 0., eps=hv["eps"],
                        amsgrad=False, maximize=False)
    return True


NEEDS = ("lr", "mom", "sqr_mom", "eps", "wd")
RECIPE = register(Recipe(
    "adam",
    chains=[adam_family_chain(S.adam_step)],
    native=NativeSpec("adam", AdamHypers, needs=NEEDS, fill=_native_fill,
                      state=("grad_avg", "sqr_avg"), counts_steps=True),
    # torch's kernels always dampen the square's average
    fused=FusedSpec(_fused_run, needs=NEEDS, counts_steps=True, applies=lambda o: o["damp2"]),
))
