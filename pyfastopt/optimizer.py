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
import operator
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import MutableMapping
from functools import partial

import torch

from .foundation import L, even_mults, merge
from .flat import MUTATES_GRAD, FlatBucketData, flat_safe
from . import native
from .kernels import match_chain
from .tensor_list import ParamBatch, TensorList
from .validation import (HYPER_BOUNDS, GradWatch, HyperWatch, as_hyper_value, check_grads,
                         check_hyper, check_hyper_name, check_params, describe, freeze_index,
                         group_index)

__all__ = ["Optimizer", "ParamGroup", "HyperLengthError"]

_KEEP_ON_CLEAR = ["force_train", "do_wd"]
IMPLS = ("auto", "per_param", "multi_tensor")
FLAT_MAX_NUMEL = 32768      # params up to this size may share a flat bucket (flat.py)
FLAT_MIN_PARAMS = 8         # ... when at least this many of them share group, device, dtype, state
LIST_MAX_TOTAL = 1 << 20    # elements per bucket of a chain run without a kernel (temporaries)
FLAT_MAX_TOTAL = 1 << 18    # elements per flat buffer: bounds scratch memory, keeps temporaries in cache
NATIVE_MT_NUMEL = 32768     # with torch threads > 1, params this large go to torch's fused kernels
                            # (multi-threaded per tensor) rather than the single-threaded native ones


_MISSING = object()


class HyperLengthError(ValueError, AssertionError):
    "Raised when a hyper gets a number of values that is not the number of param groups."


def _update(state, new=None):
    if isinstance(new, dict):
        state.update(new)


def _stepper_func(cb):
    while isinstance(cb, partial):
        cb = cb.func
    return cb


def _stepper_name(cb):
    if isinstance(cb, partial):
        args = ", ".join(f"{k}={v!r}" for k, v in cb.keywords.items())
        return f"{_stepper_name(cb.func)}({args})"
    return getattr(cb, "__qualname__", None) or type(cb).__name__


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

    def __getitem__(self, k):
        if k == "params":
            return self._opt.param_lists[self._i].items
        return self._hyper()[k]

    def __setitem__(self, k, v):
        if k == "params":
            self._opt._set_group_params(self._i, v)
        else:
            self._hyper()[k] = v

    def __delitem__(self, k):
        if k == "params":
            raise KeyError("a param group's 'params' cannot be deleted")
        del self._hyper()[k]

    def __iter__(self):
        yield "params"
        yield from self._hyper()

    def __len__(self):
        return 1 + len(self._hyper())

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
            self.hypers[i].update(g)


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
            param_lists = L(L(_as_param_list(g["params"])) for g in groups)
            overrides = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        elif isinstance(params[0], (L, list)):
            param_lists = L(L(p) for p in params)
        else:
            param_lists = L([params])
        _check_params(param_lists)
        self.cbs = cbs
        defaults = merge(*cbs.attrgot("defaults"), defaults)
        self.param_lists = param_lists
        self.hypers = L({} for _ in param_lists)
        self._group_views = []
        self._state = defaultdict(dict)
        self._plan = None
        self._fused = True
        self._flatten = True
        self.impl = "auto"
        self.frozen_idx = 0
        values = {k: self._spread(k, v) for k, v in defaults.items()}
        overrides = [{k: self._group_value(k, v) for k, v in o.items()} for o in overrides or []]
        _init_torch_base(self, dict(defaults))
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
        self._sync_state(watch=True)
        return self._state

    @state.setter
    def state(self, value):
        self._plan = None
        self._state = value if isinstance(value, defaultdict) else defaultdict(dict, value)

    @property
    def impl(self):
        return self._impl

    @impl.setter
    def impl(self, value):
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        if getattr(self, "_plan", None) is not None:
            self._invalidate_plan()
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
        params = L(_as_param_list(param_group["params"]))
        _check_params(L([*self.param_lists, params]))
        hyper = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        hyper.update({k: v for k, v in param_group.items() if k != "params"})
        hyper = {k: self._group_value(k, v) for k, v in hyper.items()}
        self._invalidate_plan()
        self.param_lists.append(params)
        self.hypers.append(hyper)

    def _set_group_params(self, i, params):
        params = L(_as_param_list(params))
        _check_params([params if j == i else pl for j, pl in enumerate(self.param_lists)])
        self._invalidate_plan()
        self.param_lists[i] = params

    # ---- the step ------------------------------------------------------------------------------
    def _uses_multi_tensor(self):
        if self._impl == "per_param":
            return False
        ok = all(getattr(_stepper_func(cb), "multi_tensor", False) for cb in self.cbs)
        if self._impl == "multi_tensor" and not ok:
            bad = [_stepper_name(cb) for cb in self.cbs
                   if not getattr(_stepper_func(cb), "multi_tensor", False)]
            raise ValueError(f"impl='multi_tensor' needs steppers marked @multi_tensor; not: {bad}")
        return ok

    def _check_step_inputs(self):
        """Before anything moves: hypers written directly since the last step (`hypers[i][k] = v`,
        `param_groups[i][k] = v`) and the grads against their params. Both checks are cached
        (`validation.HyperWatch`, `GradWatch`): identity tests per group, a data pointer per param."""
        watch = self.__dict__.get("_input_watch")
        if watch is None:
            watch = self.__dict__["_input_watch"] = (HyperWatch(), GradWatch())
        watch[0](self.hypers, self._hyper_bounds)
        watch[1](self.param_lists)

    @torch.no_grad()
    def _step(self):
        self._check_step_inputs()
        if self._uses_multi_tensor():
            self._step_buckets()
        else:
            self._invalidate_plan()
            self._step_per_param()

    def step(self, closure=None):
        "Run the steppers once. With a `closure`, it is evaluated first (grad enabled) and its loss returned."
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step()
        return loss

    def _step_per_param(self):
        "fastai's loop: every stepper for every param with a grad, with `{**state, **hyper}`."
        _check_grads(p for pl in self.param_lists for p in pl)
        for pl, hyper in zip(self.param_lists, self.hypers):
            for p in pl:
                if getattr(p, "grad", None) is None:
                    continue
                state = self._state[p]
                for cb in self.cbs:
                    _update(state, cb(p, **{**state, **hyper}))
                self._state[p] = state

    def _step_buckets(self):
        plan = self._plan
        if plan is not None and plan.written is not None:
            if self._state_unchanged():
                plan.written = None
            else:                       # edited since read: the dicts are the truth, rebuild
                plan = self._plan = None
        if plan is None or not self._plan_matches():
            self._invalidate_plan()
            plan = self._plan = self._build_plan()
        plan.stepped = True
        cbs, hypers = self.cbs, self.hypers
        for b in plan.buckets:
            hyper = hypers[b.group]
            batch, state, kernel, flat = b.batch, b.state, b.kernel, b.flat
            if flat is not None:
                flat.gather()
            if kernel is None or not kernel(b, {**state, **hyper}):
                for cb in cbs:
                    res = cb(batch, **{**state, **hyper})
                    if isinstance(res, dict):
                        state.update(res)
            if flat is not None:
                flat.scatter()

    def _plan_matches(self):
        """Do the params, their grads, the groups and the steppers still match what the buckets
        were built from? O(params) identity checks, a few C-level passes (no Python loop per param)."""
        plan, lists = self._plan, self.param_lists
        if len(lists) != len(plan.params) or plan.fused != self._fused \
                or plan.flatten != self._flatten \
                or (plan.threads is not None and plan.threads != torch.get_num_threads()):
            return False
        cbs = self.cbs.items if isinstance(self.cbs, L) else list(self.cbs)
        if len(cbs) != len(plan.cbs) or not all(map(operator.is_, cbs, plan.cbs)):
            return False
        get_grad, is_ = operator.attrgetter("grad"), operator.is_
        for pl, params, grads in zip(lists, plan.params, plan.grads):
            items = pl.items
            if len(items) != len(params) or not all(map(is_, items, params)) \
                    or not all(map(is_, map(get_grad, items), grads)):
                return False
        return all(b.flat.still_valid() for b in plan.buckets if b.flat is not None)

    def _build_plan(self, for_flatten=False):
        """Buckets of params of one group, device, dtype and scalar state. A built-in chain runs
        its CPU float32/float64 buckets with one native call (`native.py`), other buckets with a
        torch fused kernel where one exists (`kernels.py`), else the steppers on TensorLists.
        Flat buckets (`flat.py`) are used only over params and grads that already are views of
        one buffer (after `flatten_params()`), so a step keeps no scratch copies;
        `for_flatten` builds them with scratch, for `flatten_params()` to gather into."""
        _check_grads(p for pl in self.param_lists for p in pl)
        plan = _Plan()
        plan.cbs = list(self.cbs)
        plan.fused, plan.flatten = self._fused, self._flatten
        kernel = match_chain(plan.cbs) if self._fused else None
        nk = native.match_chain(plan.cbs) if self._fused and not for_flatten \
            and native.available() else None
        # a chain with both kinds of kernel: with several torch threads, large params take
        # torch's fused kernel, which splits each tensor over the threads (the plan is rebuilt
        # when the thread count changes)
        if nk is not None and kernel is not None:
            plan.threads = torch.get_num_threads()
        mt_numel = NATIVE_MT_NUMEL if plan.threads not in (None, 1) else None
        funcs = [_stepper_func(cb) for cb in plan.cbs]
        flat_ok = self._flatten and flat_safe(funcs)
        grads_back = any(f in MUTATES_GRAD for f in funcs)
        for gi, pl in enumerate(self.param_lists):
            items = list(pl.items)
            plan.params.append(items)
            plan.grads.append([getattr(p, "grad", None) for p in items])
            buckets = {}
            for p in items:
                if p.grad is None:
                    continue
                st = self._state[p]
                nat = nk is not None and native.param_ok(p) \
                    and (mt_numel is None or p.numel() < mt_numel)
                small = not nat and flat_ok and p.numel() <= FLAT_MAX_NUMEL \
                    and p.grad.shape == p.shape and p.grad.dtype == p.dtype
                buckets.setdefault((p.device, p.dtype, _signature(st), small, nat), []).append(p)
            for key, ps in buckets.items():
                small, nat = key[-2], key[-1]
                # a kernel has no list-sized temporaries; the chain's are bounded by chunking
                parts = [ps] if nat else _chunks(ps, FLAT_MAX_TOTAL) if small else \
                    [ps] if kernel is not None else _chunks(ps, LIST_MAX_TOTAL)
                for part in parts:
                    b = _Bucket(gi, part, [self._state[p] for p in part],
                                flat=small and len(part) >= FLAT_MIN_PARAMS,
                                grads_back=grads_back, views_only=not for_flatten)
                    if nat and nk.usable(b):
                        b.kernel = nk
                    elif kernel is not None and kernel.usable(b):
                        b.kernel = kernel
                    plan.buckets.append(b)
        return plan

    @torch.no_grad()
    def flatten_params(self):
        """Opt-in, like DDP's `gradient_as_bucket_view`: make the params and grads of every flat
        bucket (many small params, built-in steppers; see `flatten`) views of one flat buffer per
        bucket, so that a step copies nothing. Values are kept; `p.data` and `p.grad` are
        replaced by views. Keep the grads in place afterwards (`zero_grad()`, not
        `set_to_none=True`): new grad tensors are not views, and their params step on the list
        path until `flatten_params()` is called again. Returns the number of params moved."""
        self._invalidate_plan()
        plan = self._build_plan(for_flatten=True)
        moved = 0
        for b in plan.buckets:
            fb = b.flat
            if fb is None or (fb.p_is_view and fb.g_is_view):
                continue
            fb.gather()
            for p, pv, gv in zip(b.params, fb.p_views, fb.g_views):
                p.data = pv
                p.grad = gv
            moved += len(b.params)
        self._plan = plan
        self._invalidate_plan()                # rebuilt on the next step, over the views
        return moved

    def _invalidate_plan(self):
        "Bring the params' state dicts up to date with the buckets, then drop the buckets."
        self._sync_state()
        self._plan = None

    def _sync_state(self, watch=False):
        """Write the buckets' state into each param's state dict, if a step changed it since.
        With `watch` (the caller may edit the dicts), remember what they hold, so that the next
        step can tell whether anything was changed (`_state_unchanged`)."""
        plan = self._plan
        if plan is None:
            return
        if plan.stepped:
            for b in plan.buckets:
                b.write_back(self._state)
            plan.stepped = False
        if watch and plan.written is None:
            st = self._state
            plan.written = [(p, d, list(d.items()))
                            for b in plan.buckets for p in b.params for d in (st[p],)]

    def _state_unchanged(self):
        "Do the watched state dicts still hold exactly the objects written into them?"
        get = self._state.get
        for p, d, items in self._plan.written:
            if get(p) is not d or len(d) != len(items):
                return False
            for k, v in items:
                if d.get(k, _MISSING) is not v:
                    return False
        return True

    # ---- grads and state -----------------------------------------------------------------------
    def zero_grad(self, set_to_none=False):
        "Zero the grads in place (fastai's behaviour), or set them to None."
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
        "Reset the state of every param, keeping only `force_train` and `do_wd`."
        self._invalidate_plan()
        for pl in self.param_lists:
            for p in pl:
                old = self._state[p]
                self._state[p] = {k: old[k] for k in _KEEP_ON_CLEAR if k in old}

    def kind(self):
        "What makes two optimizers' states interchangeable: the names of the steppers."
        return [_stepper_name(cb) for cb in self.cbs]

    @_state_dict_hooks
    def state_dict(self):
        """`{'state': {i: state of param i}, 'hypers': [...], 'param_groups': [...], 'kind': [...]}`,
        params numbered in group order. Plain containers only, so `torch.load` with
        `weights_only=True` reads it back."""
        self._sync_state()
        ps = [p for pl in self.param_lists for p in pl]
        state = {i: _plain(self._state[p]) for i, p in enumerate(ps)}
        hypers = [_plain(h) for h in self.hypers]
        groups, start = [], 0
        for pl, h in zip(self.param_lists, hypers):
            groups.append({**h, "params": list(range(start, start + len(pl)))})
            start += len(pl)
        return {"state": state, "hypers": hypers, "param_groups": groups, "kind": self.kind()}

    @_load_state_dict_hooks
    def load_state_dict(self, state_dict):
        "Load a `state_dict()`; everything is checked before anything changes."
        hypers, states = self._checked_state(state_dict)
        self._plan = None
        self.hypers = L([dict(h) for h in hypers])
        ps = [p for pl in self.param_lists for p in pl]
        new_state = defaultdict(dict)
        for p, st in zip(ps, states):
            new_state[p] = {k: _to_param(v, p, k) for k, v in st.items()}
        self._state = new_state

    def _checked_state(self, sd):
        if not isinstance(sd, dict) or "state" not in sd:
            raise ValueError("state_dict must be a dict with a 'state' entry "
                             "(as returned by state_dict())")
        kind = sd.get("kind")
        if kind is not None and list(kind) != self.kind():
            raise ValueError(f"state_dict is from a different optimizer: its steppers are {list(kind)}, "
                             f"this optimizer's are {self.kind()}")
        if "hypers" in sd:
            hypers = list(sd["hypers"])
        elif "param_groups" in sd:
            hypers = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
        else:
            raise ValueError("state_dict has neither 'hypers' nor 'param_groups'")
        if len(hypers) != len(self.param_lists):
            raise ValueError(f"state_dict has {len(hypers)} parameter groups, this optimizer has "
                             f"{len(self.param_lists)}")
        sizes = [len(pl) for pl in self.param_lists]
        if "param_groups" in sd:
            theirs = [len(g["params"]) for g in sd["param_groups"]]
            if theirs != sizes:
                raise ValueError(f"state_dict's groups have {theirs} params, this optimizer's "
                                 f"have {sizes}")
        ps = [p for pl in self.param_lists for p in pl]
        st = sd["state"]
        if isinstance(st, dict):
            if any(not isinstance(i, int) or not 0 <= i < len(ps) for i in st):
                raise ValueError(f"state_dict's state is keyed by param indices 0..{len(ps) - 1}, "
                                 f"got keys {sorted(st, key=repr)[:5]}")
            states = [st.get(i, {}) for i in range(len(ps))]
        else:
            states = list(st)
            if len(states) != len(ps):
                raise ValueError(f"state_dict has state for {len(states)} params, this optimizer "
                                 f"has {len(ps)}")
        for i, (p, s) in enumerate(zip(ps, states)):
            if not isinstance(s, dict):
                raise ValueError(f"state of param {i} must be a dict, got {type(s).__name__}")
            for k, v in s.items():
                if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != p.shape:
                    raise ValueError(f"state '{k}' of param {i} has shape {tuple(v.shape)}, "
                                     f"the param has shape {tuple(p.shape)}")
        for h in hypers:
            if not isinstance(h, dict):
                raise ValueError(f"hypers must be dicts, got {type(h).__name__}")
        return hypers, states

    def __repr__(self):
        return (f"{type(self).__name__}({len(self.param_lists)} group(s), "
                f"{sum(len(pl) for pl in self.param_lists)} params, hypers={self.hypers!r})")

    def __getstate__(self):
        self._invalidate_plan()
        d = self.__dict__.copy()
        d["_plan"] = None
        return d

    def __setstate__(self, state):
        self.__dict__.update(state)


class _Plan:
    "The buckets of one step, and the params, grads and steppers they were built from."
    __slots__ = ("params", "grads", "buckets", "cbs", "fused", "flatten", "threads", "stepped",
                 "written")

    def __init__(self):
        self.params, self.grads, self.buckets, self.cbs = [], [], [], []
        self.stepped = False        # the buckets hold state newer than the params' dicts
        self.written = None         # what `state` readers were shown: (param, dict, items)
        self.fused = self.flatten = True
        self.threads = None         # torch's thread count, where the plan depends on it


class _Bucket:
    """Params of one group that share device, dtype and scalar state, stepped together.

    `state` holds, per key, either a TensorList (one value per param) or one value for all.
    `kernel` is the chain kernel (`kernels.py`) that steps it, if any; `kernel_state` its scratch
    (e.g. the step tensor the fused kernels read), never part of the params' state."""
    __slots__ = ("group", "params", "batch", "state", "kernel", "kernel_state", "flat")

    def __init__(self, group, params, states, flat=False, grads_back=False, views_only=True):
        self.group, self.params = group, params
        self.kernel, self.kernel_state, self.flat = None, {}, None
        if flat:
            fb = FlatBucketData(params, grads_back, views_only)
            state = fb.flatten_state(states) if fb.flat_p is not None else None
            if state is not None:
                self.flat, self.batch, self.state = fb, fb.batch(), state
                return
        self.batch = ParamBatch(params, [p.grad for p in params])
        first = states[0]
        self.state = {k: (TensorList(s[k] for s in states) if isinstance(v, torch.Tensor) else v)
                      for k, v in first.items()}

    def write_back(self, states):
        if self.flat is not None:
            sts = [states[p] for p in self.params]
            for k, v in self.state.items():
                self.flat.unflatten(k, v, sts)
            return
        items = [(k, v.unpack() if isinstance(v, native.LocalLR) else v)
                 for k, v in self.state.items()]
        for i, p in enumerate(self.params):
            st = states[p]
            for k, v in items:
                st[k] = v[i] if isinstance(v, TensorList) else v


def _chunks(ps, cap):
    "Split a bucket's params into runs of at most `cap` elements (a larger param stands alone)."
    out, cur, n = [], [], 0
    for p in ps:
        if cur and n + p.numel() > cap:
            out.append(cur)
            cur, n = [], 0
        cur.append(p)
        n += p.numel()
    if cur:
        out.append(cur)
    return out


def _signature(state):
    "Params may share a bucket when their states hold the same keys and equal non-tensor values."
    sig = []
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            sig.append((k, "tensor"))
        else:
            try:
                hash(v)
                sig.append((k, type(v), v))
            except TypeError:
                sig.append((k, "id", id(v)))
    return tuple(sig)


def _group_dict(g):
    if not isinstance(g, dict) or "params" not in g:
        raise TypeError("params given as groups must all be dicts with a 'params' key, got "
                        f"{type(g).__name__}")
    return g


def _as_param_list(params):
    return [params] if isinstance(params, torch.Tensor) else list(params)


def _check_params(param_lists):
    check_params(param_lists)


def _check_grads(params):
    "The grads of `params` (numbered through all groups) against their params: see `check_grads`."
    check_grads([list(params)], flat=True)


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


def _to_param(v, p, key):
    "Loaded state goes to the param's device; floating tensors (not 0-d counters) to its dtype."
    if not isinstance(v, torch.Tensor):
        return v
    if v.is_floating_point() and v.ndim > 0:
        return v.to(device=p.device, dtype=p.dtype)
    return v.to(device=p.device)
