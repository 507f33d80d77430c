"""Optimizers that wrap another one: fastai's `Lookahead` and `OptimWrapper` (spec §4.1, §4.2)."""
from collections import defaultdict

import torch

from . import native
from .distributed import by_position
from .foundation import L, is_listy, range_of
from .torch_hooks import step_inner
from .optimizer import (HyperLengthError, Optimizer, _BaseOptimizer, _init_torch_base,
                        _load_state_dict_hooks, _state_dict_hooks, _step_lock)
from .validation import as_hyper_value, as_int
from .checkpoint import StateDictError, checked_count, checked_slow_weights, prepare_load
from .tensor_list import TensorList

LA_SLOW, LA_COUNT = "lookahead_slow", "lookahead_count"    # Lookahead's part of a param's entry

__all__ = ["Lookahead", "OptimWrapper", "detuplify_pg", "set_item_pg", "pytorch_hp_map"]


def _forward(name, doc):
    "A property that reads and writes attribute `name` of the wrapped `self.opt`."
    return property(lambda self: getattr(self.opt, name),
                    lambda self, v: setattr(self.opt, name, v), doc=doc)


def _by_device_and_dtype(*lists):
    "Split parallel tensor lists into (device, dtype) buckets, as one foreach call needs."
    out = defaultdict(lambda: tuple([] for _ in lists))
    for items in zip(*lists):
        bucket = out[(items[0].device, items[0].dtype)]
        for acc, t in zip(bucket, items):
            acc.append(t)
    return out.values()


class Lookahead(Optimizer):
    """Wrap `opt`: every `k` steps, move the slow weights `alpha` of the way towards the fast
    ones, then reset the fast weights to them. Everything else is `opt`'s."""

    def __init__(self, opt, k=6, alpha=0.5):
        if not isinstance(opt, _BaseOptimizer):
            raise TypeError(f"opt must be a pyfastopt optimizer, got {type(opt).__name__}")
        k, alpha = _lookahead_k(k), _lookahead_alpha(alpha)
        self.__dict__["opt"] = opt
        self.__dict__["_k"], self.__dict__["_alpha"] = k, alpha
        self.count, self.slow_weights = 0, None
        _init_torch_base(self, opt.defaults)

    @property
    def k(self):
        "Sync the slow weights every `k` steps: an integer >= 1 (checked when set)."
        return self._k

    @k.setter
    def k(self, value):
        self.__dict__["_k"] = _lookahead_k(value)

    @property
    def alpha(self):
        "How far the slow weights move towards the fast ones: a number in [0, 1] (checked when set)."
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self.__dict__["_alpha"] = _lookahead_alpha(value)

    def __getattr__(self, name):
        if name.startswith("__") or "opt" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["opt"], name)

    hypers = _forward("hypers", "The wrapped optimizer's hypers.")
    state = _forward("state", "The wrapped optimizer's state.")
    param_lists = _forward("param_lists", "The wrapped optimizer's param groups (lists).")
    param_groups = _forward("param_groups", "The wrapped optimizer's param groups (torch view).")
    impl = _forward("impl", "How the wrapped optimizer steps.")
    fused = _forward("fused", "Whether the wrapped optimizer may use chain kernels.")
    flatten = _forward("flatten", "Whether the wrapped optimizer may use flat buckets.")
    cbs = _forward("cbs", "The wrapped optimizer's steppers.")
    defaults = _forward("defaults", "The wrapped optimizer's defaults.")

    def _hyper_bounds(self, k):
        return self.opt._hyper_bounds(k)

    def add_param_group(self, param_group):
        self.opt.add_param_group(param_group)
        if self.slow_weights is not None:
            self.slow_weights.append(L(p.clone().detach() for p in self.opt.param_lists[-1]))

    @torch.compiler.disable     # under torch.compile: a graph break, the step runs eagerly
    def step(self, closure=None):
        with _step_lock(self):           # count and slow weights move with the inner step
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._adopt_loaded_state()
            if self.slow_weights is None:
                self._init_slow_weights()
            step_inner(self.opt)        # torch's global step hooks ran once, for this step
            self.count += 1
            if self.count % self.k == 0:
                self._sync_slow_weights()
            return loss

    def _init_slow_weights(self):
        self.slow_weights = L(L(p.clone().detach() for p in pl) for pl in self.opt.param_lists)

    @torch.no_grad()
    def _sync_slow_weights(self):
        slow = [s for sl in self.slow_weights for s in sl]
        fast = [p for pl in self.opt.param_lists for p in pl]
        for s, f in _by_device_and_dtype(slow, fast):
            if native.lookahead_sync(s, f, self.alpha):      # CPU float32/64: one pass
                continue
            # fastai's slow += alpha * (fast - slow); fast = slow. The difference is made in the
            # fast weights, which are overwritten next: no temporaries, same rounding
            torch._foreach_sub_(f, s)
            torch._foreach_add_(s, f, alpha=self.alpha)
            TensorList(f).copy_(s)      # per tensor for DTensors (no _foreach_copy_ strategy)

    def clear_state(self):
        self.opt.clear_state()
        self.count, self.slow_weights = 0, None

    def zero_grad(self, set_to_none=False):
        self.opt.zero_grad(set_to_none=set_to_none)

    def kind(self):
        return ["Lookahead", *self.opt.kind()]

    @_state_dict_hooks
    def state_dict(self):
        """The wrapped optimizer's state dict, plus `count` and `slow_weights`; the same also in
        each param's entry of `state` (`lookahead_count`, `lookahead_slow`), since tools that
        regroup a state dict by param (ZeroRedundancyOptimizer's consolidation) keep only those
        entries and `param_groups`."""
        sd = self.opt.state_dict()
        sd["kind"] = self.kind()
        sd["count"] = self.count
        sd["slow_weights"] = None if self.slow_weights is None else \
            [list(sl) for sl in self.slow_weights]
        if self.slow_weights is not None and isinstance(sd.get("state"), dict):
            for i, t in enumerate(t for sl in self.slow_weights for t in sl):
                sd["state"][i] = {**sd["state"].get(i, {}), LA_SLOW: t, LA_COUNT: self.count}
        return sd

    def _adopt_loaded_state(self):
        """ZeroRedundancyOptimizer's `load_state_dict` writes each param's consolidated entry
        straight into `state`: take Lookahead's part (`state_dict`) back out of it. One lookup
        per step when there is nothing to take."""
        st = getattr(self.opt, "_state", None)
        if st is None or not self.opt.param_lists or not len(self.opt.param_lists[0]):
            return
        first = st.get(self.opt.param_lists[0][0])
        if not first or LA_SLOW not in first:
            return
        slow, count = [], None
        for pl in self.opt.param_lists:
            sl = L()
            for p in pl:
                d = st.get(p)
                t = d.pop(LA_SLOW, None) if d else None
                c = d.pop(LA_COUNT, None) if d else None
                count = c if count is None else count
                sl.append(p.detach().clone() if t is None else
                          t.detach().to(device=p.device, dtype=p.dtype).clone())
            slow.append(sl)
        self.opt._invalidate_plan()         # its dicts were edited
        self.slow_weights, self.count = L(slow), as_int("count", count or 0)

    @_load_state_dict_hooks
    def load_state_dict(self, state_dict):
        """Load a `state_dict()`: the wrapped optimizer's state (checked as its
        `load_state_dict` does), `count` and `slow_weights`; all checked before anything changes.
        fastai's Lookahead layout (no `kind`) is accepted too."""
        if not isinstance(state_dict, dict):
            raise StateDictError("state_dict must be a dict (as returned by state_dict()), got "
                                 f"{type(state_dict).__name__}")
        sd = dict(by_position(state_dict))         # never change the caller's dict
        kind = sd.pop("kind", None)
        count, slow = sd.pop("count", None), sd.pop("slow_weights", None)
        count, slow = self._split_per_param(sd, count, slow)
        if kind is not None:
            if not isinstance(kind, (list, tuple, L)) or list(kind) != self.kind():
                raise StateDictError(f"state_dict is from a different optimizer: its steppers are "
                                     f"{kind!r}, this optimizer's are {self.kind()}")
            sd["kind"] = self.opt.kind()
        count = checked_count(0 if count is None else count)
        slow = checked_slow_weights(slow, self.opt.param_lists)
        prepare_load(self.opt, sd)
        self.opt.load_state_dict(sd)
        self.count = count
        self.slow_weights = None if slow is None else L(L(sl) for sl in slow)

    def _split_per_param(self, sd, count, slow):
        """Take `lookahead_slow` / `lookahead_count` out of each param's entry of `sd['state']`
        (a copy: the caller's dicts are left alone); they give the slow weights and the count
        where the top-level entries are missing (a state dict regrouped by param)."""
        st = sd.get("state")
        as_list = isinstance(st, (list, L))          # fastai's layout: one entry per param
        items = list(enumerate(st)) if as_list else list(st.items()) if isinstance(st, dict) \
            else []
        if not any(isinstance(v, dict) and (LA_SLOW in v or LA_COUNT in v) for _, v in items):
            return count, slow
        per, new = {}, {}
        for i, v in items:
            if isinstance(v, dict) and (LA_SLOW in v or LA_COUNT in v):
                v = dict(v)
                per[i] = (v.pop(LA_SLOW, None), v.pop(LA_COUNT, None))
            new[i] = v
        sd["state"] = [new[i] for i, _ in items] if as_list else new
        if count is None:
            count = next((c for _, c in per.values() if c is not None), None)
        if slow is None:
            ps = [p for pl in self.opt.param_lists for p in pl]
            if all(per.get(i, (None,))[0] is not None for i in range(len(ps))):
                flat, out = [per[i][0] for i in range(len(ps))], []
                for pl in self.opt.param_lists:
                    out.append(flat[:len(pl)])
                    flat = flat[len(pl):]
                slow = out
        return count, slow

    def __repr__(self):
        return f"Lookahead(k={self.k}, alpha={self.alpha}, {self.opt!r})"


def _lookahead_k(k):
    k = as_int("k", k)
    if k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    return k


def _lookahead_alpha(alpha):
    # spec §4.1: slow += alpha * (fast - slow); outside [0, 1] it overshoots or moves away
    return as_hyper_value("alpha", alpha, (0.0, 1.0, True))


pytorch_hp_map = {"momentum": "mom", "weight_decay": "wd", "alpha": "sqr_mom",
                  "betas__0": "mom", "betas__1": "sqr_mom"}


def detuplify_pg(d):
    "A param group's hypers, with tuple/list values spread as `key__0`, `key__1`, ..."
    res = {}
    for k, v in d.items():
        if k == "params":
            continue
        if is_listy(v):
            res.update(**{f"{k}__{i}": v_ for i, v_ in enumerate(v)})
        else:
            res[k] = v
    return res


def set_item_pg(pg, k, v):
    "Set `pg[k]` to `v`, where `k` may name an item of a tuple (`betas__0`)."
    if "__" not in k:
        pg[k] = v
    else:
        name, idx = k.split("__")
        pg[name] = tuple(v if i == int(idx) else pg[name][i] for i in range_of(pg[name]))
    return pg


def _convert_params(o):
    return [g if isinstance(g, dict) else {"params": g} for g in o]


class OptimWrapper(_BaseOptimizer):
    """Give a torch optimizer fastai's API (hypers with fastai's names, `set_hyper`, freezing).

    `OptimWrapper(params, torch.optim.SGD, lr=...)` builds one; `OptimWrapper(opt=built)` wraps
    one. `step`, `zero_grad`, `state_dict` and `load_state_dict` are the torch optimizer's."""

    def __init__(self, params=None, opt=None, hp_map=None, convert_groups=True, **kwargs):
        if params is None and opt is None:
            raise ValueError("Both `params` and `opt` cannot be None.")
        if callable(opt) and not isinstance(opt, torch.optim.Optimizer):
            if convert_groups:
                params = L(params)
                convert_groups = isinstance(params[0], (L, list))
            opt = opt(_convert_params(params), **kwargs) if convert_groups else opt(params, **kwargs)
        else:
            if params is not None:
                raise ValueError("Tried using both `params` and a built optimizer. Just pass in `opt`.")
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"opt must be a torch optimizer or its class, got {type(opt).__name__}")
        self.__dict__["opt"] = opt
        hp_map = pytorch_hp_map if hp_map is None else hp_map
        self.fwd_map = {k: hp_map.get(k, k) for k in detuplify_pg(opt.param_groups[0]).keys()}
        self.bwd_map = {v: k for k, v in self.fwd_map.items()}
        self.frozen_idx = 0
        _init_torch_base(self, opt.defaults)

    defaults = _forward("defaults", "The torch optimizer's defaults.")
    param_groups = _forward("param_groups", "The torch optimizer's param groups.")
    state = _forward("state", "The torch optimizer's state (what its state_dict() holds).")

    def __getattr__(self, name):
        if name.startswith("_") or "opt" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["opt"], name)

    # torch's __getstate__ keeps only defaults, state and param_groups: without the wrapped
    # optimizer a copy or unpickled wrapper cannot even read them
    def __getstate__(self):
        d = self.__dict__.copy()
        d.pop("_step_lock", None)        # a copy gets its own lock at its first step
        return d

    def __setstate__(self, state):
        self.__dict__.update(state)

    def step(self, closure=None):
        with _step_lock(self):           # torch optimizers do not guard their own steps
            return step_inner(self.opt, closure)

    def zero_grad(self, set_to_none=True):
        return self.opt.zero_grad(set_to_none=set_to_none)

    @_state_dict_hooks
    def state_dict(self):
        return self.opt.state_dict()

    @_load_state_dict_hooks
    def load_state_dict(self, state_dict):
        self.opt.load_state_dict(state_dict)

    def add_param_group(self, param_group):
        return self.opt.add_param_group(param_group)

    @property
    def hypers(self):
        "The torch groups' hypers under fastai's names, computed afresh on every access."
        return [{self.fwd_map.get(k, k): v for k, v in detuplify_pg(pg).items()}
                for pg in self.opt.param_groups]

    def _set_hyper(self, k, values):
        if k not in self.bwd_map:
            raise KeyError(f"{k!r} is not a hyper of {type(self.opt).__name__}; its hypers are "
                           f"{list(self.bwd_map)}")
        for pg, v in zip(self.opt.param_groups, values):
            set_item_pg(pg, self.bwd_map[k], v)

    def clear_state(self):
        self.opt.state = defaultdict(dict)

    @property
    def param_lists(self):
        return L(pg["params"] for pg in self.opt.param_groups)

    @param_lists.setter
    def param_lists(self, v):
        if len(v) != len(self.opt.param_groups):
            raise HyperLengthError(f"param_lists needs {len(self.opt.param_groups)} groups, "
                                   f"got {len(v)}")
        for pg, v_ in zip(self.opt.param_groups, v):
            pg["params"] = v_

    def __repr__(self):
        return f"OptimWrapper({self.opt!r})"
