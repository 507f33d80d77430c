"""`Optimizer`: fastai's optimizer (a chain of steppers over param groups) as a real
`torch.optim.Optimizer`.

Where things live:
- `hypers` (an `L` of plain dicts, one per group) holds the hyper-parameters; `param_groups` is a
  list of live views over `param_lists` and `hypers`, so torch's LR schedulers and fastai's API
  read and write the same values.
- `state` is keyed by the parameter tensors, as in fastai.
- `step()` runs the stepper chain either per parameter (fastai's loop, the reference) or once per
  *bucket* of parameters (same group, device, dtype and scalar state) when every stepper is marked
  `@multi_tensor`: then the same stepper code runs on `TensorList`s. Buckets and their tensor lists
  are built once and reused until the params, their grads or the groups change, or someone reads
  `state` (which might be edited).
"""
import copy
import functools
import math
import numbers
import threading
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import MutableMapping
from functools import partial

import torch
from torch.autograd.graph import increment_version

from .half import HALF_DTYPES, step_one as half_step_one
from .backend import PER_PARAM, choose_impl
from .distributed import by_position
from .engine import Engine, stepper_func as _stepper_func
from .foundation import L, even_mults, merge
from . import torch_names as tn
from .validation import (HYPER_BOUNDS, HyperWatch, as_hyper_value, check_grads,
                         check_hyper, check_hyper_name, check_params, describe, freeze_index,
                         group_index)
from .checkpoint import prepare_load

__all__ = ["Optimizer", "ParamGroup", "HyperLengthError"]

_KEEP_ON_CLEAR = ["force_train", "do_wd"]
IMPLS = ("auto", "per_param", "multi_tensor")


class HyperLengthError(ValueError, AssertionError):
    "Raised when a hyper gets a number of values that is not the number of param groups."


def _update(state, new=None):
    if isinstance(new, dict):
        state.update(new)


def _stepper_name(cb):
    if isinstance(cb, partial):
        args = ", ".join(f"{k}={v!r}" for k, v in cb.keywords.items())
        return f"{_stepper_name(cb.func)}({args})"
    return getattr(cb, "__qualname__", None) or type(cb).__name__


def _step_lock(opt):
    """The optimizer's own lock around `step()`: two threads stepping one optimizer take turns
    instead of interleaving its state updates. Made at first use (`setdefault` is atomic, so
    racing first steps get the same one), never pickled or copied; no lock is shared by two
    optimizers."""
    lock = opt.__dict__.get("_step_lock")
    if lock is None:
        lock = opt.__dict__.setdefault("_step_lock", threading.RLock())
    return lock


def _init_torch_base(opt, defaults):
    """What `torch.optim.Optimizer.__init__` sets up besides params and state: the hook tables and
    the step wrapper that runs them (and that LR schedulers look for)."""
    torch._C._log_api_usage_once("python.optimizer")
    opt.defaults = defaults
    for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                 "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                 "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks"):
        setattr(opt, name, OrderedDict())
    opt._patch_step_function()
    opt._warned_capturable_if_run_uncaptured = True


def _state_dict_hooks(fn):
    "Run torch's state_dict pre/post hooks around `fn`, as `torch.optim.Optimizer` does."
    @functools.wraps(fn)
    def state_dict(self):
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = fn(self)
        for hook in self._optimizer_state_dict_post_hooks.values():
            res = hook(self, sd)
            if res is not None:
                sd = res
        return sd
    return state_dict


def _load_state_dict_hooks(fn):
    "Run torch's load_state_dict pre/post hooks around `fn`, as `torch.optim.Optimizer` does."
    @functools.wraps(fn)
    def load_state_dict(self, state_dict):
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            res = hook(self, state_dict)
            if res is not None:
                state_dict = res
        fn(self, state_dict)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
    return load_state_dict


class ParamGroup(MutableMapping):
    """torch's view of group `i`: `'params'` plus the group's hypers, read and written live.

    It looks up `opt.hypers[i]` on every access, so it follows `hypers` even when the list or its
    dicts are replaced (as R does when it edits `opt$hypers$items`)."""

    __slots__ = ("_opt", "_i")

    def __init__(self, opt, i):
        self._opt, self._i = opt, i

    def _hyper(self):
        return self._opt.hypers[self._i]

    def _names(self):
        return self._opt._group_names(self._i)

    def __getitem__(self, k):
        if k == "params":
            return self._opt.param_lists[self._i].items
        h = self._hyper()
        if k in h:
            return h[k]
        if k == "param_names" and self._names() is not None:
            return self._names()
        if k in tn.TORCH_NAMES:         # torch's name: a live view of fastai's hypers
            return tn.view_get(h, k, self._opt._torch_views())
        raise KeyError(k)

    def __setitem__(self, k, v):
        if k == "params":
            self._opt._set_group_params(self._i, v)
            return
        h = self._hyper()
        if k == "param_names" and k not in h:
            self._opt._set_group_names(self._i, v)
        elif k in h:
            h[k] = v
        elif k in tn.TORCH_NAMES and k in self._opt._torch_views():
            tn.view_set(h, k, v)
        else:
            h.update(tn.translate({k: v}, h, f"param_groups[{self._i}]",
                                  self._opt._chain_reads()))

    def __delitem__(self, k):
        if k == "params":
            raise KeyError("a param group's 'params' cannot be deleted")
        h = self._hyper()
        if k == "param_names" and k not in h:
            self._opt._set_group_names(self._i, None)
            return
        del h[k]

    def __iter__(self):
        yield "params"
        yield from self._hyper()
        if self._names() is not None and "param_names" not in self._hyper():
            yield "param_names"

    def __len__(self):
        return 1 + len(self._hyper()) + \
            (self._names() is not None and "param_names" not in self._hyper())

    def __repr__(self):
        return repr(dict(self))

    def __copy__(self):
        return dict(self)

    def __deepcopy__(self, memo):
        return copy.deepcopy(dict(self), memo)


class _BaseOptimizer(torch.optim.Optimizer):
    "fastai's hyper-parameter and freezing API, over `param_lists`, `hypers` and `state`."

    def all_params(self, n=slice(None), with_grad=False):
        "(param, group, state, hyper) for every param (of group `n`: an int or a slice)."
        groups = range(len(self.param_lists))
        idx = list(groups[n]) if isinstance(n, slice) else [group_index(n, len(groups))]
        state = self.state
        res = L((p, self.param_lists[i], state[p], self.hypers[i])
                for i in idx for p in self.param_lists[i])
        return L(o for o in res if getattr(o[0], "grad", None) is not None) if with_grad else res

    def _set_require_grad(self, rg, p, pg, state, h):
        p.requires_grad_(rg or state.get("force_train", False))

    def freeze_to(self, n):
        "Freeze the groups before `n` (params with `force_train` in their state stay trainable)."
        G = len(self.param_lists)
        n = freeze_index(n, G)
        self.frozen_idx = n if n >= 0 else G + n
        if self.frozen_idx >= G:
            warnings.warn(f"Freezing {self.frozen_idx} groups; model has {G}; whole model is frozen.")
        for o in self.all_params(slice(n, None)):
            self._set_require_grad(True, *o)
        for o in self.all_params(slice(None, n)):
            self._set_require_grad(False, *o)

    def freeze(self):
        if len(self.param_lists) <= 1:
            raise HyperLengthError("freeze() needs more than one parameter group; "
                                   f"this optimizer has {len(self.param_lists)}")
        self.freeze_to(-1)

    def unfreeze(self):
        self.freeze_to(0)

    def set_hypers(self, **kwargs):
        "Set several hypers; all values are checked before any is set."
        values = {k: self._spread(k, v) for k, v in kwargs.items()}
        for k, v in values.items():
            self._set_hyper(k, v)

    def set_hyper(self, k, v):
        "Set hyper `k` to `v`: one value, one per group, or a slice (discriminative rates)."
        self._set_hyper(k, self._spread(k, v))

    def _hyper_bounds(self, k):
        return HYPER_BOUNDS.get(k)

    def _spread(self, k, v):
        "fastai's rules for turning `v` into one value per param group, then checked."
        check_hyper_name(k)
        n = len(self.param_lists)
        bounds = self._hyper_bounds(k)
        if v is None:
            raise TypeError(f"{k} must be a number, got None" if bounds else
                            f"{k} got None: pass a value, or a list with one value per parameter group")
        if isinstance(v, (set, frozenset)) and len(v) > 1:
            raise TypeError(f"{k} got a {describe(v)}: a set has no order, pass a list with one "
                            "value per parameter group")
        if isinstance(v, slice):
            v = _spread_slice(k, v, n, bounds)
        if isinstance(v, torch.Tensor) and v.ndim == 0:
            raise TypeError(f"{k} got a 0-d tensor ({describe(v)}): pass a Python number, "
                            "or a list with one value per parameter group")
        if hasattr(v, "__array__") and getattr(v, "ndim", 1) == 0 and hasattr(v, "item"):
            v = v.item()                # numpy scalars and 0-d arrays are numbers
        v = L(v, use_list=None)
        if len(v) == 1:
            v = v * n
        if len(v) != n:
            raise HyperLengthError(
                f"Trying to set {len(v)} values for {k} but there are {n} parameter groups.")
        return [as_hyper_value(k, x, bounds, element=True) for x in v]

    def _group_value(self, k, v):
        "One group's value of hyper `k` (a torch-style group's entry), checked, as stored."
        check_hyper_name(k)
        return as_hyper_value(k, v, self._hyper_bounds(k))

    def _set_hyper(self, k, values):
        for h, x in zip(self.hypers, values):
            h[k] = x

    @property
    def param_groups(self):
        "torch's param groups: live views, one per group, with 'params' and the group's hypers."
        if len(self._group_views) != len(self.param_lists):
            self._group_views = [ParamGroup(self, i) for i in range(len(self.param_lists))]
        return self._group_views

    @param_groups.setter
    def param_groups(self, groups):
        groups = [dict(g) for g in groups]
        for i, g in enumerate(groups):
            if "params" in g:
                self._set_group_params(i, g.pop("params"))
            if "param_names" in g and "param_names" not in self.hypers[i]:
                self._set_group_names(i, g.pop("param_names"))
            reads = self._chain_reads() if hasattr(self, "_chain_reads") else None
            self.hypers[i].update(tn.translate(g, self.hypers[i], f"param_groups[{i}]", reads))


class Optimizer(_BaseOptimizer):
    """fastai's `Optimizer(params, cbs, **defaults)`: runs the steppers `cbs` on every param
    with a gradient, with the hypers of its group; a `torch.optim.Optimizer` too.

    `impl` chooses how `step()` runs: "per_param" (fastai's loop), "multi_tensor" (each stepper
    once per bucket of params), or "auto" (multi_tensor when every stepper supports it)."""

    def __init__(self, params, cbs, **defaults):
        if "train_bn" in defaults:
            defaults.pop("train_bn")
            warnings.warn("Setting `train_bn` in `Optimizer` has no effect. Set `train_bn` on "
                          "`Learner` init instead")
        params = L(params)
        if len(params) == 0:
            raise ValueError("params must hold at least one tensor, got an empty list")
        cbs = L(cbs)
        for cb in cbs:
            if not callable(cb):
                raise TypeError(f"cbs must be callables (steppers), got {type(cb).__name__} {cb!r}")
        overrides = None
        if isinstance(params[0], dict):
            # torch-style groups, [{'params': [...], 'lr': ...}, ...]: each dict is a group and its
            # other keys override the defaults for that group
            groups = [_group_dict(g) for g in params]
            split = [tn.split_named(_as_param_list(g["params"]), f"params[{i}]['params']")
                     for i, g in enumerate(groups)]
            param_lists = L(L(ps) for ps, _ in split)
            names = [g.get("param_names", n) for g, (_, n) in zip(groups, split)]
            overrides = [{k: v for k, v in g.items() if k not in ("params", "param_names")}
                         for g in groups]
        elif isinstance(params[0], (L, list)):
            split = [tn.split_named(_as_param_list(p), f"params[{i}]") for i, p in enumerate(params)]
            param_lists = L(L(ps) for ps, _ in split)
            names = [n for _, n in split]
        else:
            ps, n = tn.split_named(params)
            param_lists, names = L([L(ps)]), [n]
        if len({n is None for n in names}) > 1:
            raise ValueError("params: all param groups must be given with names or all without "
                             "(torch's rule)")
        for i, (n, pl) in enumerate(zip(names, param_lists)):
            _check_names(n, pl, f"params[{i}]")
        _check_params(param_lists)
        self.cbs = cbs
        reads = tn.chain_reads(cbs)
        base = merge(*cbs.attrgot("defaults"))
        defaults = tn.translate(defaults, [*base, *(k for k in defaults if k not in tn.TORCH_NAMES)],
                                "Optimizer()", reads | set(base))
        defaults = merge(base, defaults)
        if overrides:
            overrides = [tn.translate(o, defaults, f"params[{i}]", reads)
                         for i, o in enumerate(overrides)]
        self.param_lists = param_lists
        self._param_names = [None if n is None else list(n) for n in names]
        self.hypers = L({} for _ in param_lists)
        self._group_views = []
        self._state = defaultdict(dict)
        self._engine = Engine(self)
        self._fused = True
        self._flatten = True
        self.impl = "auto"
        self.frozen_idx = 0
        values = {k: self._spread(k, v) for k, v in defaults.items()}
        overrides = [{k: self._group_value(k, v) for k, v in o.items()} for o in overrides or []]
        _init_torch_base(self, tn.TorchDefaults(defaults, self._torch_views()))
        for k, v in values.items():
            self._set_hyper(k, v)
        for h, o in zip(self.hypers, overrides or []):
            h.update(o)

    # ---- fastai attributes with checks ---------------------------------------------------------
    @property
    def hypers(self):
        return self._hypers

    @hypers.setter
    def hypers(self, value):
        value = L(value)
        if hasattr(self, "_hypers") and len(value) != len(self.param_lists):
            raise HyperLengthError(f"hypers needs one dict per parameter group "
                                   f"({len(self.param_lists)}), got {len(value)}")
        for h in value:
            if not isinstance(h, dict):
                raise TypeError(f"hypers must hold dicts, got {type(h).__name__}")
        self._hypers = value

    @property
    def state(self):
        """Each param's state dict, keyed by the param tensor; current whenever read here. Edits
        to it are seen by the next step (which checks, cheaply, whether anything was changed)."""
        self._engine.sync(watch=True)
        return self._state

    @state.setter
    def state(self, value):
        self._engine.forget()
        self._state = value if isinstance(value, defaultdict) else defaultdict(dict, value)

    @property
    def impl(self):
        return self._impl

    @impl.setter
    def impl(self, value):
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        if hasattr(self, "_engine"):
            self._engine.invalidate()
        self._impl = value

    @property
    def fused(self):
        """Whether the multi-tensor path may run a built-in chain with one fused kernel
        (`kernels.py`); False runs the steppers themselves on TensorLists. Same numbers either way."""
        return self._fused

    @fused.setter
    def fused(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"fused must be True or False, got {value!r}")
        self._fused = value

    @property
    def flatten(self):
        """Whether the multi-tensor path may step many small params of built-in steppers as one
        flat tensor (`flat.py`); their state then lives in flat buffers (each `state[p]` entry a
        view). Same numbers either way."""
        return self._flatten

    @flatten.setter
    def flatten(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"flatten must be True or False, got {value!r}")
        self._flatten = value

    def _hyper_bounds(self, k):
        for cb in self.cbs:
            b = getattr(_stepper_func(cb), "hyper_bounds", {}).get(k)
            if b is not None:
                return b
        return HYPER_BOUNDS.get(k)

    # ---- groups --------------------------------------------------------------------------------
    def add_param_group(self, param_group):
        "Add a group: `{'params': [...], **hypers}`; hypers not given come from `defaults`."
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' key")
        ps, names = tn.split_named(_as_param_list(param_group["params"]), "param_group['params']")
        names = param_group.get("param_names", names)
        _check_names(names, ps, "param_group")
        if (names is None) != (self._group_names(0) is None):
            raise ValueError("param_group: all param groups must be given with names or all "
                             "without (torch's rule)")
        params = L(ps)
        _check_params(L([*self.param_lists, params]))
        given = tn.translate({k: v for k, v in param_group.items()
                              if k not in ("params", "param_names")},
                             self.defaults, "param_group", self._chain_reads())
        hyper = {k: given.get(k, v) for k, v in self.defaults.items()}
        hyper.update(given)
        hyper = {k: self._group_value(k, v) for k, v in hyper.items()}
        self._engine.invalidate()
        nl = self._names_list()
        self.param_lists.append(params)
        nl.append(None if names is None else list(names))
        self.hypers.append(hyper)

    def _set_group_params(self, i, params):
        ps, names = tn.split_named(_as_param_list(params), f"param_groups[{i}]['params']")
        params = L(ps)
        _check_params([params if j == i else pl for j, pl in enumerate(self.param_lists)])
        self._engine.invalidate()
        self.param_lists[i] = params
        nl = self._names_list()
        if names is not None or (nl[i] is not None and len(nl[i]) != len(params)):
            nl[i] = names

    # ---- torch's names and named params (torch_names.py) ---------------------------------------
    def _chain_reads(self):
        "The hyper names the steppers read (cached per steppers)."
        key = tuple(map(id, self.cbs))
        c = self.__dict__.get("_reads_cache")
        if c is None or c[0] != key:
            reads = tn.chain_reads(self.cbs)
            c = self.__dict__["_reads_cache"] = (key, reads, tn.views(reads))
        return c[1]

    def _torch_views(self):
        "The torch names `param_groups` answers as views of fastai's hypers (torch_names.py)."
        self._chain_reads()
        return self.__dict__["_reads_cache"][2]

    def _names_list(self):
        nl = self.__dict__.get("_param_names")
        if nl is None or len(nl) != len(self.param_lists):
            nl = (list(nl or []) + [None] * len(self.param_lists))[:len(self.param_lists)]
            self.__dict__["_param_names"] = nl
        return nl

    def _group_names(self, i):
        "Group `i`'s param names (given as named params), or None."
        return self._names_list()[i]

    def _set_group_names(self, i, names):
        if names is not None:
            names = list(names)
            if len(names) != len(self.param_lists[i]) or \
                    not all(isinstance(n, str) for n in names):
                raise ValueError(f"param_names of group {i} must be {len(self.param_lists[i])} "
                                 f"strings, got {names!r}")
        self._names_list()[i] = names

    # ---- the step ------------------------------------------------------------------------------
    @property
    def _plan(self):
        "The engine's current plan (buckets), or None: for tests and introspection."
        return self._engine.plan

    def _invalidate_plan(self):
        self._engine.invalidate()

    def _uses_multi_tensor(self):
        ok = all(getattr(_stepper_func(cb), "multi_tensor", False) for cb in self.cbs)
        try:
            return choose_impl(self._impl, ok)[0] != PER_PARAM
        except ValueError:
            bad = [_stepper_name(cb) for cb in self.cbs
                   if not getattr(_stepper_func(cb), "multi_tensor", False)]
            raise ValueError(f"impl='multi_tensor' needs steppers marked @multi_tensor; not: {bad}") \
                from None

    def _check_step_inputs(self):
        """Before anything moves: hypers written directly since the last step (`hypers[i][k] = v`,
        `param_groups[i][k] = v`), cached by `validation.HyperWatch` (identity tests per group).
        The grads are checked against their params by the path that steps them: every step on the
        per-param path, and on the bucket path whenever a grad is new or its storage moved
        (`engine.Engine._check_grad_storage`, one data-pointer pass)."""
        watch = self.__dict__.get("_input_watch")
        if watch is None:
            watch = self.__dict__["_input_watch"] = (HyperWatch(),)
        watch[0](self.hypers, self._hyper_bounds)

    @torch.no_grad()
    def _step(self):
        self._check_step_inputs()
        if self._uses_multi_tensor():
            self._engine.step()
        else:
            self._engine.invalidate()
            self._step_per_param()

    @torch.compiler.disable     # under torch.compile: a graph break, the step runs eagerly
    def step(self, closure=None):
        "Run the steppers once. With a `closure`, it is evaluated first (grad enabled) and its loss returned."
        with _step_lock(self):           # the closure too: its grads are this step's
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._step()
            return loss

    def _step_per_param(self):
        "fastai's loop: every stepper for every param with a grad, with `{**state, **hyper}`."
        check_grads(self.param_lists)
        for pl, hyper in zip(self.param_lists, self.hypers):
            stepped = []
            for p in pl:
                if getattr(p, "grad", None) is None:
                    continue
                state = self._state[p]
                if p.dtype in HALF_DTYPES:        # one half-precision rule on every path
                    half_step_one(p, state, self.cbs, hyper, _update)
                else:
                    for cb in self.cbs:
                        _update(state, cb(p, **{**state, **hyper}))
                self._state[p] = state
                stepped.append(p)
            if stepped:     # steppers write p.data, which autograd does not see: as torch does
                increment_version(stepped)

    @torch.no_grad()
    def flatten_params(self):
        """Opt-in, like DDP's `gradient_as_bucket_view`: make the params and grads of every flat
        bucket (many small params, built-in steppers; see `flatten`) views of one flat buffer per
        bucket, so that a step copies nothing. Values are kept; `p.data` and `p.grad` are
        replaced by views. Keep the grads in place afterwards (`zero_grad()`, not
        `set_to_none=True`): new grad tensors are not views, and their params step on the list
        path until `flatten_params()` is called again. Returns the number of params moved."""
        return self._engine.flatten_params()

    # ---- grads and state -----------------------------------------------------------------------
    # under torch.compile, zeroing in place is traced as a mutation of graph inputs (the grads),
    # which costs more than the eager `_foreach_zero_` (bench/bench_compile.py): run it eagerly
    @torch.compiler.disable
    def zero_grad(self, set_to_none=False):
        "Zero the grads in place (fastai's behaviour), or set them to None."
        if set_to_none:
            self._engine.release_grads()
        grads = defaultdict(list)
        for pl in self.param_lists:
            for p in pl:
                g = getattr(p, "grad", None)
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
                grads[(g.device, g.dtype, g.is_sparse)].append(g)
        for (_, _, sparse), gs in grads.items():
            if sparse:
                for g in gs:
                    g.zero_()
            else:
                torch._foreach_zero_(gs)

    def clear_state(self):
        """Reset the state of every param, keeping only `force_train` and `do_wd`. A param left
        with nothing has no entry (fastai keeps an empty one): torch's tools take a `state` with
        entries for "already initialised" (DCP's loader would then restore nothing into it)."""
        self._engine.invalidate()
        for pl in self.param_lists:
            for p in pl:
                old = self._state.pop(p, None) or {}
                kept = {k: old[k] for k in _KEEP_ON_CLEAR if k in old}
                if kept:
                    self._state[p] = kept

    def kind(self):
        "What makes two optimizers' states interchangeable: the names of the steppers."
        return [_stepper_name(cb) for cb in self.cbs]

    @_state_dict_hooks
    def state_dict(self):
        """`{'state': {i: state of param i}, 'hypers': [...], 'param_groups': [...], 'kind': [...]}`,
        params numbered in group order. Entries of `state` that are not params (bookkeeping a tool
        put there) are kept under their own key, as torch does. Plain containers only, so
        `torch.load` with `weights_only=True` reads it back."""
        self._engine.sync()
        ps = [p for pl in self.param_lists for p in pl]
        state = {i: _one_type(_plain(self._state[p]), p) for i, p in enumerate(ps)}
        for k, v in self._state.items():
            if isinstance(k, torch.Tensor):
                continue            # params' state is above; a tensor no longer a param is stale
            if isinstance(k, numbers.Integral):
                raise ValueError(f"opt.state has a non-param entry keyed {k!r}: int keys would be "
                                 "taken for param indices in the state dict; use another key")
            state[k] = _plain(v) if isinstance(v, dict) else v
        hypers = [_plain(h) for h in self.hypers]
        groups, start = [], 0
        for i, (pl, h) in enumerate(zip(self.param_lists, hypers)):
            groups.append({**h, "params": list(range(start, start + len(pl)))})
            if self._group_names(i) is not None:      # as torch writes named params' groups
                groups[-1]["param_names"] = list(self._group_names(i))
            start += len(pl)
        return {"state": state, "hypers": hypers, "param_groups": groups, "kind": self.kind()}

    @_load_state_dict_hooks
    def load_state_dict(self, state_dict):
        """Load a `state_dict()` (of this optimizer's kind), or fastai's own optimizer state.

        Everything is checked before anything changes (`checkpoint.prepare_load`): the kind, each
        hyper as `set_hyper` checks it, each state value's type, dtype, shape and device against
        its param. A refused dict raises `checkpoint.StateDictError` and leaves the optimizer as
        it was. Where `param_groups` and `hypers` both give a hyper, **`param_groups` wins**:
        torch's tools and load-state-dict pre hooks edit `param_groups`. Entries of `state` that
        are not param ids are restored as non-param state. A dict without `kind` (fastai's own
        layout) is accepted only when its hyper names are exactly this optimizer's; a torch.optim
        state dict is refused: convert it with `pyfastopt.from_torch_state_dict`. As in torch,
        state tensors already on the param's device and dtype are used as they are, not copied:
        load a dict that another optimizer still uses into a copy (`copy.deepcopy`)."""
        state_dict = by_position(state_dict)        # e.g. keyed by names, from DCP
        loaded = prepare_load(self, state_dict)
        self._engine.forget()
        self.hypers = L(loaded.hypers)
        ps = [p for pl in self.param_lists for p in pl]
        new_state = defaultdict(dict)
        for p, st in zip(ps, loaded.states):
            new_state[p] = st
        new_state.update(loaded.extra)
        self._state = new_state

    def __repr__(self):
        return (f"{type(self).__name__}({len(self.param_lists)} group(s), "
                f"{sum(len(pl) for pl in self.param_lists)} params, hypers={self.hypers!r})")

    def __getstate__(self):
        self._engine.invalidate()
        d = self.__dict__.copy()
        d.pop("_step_lock", None)        # a copy gets its own lock at its first step
        d.pop("_engine", None)           # ... and its own engine (the engine steps its optimizer)
        return d

    def __setstate__(self, state):
        state.pop("_plan", None)            # pickled before the engine had its own module
        self.__dict__.update(state)
        self._engine = Engine(self)


def _check_names(names, params, where):
    if names is not None and (isinstance(names, str) or len(list(names)) != len(params)
                              or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where}: param_names must be {len(params)} strings, one per param, "
                         f"got {names!r}")


def _group_dict(g):
    if not isinstance(g, dict) or "params" not in g:
        raise TypeError("params given as groups must all be dicts with a 'params' key, got "
                        f"{type(g).__name__}")
    return g


def _as_param_list(params):
    return [params] if isinstance(params, torch.Tensor) else list(params)


def _check_params(param_lists):
    check_params(param_lists)


def _spread_slice(k, v, n, bounds):
    "fastai's discriminative values from `slice(start, stop)`: log-spaced, or stop/10 then stop."
    for part, x in (("stop", v.stop), ("start", v.start)):
        if x is None and part == "start":
            continue
        check_hyper(f"{k} (slice {part})", x, bounds or (0.0, math.inf, False))
    if v.start:
        return even_mults(float(v.start), float(v.stop), n)
    return [v.stop / 10] * (n - 1) + [v.stop]


def _plain(d):
    "A plain dict copy (tensors shared), so torch.save/torch.load(weights_only=True) work."
    return {k: (list(v) if isinstance(v, L) else v) for k, v in d.items()}


def _one_type(d, p):
    """Larc's `local_lr` is fastai's `min(lr, local_lr)`: the float `lr` where clipped, else a
    0-d tensor. A state dict holds it as a 0-d tensor always (of the param's dtype), so that its
    layout does not depend on the values (DCP checks it against the loading optimizer's)."""
    v = d.get("local_lr")
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        d["local_lr"] = torch.tensor(v, dtype=p.dtype if p.is_floating_point() else None,
                                     device=p.device)
    return d
