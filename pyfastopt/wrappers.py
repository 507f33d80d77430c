"""Optimizers that wrap another one: fastai's `Lookahead` and `OptimWrapper` (spec §4.1, §4.2)."""
from collections import defaultdict
from collections.abc import Mapping, MutableMapping

import torch

from . import native
from .distributed import by_position
from .foundation import L, is_listy, range_of
from .torch_hooks import step_inner
from .optimizer import (HyperLengthError, Optimizer, _BaseOptimizer, _init_torch_base,
                        _load_state_dict_hooks, _state_dict_hooks, _step_lock)
from .validation import as_hyper_value, as_int
from .checkpoint import (StateDictError, checked_count, checked_slow_weight, checked_slow_weights,
                         prepare_load)
from .tensor_list import TensorList

LA_SLOW, LA_COUNT = "lookahead_slow", "lookahead_count"    # Lookahead's part of a param's entry
_LA_KEYS = (LA_SLOW, LA_COUNT)

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

    @property
    def state(self):
        """The wrapped optimizer's state, keyed by param; once the slow weights exist, each param's
        entry also shows Lookahead's part: `lookahead_slow` (its slow weight, the tensor in
        `slow_weights`) and `lookahead_count` (`count`), as torch's tools that read or write state
        per param expect (DCP's flattened layout, ZeroRedundancyOptimizer's load). Writes go
        where each key lives; the wrapped optimizer's dicts never hold Lookahead's keys (its
        engine packs every key into its buckets). See `_LookaheadState`."""
        return _LookaheadState(self)

    @state.setter
    def state(self, value):
        # all entries checked before anything changes; Lookahead's keys are split out
        items = value.items() if isinstance(value, Mapping) else dict(value).items()
        split = [(p, *self._split_entry(p, v)) for p, v in items]
        if any(part for _, _, part in split):
            value = defaultdict(dict, {p: rest for p, rest, _ in split})
        self.opt.state = value
        for p, _, part in split:
            for k, v in part:
                self._set_part(p, k, v)

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
            # (TensorList: DTensors laid out alike are stepped on their local shards)
            f, s = TensorList(f), TensorList(s)
            f.sub_(s)
            s.add_(f, alpha=self.alpha)
            f.copy_(s)

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

    # ---- Lookahead's part of each param's entry in `state` -------------------------------------
    def _position(self, p):
        """(group, index) of param `p` in `param_lists`, or None if `p` is not a param: from an
        index by id, rebuilt when it no longer finds `p` where it says (checked by identity)."""
        at = self.__dict__.get("_positions", {}).get(id(p))
        if at is None or not self._is_at(p, at):
            pos = {id(q): (i, j) for i, pl in enumerate(self.opt.param_lists)
                   for j, q in enumerate(_items(pl))}
            self.__dict__["_positions"] = pos
            at = pos.get(id(p))
            if at is None or not self._is_at(p, at):
                return None
        return at

    def _is_at(self, p, at):
        pls = self.opt.param_lists
        i, j = at
        return i < len(pls) and j < len(_items(pls[i])) and _items(pls[i])[j] is p

    def _slow_of(self, p):
        "The slow weight of param `p`, or None (no slow weights yet, or `p` is not a param)."
        sw = self.slow_weights
        at = None if sw is None else self._position(p)
        if at is None:
            return None
        i, j = at
        try:
            return _items(sw[i])[j]
        except (IndexError, TypeError):      # slow_weights set by hand, of another shape
            return None

    def _entry(self, p, d):
        "What `state[p]` shows: the wrapped optimizer's dict `d` itself, or it with our part."
        slow = self._slow_of(p)
        if slow is None or not isinstance(d, Mapping):
            return d
        e = _LookaheadEntry(d)
        dict.__setitem__(e, LA_SLOW, slow)
        dict.__setitem__(e, LA_COUNT, self.count)
        e._la, e._p, e._inner = self, p, d
        return e

    def _checked_part(self, p, k, v):
        "Value `v` for Lookahead's key `k` of param `p`'s entry, checked (a slow weight copied)."
        at = self._position(p)
        where = f"state[p][{k!r}]" + ("" if at is None else f" (param {at[1]} of group {at[0]})")
        if at is None:
            raise StateDictError(f"{where}: Lookahead's key, in an entry that is not a param's")
        if k == LA_SLOW:
            return checked_slow_weight(v, p, where)
        return checked_count(as_int(where, v), where)

    def _set_part(self, p, k, v):
        "Set Lookahead's key `k` of param `p` to `v` (checked by `_checked_part`)."
        if k == LA_COUNT:
            self.count = v
            return
        if self.slow_weights is None:       # as the first step makes them, then this one
            self._init_slow_weights()
        i, j = self._position(p)
        _items(self.slow_weights[i])[j] = v

    def _split_entry(self, p, value):
        """(what the wrapped optimizer keeps, [(Lookahead's key, checked value)]) of an entry
        `value` written for `p`; a non-dict or an entry without Lookahead's keys goes through
        as it is."""
        if not isinstance(value, Mapping) or not any(k in value for k in _LA_KEYS):
            return value, []
        part = [(k, self._checked_part(p, k, value[k])) for k in _LA_KEYS if k in value]
        return {k: v for k, v in value.items() if k not in _LA_KEYS}, part

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
        count = checked_count(0 if count is None else count)
        slow = checked_slow_weights(slow, self.opt.param_lists)
        if not isinstance(self.opt, OptimWrapper):     # a wrapped torch optimizer checks its own
            if kind is not None:
                sd["kind"] = self.opt.kind()
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
                per[i] = (_given(v.pop(LA_SLOW, None)), _given(v.pop(LA_COUNT, None)))
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


def _items(xs):
    "The list inside an `L` (item access without `L`'s index handling), or `xs` itself."
    return xs.items if isinstance(xs, L) else xs


def _given(v):
    # DCP's flattened layout rebuilds a key the checkpoint lacks (one from an optimizer without
    # Lookahead) as an empty dict: the same as missing
    return None if isinstance(v, dict) and not v else v


class _LookaheadState(MutableMapping):
    """`Lookahead.state`: a view of the wrapped optimizer's state. Keys, `len`, iteration, `in`
    and truth are the wrapped state's; `state[p]` gives the wrapped dict itself, or, once the
    slow weights exist, a `_LookaheadEntry` that also shows Lookahead's part. `state[p] = d`
    gives `d`'s Lookahead keys to Lookahead (checked first) and the rest to the wrapped state;
    Lookahead keys left out keep their values. `del state[p]` deletes the wrapped entry only.
    Made on each read of `Lookahead.state`; it holds nothing but the Lookahead."""
    __slots__ = ("_la",)

    def __init__(self, la):
        self._la = la

    def __getitem__(self, p):
        # the wrapped state is read on every access: reading it brings its dicts up to date
        return self._la._entry(p, self._la.opt.state[p])

    def __setitem__(self, p, value):
        la = self._la
        rest, part = la._split_entry(p, value)
        la.opt.state[p] = rest
        for k, v in part:
            la._set_part(p, k, v)

    def __delitem__(self, p):
        del self._la.opt.state[p]

    def __iter__(self):
        return iter(self._la.opt.state)

    def __len__(self):
        return len(self._la.opt.state)

    def __contains__(self, p):              # never through __getitem__, which adds an entry
        return p in self._la.opt.state

    def get(self, p, default=None):
        return self[p] if p in self else default

    def setdefault(self, p, default=None):
        if p not in self:
            self[p] = default
        return self[p]

    def clear(self):
        self._la.opt.state.clear()

    def __reduce__(self):                   # a copy or pickle is a plain dict of what it shows
        return dict, ({p: dict(e) if isinstance(e, dict) else e for p, e in self.items()},)

    def __repr__(self):
        return repr(dict(self.items()))


class _LookaheadEntry(dict):
    # A param's entry as `Lookahead.state` shows it: a copy of the wrapped optimizer's dict with
    # Lookahead's keys added. A dict, as torch's tools (and `dict(...)`, `{**e}`) read one; its
    # writes also go where each key lives (the wrapped dict; Lookahead's slow weight or count:
    # checked first), else they would be lost with the copy. Deleting a Lookahead key restarts
    # it: the slow weight from a copy of the param (as the first step makes it), the count at 0.
    __slots__ = ("_la", "_p", "_inner")

    def __setitem__(self, k, v):
        self._put(k, self._la._checked_part(self._p, k, v) if k in _LA_KEYS else v)

    def _put(self, k, v):                   # `v` checked, for Lookahead's keys
        if k in _LA_KEYS:
            self._la._set_part(self._p, k, v)
        else:
            self._la.opt.state              # the engine sees the edit (see `engine.sync`)
            self._inner[k] = v
        dict.__setitem__(self, k, v)

    def __delitem__(self, k):
        if not dict.__contains__(self, k):
            raise KeyError(k)
        if k == LA_SLOW:
            self._la._set_part(self._p, k, self._p.clone().detach())
        elif k == LA_COUNT:
            self._la._set_part(self._p, k, 0)
        else:
            self._la.opt.state
            del self._inner[k]
        dict.__delitem__(self, k)

    def update(self, *args, **kwargs):
        new = dict(*args, **kwargs)
        for k in _LA_KEYS:                  # checked before anything changes
            if k in new:
                new[k] = self._la._checked_part(self._p, k, new[k])
        for k, v in new.items():
            self._put(k, v)

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, k, default=None):
        if k not in self:
            self[k] = default
        return self[k]

    def pop(self, k, *default):
        if k not in self:
            if default:
                return default[0]
            raise KeyError(k)
        v = dict.__getitem__(self, k)
        del self[k]
        return v

    def popitem(self):
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        k = next(reversed(self))
        return k, self.pop(k)

    def clear(self):
        for k in list(self):
            del self[k]

    def __reduce__(self):                   # a copy or pickle is a plain dict
        return dict, (dict(self),)


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

    def kind(self):
        "What makes two optimizers' states interchangeable: here the torch optimizer's class."
        return ["OptimWrapper", type(self.opt).__name__]

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
