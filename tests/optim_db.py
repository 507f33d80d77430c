"""The optimizer table of the test suite (like torch's `optim_db` of `OptimizerInfo`s).

One row per optimizer configuration: how to build it, the recipe its stepper chain should be
recognised as, the kernel every bucket should get on each device and dtype, the paths and dtypes
it supports, its float64 reference (tests/helpers.py) and its hypers' bounds. The generic tests
(`test_optim_db.py`) and the per-optimizer tables of the other test files read it, so adding a
row covers a new optimizer everywhere.

The expected kernels are the backend policy (`pyfastopt/backend.py`) written out by hand: on CPU
float32/float64 a recipe with a native kernel gets it; elsewhere (CPU half types, CUDA) the
recipe's torch fused kernel where its `FusedSpec` applies (SGD with momentum, Adam and RAdam with a
dampened square average), else the steppers' chain. Params here are small, so the several-threads
rule (large params to torch's fused kernel) never applies.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import pyfastopt as po
from helpers import ref_factory

# the ways a step can run (`set_path` switches an optimizer onto one)
PER_PARAM = "per_param"         # fastai's loop, one param at a time
MULTI_TENSOR = "multi_tensor"   # the steppers on TensorLists, chain kernels and flat buckets off
NATIVE = "native"               # the defaults: native C kernels on CPU float32/float64
FLAT = "flat"                   # after flatten_params(), kernels off: the steppers on flat buffers
PATHS = (PER_PARAM, MULTI_TENSOR, NATIVE, FLAT)

FLOATS = (torch.float32, torch.float64)
HALVES = (torch.float16, torch.bfloat16)

INF = math.inf
NONNEG = (0.0, INF, False)      # (low, high, high_inclusive), as validation.HYPER_BOUNDS
UNIT = (0.0, 1.0, True)         # [0, 1]
BELOW_ONE = (0.0, 1.0, False)   # [0, 1): the step divides by 1 - value


@dataclass(frozen=True)
class OptimInfo:
    """One optimizer configuration.

    factory(params, **kwargs) builds it; `make(params, **overrides)` with the row's kwargs.
    recipe: the recipe `recipe_for(opt.cbs)` finds, or None (no stepper chain of ours); options:
    the variant options that match holds (e.g. SGD's `mom`, the Adam family's `damp2`).
    kernel_cpu / kernel_cpu_half / kernel_cuda: the `backend` of every bucket ('native', 'fused'
    or 'chain') on CPU float32/float64, CPU float16/bfloat16 (their float32 shadows'), CUDA.
    paths: which of PATHS it runs on; dtypes: the dtypes the generic tests step it in.
    flat_safe: whether flatten_params() gives it flat buckets.
    ref: helpers.ref_factory's kind, with `ref_kwargs` (default: the row's kwargs) and Lookahead's
    (k, alpha) in `lookahead`; None where no independent reference exists.
    hypers: name -> bounds of every hyper the factory takes and checks."""
    name: str
    factory: Callable
    kwargs: dict
    recipe: Optional[str]
    kernel_cpu: str = "chain"
    kernel_cpu_half: str = "chain"
    kernel_cuda: str = "chain"
    paths: tuple = PATHS
    dtypes: tuple = FLOATS + HALVES
    flat_safe: bool = True
    ref: Optional[str] = None
    ref_kwargs: Optional[dict] = None
    lookahead: Optional[tuple] = None
    hypers: dict = field(default_factory=dict)
    options: Optional[dict] = None  # the variant's options in its recipe match (None: no recipe)
    fastai_api: bool = True         # a pyfastopt Optimizer (or Lookahead over one)

    def make(self, params, **overrides):
        return self.factory(params, **{**self.kwargs, **overrides})

    def __call__(self, params, **overrides):
        return self.make(params, **overrides)

    @property
    def decoupled(self):
        return self.kwargs.get("decouple_wd", True)

    def kernel_for(self, device_type, dtype):
        if device_type == "cuda":
            return self.kernel_cuda
        return self.kernel_cpu if dtype in FLOATS else self.kernel_cpu_half

    def reference(self, lrs, **overrides):
        """(cbs, hypers per group, lookahead) of helpers.RefOptimizer for one lr per group, with
        `overrides` of the constructor's kwargs (lr excepted)."""
        kw = dict(self.kwargs if self.ref_kwargs is None else self.ref_kwargs)
        kw.update(overrides)
        kw.pop("lr", None)
        made = [ref_factory(self.ref, lr, **dict(kw)) for lr in lrs]
        return made[0][0], [h for _, h in made], self.lookahead

    def __repr__(self):
        return self.name


def _lookahead_adam(params, k=4, alpha=0.3, **kw):
    return po.Lookahead(po.Adam(params, **kw), k=k, alpha=alpha)


def _lookahead_sgd(params, k=3, alpha=0.5, **kw):
    return po.Lookahead(po.SGD(params, **kw), k=k, alpha=alpha)


def _torch_adamw(params, lr=1e-2, weight_decay=0.01):
    return po.OptimWrapper(params, torch.optim.AdamW, lr=lr, weight_decay=weight_decay)


# the kernels of a recipe with a native kernel, and a torch fused one (or none) elsewhere
# (CPU half params step on float32 shadows, so they take the float32 path: the half rule)
NATIVE_ELSE_FUSED = dict(kernel_cpu="native", kernel_cpu_half="native", kernel_cuda="fused")
NATIVE_ELSE_CHAIN = dict(kernel_cpu="native", kernel_cpu_half="native", kernel_cuda="chain")
# recipe options: SGD's momentum, the Adam family's dampened square average
NOMOM, MOM, DAMPED = dict(mom=False), dict(mom=True), dict(damp2=True)
SGD_HYPERS = dict(lr=NONNEG, mom=UNIT, wd=NONNEG)
RMSPROP_HYPERS = dict(lr=NONNEG, mom=UNIT, sqr_mom=UNIT, eps=NONNEG, wd=NONNEG)
ADAM_HYPERS = dict(lr=NONNEG, mom=BELOW_ONE, sqr_mom=BELOW_ONE, eps=NONNEG, wd=NONNEG)
RADAM_HYPERS = dict(ADAM_HYPERS, beta=NONNEG)
QHADAM_HYPERS = dict(ADAM_HYPERS, nu_1=UNIT, nu_2=UNIT)
LARC_HYPERS = dict(lr=NONNEG, mom=UNIT, trust_coeff=NONNEG, eps=NONNEG, wd=NONNEG)
LION_HYPERS = dict(lr=NONNEG, mom=UNIT, sqr_mom=UNIT, wd=NONNEG)

_ROWS = [
    OptimInfo("SGD", po.SGD, dict(lr=0.1, wd=0.01), "sgd", **NATIVE_ELSE_CHAIN, ref="SGD",
              hypers=SGD_HYPERS, options=NOMOM),
    OptimInfo("SGD_l2", po.SGD, dict(lr=0.1, wd=0.1, decouple_wd=False), "sgd",
              **NATIVE_ELSE_CHAIN, ref="SGD", hypers=SGD_HYPERS, options=NOMOM),
    OptimInfo("SGD_mom", po.SGD, dict(lr=0.1, mom=0.9, wd=0.01), "sgd", **NATIVE_ELSE_FUSED,
              ref="SGD", hypers=SGD_HYPERS, options=MOM),
    OptimInfo("SGD_mom_l2", po.SGD, dict(lr=0.1, mom=0.9, wd=0.01, decouple_wd=False), "sgd",
              **NATIVE_ELSE_FUSED, ref="SGD", hypers=SGD_HYPERS, options=MOM),
    OptimInfo("RMSProp", po.RMSProp, dict(lr=0.01, wd=0.01), "rmsprop", **NATIVE_ELSE_CHAIN,
              ref="RMSProp", hypers=RMSPROP_HYPERS, options=dict(mom=False, damp2=True)),
    OptimInfo("RMSProp_mom", po.RMSProp, dict(lr=0.01, mom=0.9, wd=0.01, decouple_wd=False),
              "rmsprop", **NATIVE_ELSE_CHAIN, ref="RMSProp", hypers=RMSPROP_HYPERS,
              options=dict(mom=True, damp2=True)),
    OptimInfo("RMSProp_eps", po.RMSProp, dict(lr=0.001, eps=1e-2, sqr_mom=0.9, wd=0.1), "rmsprop",
              **NATIVE_ELSE_CHAIN, ref="RMSProp", hypers=RMSPROP_HYPERS,
              options=dict(mom=False, damp2=True)),
    OptimInfo("Adam", po.Adam, dict(lr=0.01), "adam", **NATIVE_ELSE_FUSED, ref="Adam",
              hypers=ADAM_HYPERS, options=DAMPED),
    OptimInfo("Adam_l2", po.Adam, dict(lr=0.01, wd=0.1, decouple_wd=False), "adam",
              **NATIVE_ELSE_FUSED, ref="Adam", hypers=ADAM_HYPERS, options=DAMPED),
    OptimInfo("RAdam", po.RAdam, dict(lr=0.01, wd=0.01), "radam", **NATIVE_ELSE_FUSED, ref="RAdam",
              hypers=RADAM_HYPERS, options=DAMPED),
    OptimInfo("RAdam_l2", po.RAdam, dict(lr=0.01, wd=0.01, decouple_wd=False), "radam",
              **NATIVE_ELSE_FUSED, ref="RAdam", hypers=RADAM_HYPERS, options=DAMPED),
    OptimInfo("RAdam_eps0", po.RAdam, dict(lr=0.01, wd=0.01, eps=0.), "radam", **NATIVE_ELSE_FUSED,
              ref="RAdam", hypers=RADAM_HYPERS, options=DAMPED),
    # SAdam: the kernels are the buckets' but decline every step (the chain runs)
    OptimInfo("RAdam_beta", po.RAdam, dict(lr=0.01, wd=0.01, beta=1.), "radam",
              **NATIVE_ELSE_FUSED, ref="RAdam", hypers=RADAM_HYPERS, options=DAMPED),
    OptimInfo("QHAdam", po.QHAdam, dict(lr=0.01, wd=0.01, nu_2=0.9), "qhadam", **NATIVE_ELSE_CHAIN,
              ref="QHAdam", hypers=QHADAM_HYPERS, options=DAMPED),
    OptimInfo("Larc", po.Larc, dict(lr=0.1, wd=0.01), "larc", **NATIVE_ELSE_CHAIN, ref="Larc",
              hypers=LARC_HYPERS, options=dict(mom=True, clip=True)),
    OptimInfo("Larc_l2", po.Larc, dict(lr=0.1, wd=0.01, decouple_wd=False), "larc",
              **NATIVE_ELSE_CHAIN, ref="Larc", hypers=LARC_HYPERS,
              options=dict(mom=True, clip=True)),
    OptimInfo("Larc_nomom", po.Larc, dict(lr=0.1, mom=0., wd=0.01), "larc", **NATIVE_ELSE_CHAIN,
              ref="Larc", hypers=LARC_HYPERS, options=dict(mom=False, clip=True)),
    OptimInfo("Larc_noclip", po.Larc, dict(lr=0.1, clip=False, wd=0.01), "larc",
              **NATIVE_ELSE_CHAIN, ref="Larc", hypers=LARC_HYPERS,
              options=dict(mom=True, clip=False)),
    OptimInfo("Larc_noclip_nomom", po.Larc, dict(lr=0.1, clip=False, mom=0., wd=0.01), "larc",
              **NATIVE_ELSE_CHAIN, ref="Larc", hypers=LARC_HYPERS,
              options=dict(mom=False, clip=False)),
    OptimInfo("Lamb", po.Lamb, dict(lr=0.01, wd=0.01), "lamb", **NATIVE_ELSE_CHAIN, ref="Lamb",
              hypers=ADAM_HYPERS, options=DAMPED),
    OptimInfo("Lamb_l2", po.Lamb, dict(lr=0.01, wd=0.1, decouple_wd=False), "lamb",
              **NATIVE_ELSE_CHAIN, ref="Lamb", hypers=ADAM_HYPERS, options=DAMPED),
    OptimInfo("Lion", po.Lion, dict(lr=0.01, wd=0.1), "lion", **NATIVE_ELSE_CHAIN, ref="Lion",
              hypers=LION_HYPERS, options={}),
    OptimInfo("Lion_l2", po.Lion, dict(lr=0.01, wd=0.1, decouple_wd=False), "lion",
              **NATIVE_ELSE_CHAIN, ref="Lion", hypers=LION_HYPERS, options={}),
    OptimInfo("ranger", po.ranger, dict(lr=0.01, k=3), "radam", **NATIVE_ELSE_FUSED, ref="RAdam",
              ref_kwargs=dict(mom=0.95, wd=0.01, eps=1e-6), lookahead=(3, 0.5),
              hypers=RADAM_HYPERS, options=DAMPED),
    OptimInfo("Lookahead_SGD", _lookahead_sgd, dict(lr=0.01, mom=0.9, wd=0.1), "sgd",
              **NATIVE_ELSE_FUSED, ref="SGD", lookahead=(3, 0.5), hypers=SGD_HYPERS, options=MOM),
    OptimInfo("Lookahead_Adam", _lookahead_adam, dict(lr=0.01), "adam", **NATIVE_ELSE_FUSED,
              ref="Adam", lookahead=(4, 0.3), hypers=ADAM_HYPERS, options=DAMPED),
    # torch's AdamW behind fastai's API: torch's contracts only (no buckets, paths, checks of ours)
    OptimInfo("OptimWrapper_AdamW", _torch_adamw, dict(lr=0.01), None, paths=(), dtypes=FLOATS,
              flat_safe=False, fastai_api=False),
]

DB = {row.name: row for row in _ROWS}
assert len(DB) == len(_ROWS), "row names must be unique"
ROWS = list(DB.values())
FASTAI_ROWS = [r for r in ROWS if r.fastai_api]
REF_ROWS = [r for r in ROWS if r.ref is not None]


def rows(*names):
    "The rows named, in that order (the per-optimizer selections of the other test files)."
    return [DB[n] for n in names]


def inner(opt):
    "The optimizer that holds the buckets and state (Lookahead's wrapped one)."
    return getattr(opt, "opt", opt) if isinstance(opt, po.Lookahead) else opt


def set_path(opt, path):
    "Put `opt` on one of PATHS (FLAT: flatten_params() must follow once grads exist)."
    if path == PER_PARAM:
        opt.impl = "per_param"
    elif path == MULTI_TENSOR:
        opt.impl, opt.fused, opt.flatten = "multi_tensor", False, False
    elif path == FLAT:
        opt.fused = False
    elif path != NATIVE:
        raise ValueError(path)
