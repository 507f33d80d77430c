"""LARC (and LARS with `clip=False`): [weight_decay | l2_reg, (average_grad),
larc_layer_lr(clip), larc_step], SGD with a per-layer learning rate (fastai's `Larc`)."""
import ctypes
from functools import partial

from .. import steppers as S
from ..native import F_CLIP, F_MOM, Decay, doubles
from ..optimizer import Optimizer
from ..recipe import Chain, NativeSpec, Opt, Recipe, Step, register
from ._shared import Params, as_flag, decay_stepper, is_zero
from ..torch_names import accepts_torch_names


@accepts_torch_names
def Larc(params: Params, lr: float, mom: float = 0.9, clip: bool = True, trust_coeff: float = 0.02,
         eps: float = 1e-8, wd: float = 0., decouple_wd: bool = True) -> Optimizer:
    "LARC (LARS with `clip=False`): SGD with a per-layer learning rate from `trust_coeff`."
    cbs = [decay_stepper(decouple_wd)]
    if not is_zero(mom):
        cbs.append(S.average_grad)
    cbs += [partial(S.larc_layer_lr, clip=as_flag("clip", clip)), S.larc_step]
    return Optimizer(params, cbs, lr=lr, mom=mom, trust_coeff=trust_coeff, eps=eps, wd=wd)


# ---- native kernel: pfo_larc_hypers, pfo_larc (norm pass, then the step; local_lr comes back) --
class LarcHypers(ctypes.Structure):
    _c_name_ = "pfo_larc_hypers"
    _fields_ = [("decay", Decay)] + doubles("lr", "mom", "damp", "lr_trust", "wd", "eps")


def _native_fill(h, options, hv, step):
    lr = hv["lr"]
    h.lr, h.mom, h.damp = lr, hv.get("mom", 0.), 1.
    h.lr_trust, h.wd, h.eps = lr * hv["trust_coeff"], hv["wd"], hv["eps"]
    return (F_MOM if options["mom"] else 0) | (F_CLIP if options["clip"] else 0)


_LAYER_LR = Step(S.larc_layer_lr, clip=Opt("clip"))
RECIPE = register(Recipe(
    "larc",
    chains=[Chain(_LAYER_LR, Step(S.larc_step), mom=False),
            Chain(Step(S.average_grad, dampening=False), _LAYER_LR, Step(S.larc_step), mom=True)],
    native=NativeSpec("larc", LarcHypers, fill=_native_fill, local_lr=True,
                      needs=lambda o: ("lr", "mom", "wd", "trust_coeff", "eps") if o["mom"]
                      else ("lr", "wd", "trust_coeff", "eps"),
                      state=lambda o: ("grad_avg",) if o["mom"] else ()),
))
