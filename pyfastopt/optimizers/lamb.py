"""LAMB: Adam's chain with `lamb_step`, the Adam update scaled per tensor by a trust ratio
(fastai's `Lamb`)."""
import ctypes

from .. import steppers as S
from ..native import Decay, Moments, doubles
from ..optimizer import Optimizer
from ..recipe import NativeSpec, Recipe, register
from ._shared import Params, adam_chain, adam_family_chain, fill_adam_moments
from ..torch_names import accepts_torch_names


@accepts_torch_names
def Lamb(params: Params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
         wd: float = 0., decouple_wd: bool = True) -> Optimizer:
    "LAMB: Adam's update scaled per layer by a trust ratio."
    return Optimizer(params, adam_chain(decouple_wd, S.lamb_step), lr=lr, mom=mom,
                     sqr_mom=sqr_mom, eps=eps, wd=wd)


# ---- native kernel: pfo_lamb_hypers, pfo_lamb (two passes: norms, then the update) -------------
class LambHypers(ctypes.Structure):
    _c_name_ = "pfo_lamb_hypers"
    _fields_ = [("decay", Decay), ("avg", Moments)] + doubles("lr", "eps", "debias1", "debias2")


def _native_fill(h, options, hv, step):
    mom, sqr_mom = hv["mom"], hv["sqr_mom"]
    fill_adam_moments(h.avg, options, hv)
    h.lr, h.eps = hv["lr"], hv["eps"]
    h.debias1, h.debias2 = S.debias(mom, 1 - mom, step), S.debias(sqr_mom, 1 - sqr_mom, step)
    return 0


RECIPE = register(Recipe(
    "lamb",
    chains=[adam_family_chain(S.lamb_step)],
    native=NativeSpec("lamb", LambHypers, fill=_native_fill, counts_steps=True,
                      needs=("lr", "mom", "sqr_mom", "eps", "wd"), state=("grad_avg", "sqr_avg")),
))
