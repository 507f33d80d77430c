"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
[weight_decay | l2_reg, lion_step] — the sign of an interpolated momentum, with decoupled weight
decay by default. `mom` and `sqr_mom` are the paper's beta1 and beta2; the defaults are the
paper's (lr 1e-4, betas 0.9/0.99, wd 0.1: Lion wants a 3-10x smaller lr and larger wd than AdamW)."""
import ctypes

from .. import steppers as S
from ..native import Decay, doubles
from ..optimizer import Optimizer
from ..recipe import Chain, NativeSpec, Recipe, Step, register
from ._shared import Params, decay_stepper
from ..torch_names import accepts_torch_names


@accepts_torch_names
def Lion(params: Params, lr: float = 1e-4, mom: float = 0.9, sqr_mom: float = 0.99,
         wd: float = 0.1, decouple_wd: bool = True) -> Optimizer:
    "Lion with `lr`, `mom` (beta1, the interpolation), `sqr_mom` (beta2, the momentum), `wd`."
    return Optimizer(params, [decay_stepper(decouple_wd), S.lion_step], lr=lr, mom=mom,
                     sqr_mom=sqr_mom, wd=wd)


# ---- native kernel: pfo_lion_hypers, pfo_lion -------------------------------------------------
class LionHypers(ctypes.Structure):
    _c_name_ = "pfo_lion_hypers"
    _fields_ = [("decay", Decay)] + doubles("lr", "mom", "sqr_mom")


def _native_fill(h, options, hv, step):
    h.lr, h.mom, h.sqr_mom = hv["lr"], hv["mom"], hv["sqr_mom"]
    return 0


RECIPE = register(Recipe(
    "lion",
    chains=[Chain(Step(S.lion_step))],
    native=NativeSpec("lion", LionHypers, fill=_native_fill, needs=("lr", "mom", "sqr_mom", "wd"),
                      state=("grad_avg",)),
))
