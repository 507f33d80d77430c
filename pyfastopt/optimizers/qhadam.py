"""QHAdam: Adam's chain (both averages dampened) with `qhadam_step`, quasi-hyperbolic mixes of
the gradient and its averages (fastai's `QHAdam`)."""
import ctypes

from .. import steppers as S
from ..native import Decay, Moments, doubles
from ..optimizer import Optimizer
from ..recipe import NativeSpec, Recipe, register
from ._shared import Params, adam_chain, adam_family_chain, fill_adam_moments
from ..torch_names import accepts_torch_names


@accepts_torch_names
def QHAdam(params: Params, lr: float, mom: float = 0.999, sqr_mom: float = 0.999, nu_1: float = 0.7,
           nu_2: float = 1.0, eps: float = 1e-8, wd: float = 0.,
           decouple_wd: bool = True) -> Optimizer:
    "QHAdam (quasi-hyperbolic Adam) with `lr`, `mom`, `sqr_mom`, `nu_1`, `nu_2`, `eps`, `wd`."
    return Optimizer(params, adam_chain(decouple_wd, S.qhadam_step, sqr_dampening=True), lr=lr,
                     nu_1=nu_1, nu_2=nu_2, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


# ---- native kernel: pfo_qhadam_hypers, pfo_qhadam ----------------------------------------------
class QHAdamHypers(ctypes.Structure):
    _c_name_ = "pfo_qhadam_hypers"
    _fields_ = [("decay", Decay), ("avg", Moments)] + doubles(
        "lr", "eps", "debias1", "debias2", "one_minus_nu_1", "nu_1", "one_minus_nu_2", "nu_2")


def _native_fill(h, options, hv, step):
    mom, sqr_mom, nu_1, nu_2 = hv["mom"], hv["sqr_mom"], hv["nu_1"], hv["nu_2"]
    fill_adam_moments(h.avg, options, hv)
    h.lr, h.eps = hv["lr"], hv["eps"]
    h.debias1, h.debias2 = S.debias(mom, 1 - mom, step), S.debias(sqr_mom, 1 - sqr_mom, step)
    h.one_minus_nu_1, h.nu_1, h.one_minus_nu_2, h.nu_2 = 1 - nu_1, nu_1, 1 - nu_2, nu_2
    return 0


RECIPE = register(Recipe(
    "qhadam",
    chains=[adam_family_chain(S.qhadam_step)],
    native=NativeSpec("qhadam", QHAdamHypers, fill=_native_fill, counts_steps=True,
                      needs=("lr", "mom", "sqr_mom", "eps", "wd", "nu_1", "nu_2"),
                      state=("grad_avg", "sqr_avg")),
))
