"""RAdam: Adam's chain with `radam_step` (the variance rectification; SAdam with `beta` > 0),
and `ranger`, Lookahead over RAdam (fastai's `RAdam`, `ranger`)."""
from .. import steppers as S
from ..native import F_ADAPTIVE, F_EPS
from ..optimizer import Optimizer
from ..recipe import FusedSpec, NativeSpec, Recipe, register
from ..wrappers import Lookahead
from ._shared import Params, adam_chain, adam_family_chain, fill_adam_moments
from ..torch_names import accepts_torch_names
from .adam import AdamHypers, fused_adam


@accepts_torch_names
def RAdam(params: Params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
          wd: float = 0., beta: float = 0., decouple_wd: bool = True) -> Optimizer:
    "RAdam (rectified Adam); `beta` > 0 applies SAdam's softplus to the denominator."
    return Optimizer(params, adam_chain(decouple_wd, S.radam_step), lr=lr, mom=mom,
                     sqr_mom=sqr_mom, eps=eps, wd=wd, beta=beta)


@accepts_torch_names
def ranger(params: Params, lr: float, mom: float = 0.95, wd: float = 0.01, eps: float = 1e-6,
           k: int = 6, alpha: float = 0.5, *, sqr_mom: float = 0.99, beta: float = 0.,
           decouple_wd: bool = True) -> Lookahead:
    "Ranger: `Lookahead` over `RAdam`."
    return Lookahead(RAdam(params, lr=lr, mom=mom, wd=wd, eps=eps, sqr_mom=sqr_mom, beta=beta,
                           decouple_wd=decouple_wd), k=k, alpha=alpha)


# ---- native kernel: Adam's (pfo_adam), with lr * v while the rectifier is defined --------------
def _native_fill(h, options, hv, step):
    if hv["beta"]:
        return None                     # SAdam's softplus: the chain runs
    mom, lr, eps = hv["mom"], hv["lr"], hv["eps"]
    fill_adam_moments(h.avg, options, hv)
    h.eps, h.debias2 = eps, S.debias(hv["sqr_mom"], 1 - hv["sqr_mom"], step)
    debias1 = S.debias(mom, 1 - mom, step)
    v = S.radam_rectifier(hv["sqr_mom"], step)
    if v is None:                       # first steps: momentum SGD, p += step_size * m
        h.step_size = -lr / debias1
        return 0
    h.step_size = -lr * v / debias1
    return F_ADAPTIVE | (F_EPS if eps else 0)


# ---- torch's fused kernel: once rectified, the step is Adam's at lr * v ------------------------
def _fused_run(k, bucket, hv, step, do_wd):
    v = S.radam_rectifier(hv["sqr_mom"], step)
    if hv["beta"] or v is None:
        return False
    k.decay_apart(bucket, hv["lr"], hv["wd"], do_wd)
    fused_adam(k, bucket, hv["lr"] * v, hv, step)
    return True


NEEDS = ("lr", "mom", "sqr_mom", "eps", "wd", "beta")
RECIPE = register(Recipe(
    "radam",
    chains=[adam_family_chain(S.radam_step)],
    native=NativeSpec("adam", AdamHypers, needs=NEEDS, fill=_native_fill,
                      state=("grad_avg", "sqr_avg"), counts_steps=True),
    fused=FusedSpec(_fused_run, needs=NEEDS, counts_steps=True, applies=lambda o: o["damp2"]),
))
