"""RMSProp: [weight_decay | l2_reg, (average_grad), average_sqr_grad, rms_prop_step]
(fastai's `RMSProp`; its `eps` is honoured, which fastai's factory forgets)."""
import ctypes

from .. import steppers as S
from ..native import F_MOM, Decay, Moments, doubles, fill_moments
from ..optimizer import Optimizer
from ..recipe import Chain, NativeSpec, Opt, Recipe, Step, register
from ._shared import Params, decay_stepper, is_zero
from ..torch_names import accepts_torch_names


@accepts_torch_names
def RMSProp(params: Params, lr: float, mom: float = 0., sqr_mom: float = 0.99, eps: float = 1e-8,
            wd: float = 0., decouple_wd: bool = True) -> Optimizer:
    "RMSProp with `lr`, `sqr_mom` (the alpha of the course), optional momentum `mom`, `eps`, `wd`."
    cbs = [decay_stepper(decouple_wd)]
    cbs += [S.average_sqr_grad] if is_zero(mom) else [S.average_grad, S.average_sqr_grad]
    cbs.append(S.rms_prop_step)
    return Optimizer(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, wd=wd, eps=eps)


# ---- native kernel: pfo_rmsprop_hypers, pfo_rmsprop --------------------------------------------
class RMSPropHypers(ctypes.Structure):
    _c_name_ = "pfo_rmsprop_hypers"
    _fields_ = [("decay", Decay), ("avg", Moments)] + doubles("lr", "eps")


def _native_fill(h, options, hv, step):
    sqr_mom = hv["sqr_mom"]
    fill_moments(h.avg, hv.get("mom", 0.), sqr_mom, 1., 1 - sqr_mom if options["damp2"] else 1.)
    h.lr, h.eps = hv["lr"], hv["eps"]
    return F_MOM if options["mom"] else 0


_SQR = Step(S.average_sqr_grad, dampening=Opt("damp2"))
RECIPE = register(Recipe(
    "rmsprop",
    chains=[Chain(_SQR, Step(S.rms_prop_step), mom=False),
            Chain(Step(S.average_grad, dampening=False), _SQR, Step(S.rms_prop_step), mom=True)],
    native=NativeSpec("rmsprop", RMSPropHypers, fill=_native_fill,
                      needs=lambda o: ("lr", "mom", "sqr_mom", "eps", "wd") if o["mom"]
                      else ("lr", "sqr_mom", "eps", "wd"),
                      state=lambda o: ("grad_avg", "sqr_avg") if o["mom"] else ("sqr_avg",)),
))
