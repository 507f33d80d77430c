"""Checkpoints: what `load_state_dict` accepts, converters to and from `torch.optim` state dicts,
and a safe reader for fastai checkpoints.

- `prepare_load(opt, sd)` checks a state dict with the constructor's rules and returns what the
  optimizer should hold after loading it. It changes nothing, so a refused dict leaves the
  optimizer exactly as it was.
- `to_torch_state_dict` / `from_torch_state_dict` translate between pyfastopt's and torch.optim's
  layouts for the optimizers whose math is the same in both libraries.
- `load_fastai_checkpoint` reads a fastai `Learner.save(with_opt=True)` file with
  `torch.load(weights_only=True)`; the only global it allows besides torch's own is fastcore's `L`,
  which is read as a plain list.
"""
import math
import numbers
import pickle
import re
from collections import namedtuple
from functools import partial

import torch

from .foundation import L
from .half import HALF_DTYPES
from .validation import HYPER_BOUNDS, check_hyper
from .recipe import stepper_func

__all__ = ["StateDictError", "UnsafeCheckpointError", "prepare_load", "to_torch_state_dict",
           "from_torch_state_dict", "load_fastai_checkpoint", "FastaiCheckpoint"]


class StateDictError(ValueError, TypeError):
    "A state dict that `load_state_dict` (or a converter) refuses; nothing was changed."


class UnsafeCheckpointError(pickle.UnpicklingError):
    "A checkpoint file that references something other than tensors, plain containers and `L`."


# The state keys of the built-in steppers (each declares its own: `steppers.py`).
_BUILTIN_STATE = frozenset({"grad_avg", "sqr_avg", "step", "local_lr"})
FLAG_KEYS = ("do_wd", "force_train")          # per-param flags fastai keeps across clear_state
_MOMENT_KEYS = ("grad_avg", "sqr_avg")
# Keys torch's LR/momentum schedulers add to param groups: allowed beside an optimizer's hypers.
_SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"})
# Group options and state of torch.optim optimizers (never pyfastopt hyper or state names).
_TORCH_GROUP_KEYS = frozenset({
    "betas", "momentum", "weight_decay", "dampening", "nesterov", "amsgrad", "maximize",
    "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay", "centered",
    "alpha", "lr_decay", "initial_accumulator_value", "rho", "lambd", "t0", "etas",
    "step_sizes", "momentum_decay"})
_TORCH_STATE_KEYS = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer",
                               "square_avg", "acc_delta", "sum", "ax", "eta", "mu", "prev",
                               "exp_inf", "mu_product"})
_MAX_STEP = 2 ** 63 - 1
_CONVERT_HINT = ("convert it with pyfastopt.from_torch_state_dict(torch_sd, opt) and load the "
                 "result")

Loaded = namedtuple("Loaded", "hypers states extra")
Loaded.__doc__ = """What an optimizer holds after a load: `hypers` (one dict per group), `states`
(one dict per param, tensors already on the param's device), `extra` (non-param state)."""


def _bound_keywords(cbs):
    "Keywords fixed by `partial` in the chain (`dampening`, `clip`): never loadable as state or hyper."
    out = set()
    for cb in cbs:
        while isinstance(cb, partial):
            out.update(cb.keywords)
            cb = cb.func
    return out


def _chain_state_keys(cbs):
    """The per-param state keys the chain keeps, or None when the chain has steppers that are
    not pyfastopt's (then any other key may be theirs)."""
    keys = set()
    for cb in cbs:
        own = getattr(stepper_func(cb), "state_keys", None)
        if own is None:
            return None
        keys.update(own)
    return keys


def _fail(where, problem):
    raise StateDictError(f"{where}: {problem}")


def _type_name(v):
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)} on {v.device}"
    return f"{type(v).__name__} {v!r}"[:200]


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _as_list(v):
    "A list from a list, tuple or L (fastai's hypers are an L); None for anything else."
    if isinstance(v, L):
        return list(v.items)
    if isinstance(v, (list, tuple)):
        return list(v)
    return None


# ---- one value at a time ------------------------------------------------------------------------
def _check_tensor_place(where, v, p):
    "A state tensor may live anywhere the param can reach, but never on `meta` (it has no data)."
    if v.layout != torch.strided:
        _fail(where, f"must be a dense tensor, got layout {v.layout}")
    if v.device.type == "meta" and p.device.type != "meta":
        _fail(where, "is a tensor on the 'meta' device (it holds no values)")


def _moment(where, v, p):
    "`grad_avg`/`sqr_avg`: a floating tensor of the param's shape (complex only for complex params)."
    if not isinstance(v, torch.Tensor):
        _fail(where, f"must be a tensor of the param's shape {tuple(p.shape)}, got {_type_name(v)}")
    _check_tensor_place(where, v, p)
    ok = v.is_complex() == p.is_complex() and (v.is_floating_point() or v.is_complex())
    if not ok:
        _fail(where, f"must be a floating-point tensor like its param ({p.dtype}), got {v.dtype}")
    if v.shape != p.shape:
        _fail(where, f"has shape {tuple(v.shape)}, the param has shape {tuple(p.shape)}")
    return _to_param(v, p)


def _step(where, v):
    if not _is_int(v) or not 0 <= v <= _MAX_STEP:
        _fail(where, f"must be a non-negative int (a step count), got {_type_name(v)}")
    return int(v)


def _local_lr(where, v, p):
    "Larc's per-layer rate: `lr` itself (a number) where clipped, else a 0-d floating tensor."
    if isinstance(v, torch.Tensor):
        _check_tensor_place(where, v, p)
        if v.ndim != 0 or not v.is_floating_point():
            _fail(where, f"must be a number or a 0-d floating tensor, got {_type_name(v)}")
        if v.device.type == "cpu" and not (math.isfinite(v.item()) and v.item() >= 0):
            _fail(where, f"must be finite and >= 0, got {v.item()!r}")
        return v.to(device=p.device)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        _fail(where, f"must be a number or a 0-d floating tensor, got {_type_name(v)}")
    if not (math.isfinite(v) and v >= 0):
        _fail(where, f"must be finite and >= 0, got {v!r}")
    return v


def _flag(where, v):
    if not isinstance(v, bool):
        _fail(where, f"must be True or False, got {_type_name(v)}")
    return v


def _other(where, v, p):
    "State of a stepper that is not pyfastopt's: tensors must fit the param, the rest is theirs."
    if isinstance(v, torch.Tensor):
        _check_tensor_place(where, v, p)
        if v.ndim > 0 and v.shape != p.shape:
            _fail(where, f"has shape {tuple(v.shape)}, the param has shape {tuple(p.shape)}")
        return _to_param(v, p)
    return v


def _to_param(v, p):
    """Loaded state goes to the param's device; floating tensors (not 0-d counters) to its dtype,
    float32 for a half param (the half-precision rule, half.py)."""
    if v.is_floating_point() and v.ndim > 0:
        return v.to(device=p.device, dtype=torch.float32 if p.dtype in HALF_DTYPES else p.dtype)
    return v.to(device=p.device)


def _param_state(where, st, p, allowed, bound):
    if isinstance(st, L):
        st = st.items
    if not isinstance(st, dict):
        _fail(where, f"must be a dict (the param's state), got {_type_name(st)}")
    out = {}
    for k, v in st.items():
        at = f"{where}[{k!r}]"
        if not isinstance(k, str):
            _fail(at, "state keys must be strings")
        if k in bound:
            _fail(at, f"{k!r} is fixed by the optimizer's steppers and cannot come from a state dict")
        if allowed is not None and k not in allowed:
            _fail(at, f"is not state this optimizer keeps (it keeps {sorted(allowed)})")
        if k in _MOMENT_KEYS:
            out[k] = _moment(at, v, p)
        elif k == "step":
            out[k] = _step(at, v)
        elif k == "local_lr":
            out[k] = _local_lr(at, v, p)
        elif k in FLAG_KEYS:
            out[k] = _flag(at, v)
        else:
            out[k] = _other(at, v, p)
    return out


_SCHEDULER_BOUNDS = {"initial_lr": "lr", "max_lr": "lr", "min_lr": "lr",
                     "base_momentum": "sqr_mom", "max_momentum": "sqr_mom"}   # sqr_mom: [0, 1]


def _hyper_value(opt, where, k, v):
    if isinstance(v, torch.Tensor) and v.device.type == "meta":
        _fail(where, "is a tensor on the 'meta' device (it holds no value)")
    try:
        check_hyper(k, v, opt._hyper_bounds(k) or
                    HYPER_BOUNDS.get(_SCHEDULER_BOUNDS.get(k, k)))
    except (TypeError, ValueError) as e:
        _fail(where, str(e))
    return v


# ---- the whole dict -----------------------------------------------------------------------------
def _kind(opt, sd):
    kind = sd.get("kind")
    if kind is None:
        return None
    kl = _as_list(kind)
    if kl is None or not all(isinstance(k, str) for k in kl):
        _fail("state_dict['kind']", f"must be a list of stepper names, got {_type_name(kind)}")
    if kl != opt.kind():
        raise StateDictError(f"state_dict is from a different optimizer: its steppers are {kl}, "
                             f"this optimizer's are {opt.kind()}")
    return kl


def _looks_like_torch(sd):
    if "hypers" in sd or "kind" in sd:
        return False
    groups = _as_list(sd.get("param_groups")) or []
    if any(isinstance(g, dict) and _TORCH_GROUP_KEYS & set(g) for g in groups):
        return True
    st = sd.get("state")
    states = st.values() if isinstance(st, dict) else (_as_list(st) or [])
    return any(isinstance(s, dict) and _TORCH_STATE_KEYS & set(s) for s in states)


def _group_hypers(opt, sd):
    """One hyper dict per group. `param_groups` wins over `hypers` where both give a key: torch's
    tools and load-state-dict hooks edit `param_groups`."""
    n = len(opt.param_lists)
    hypers = groups = None
    if "hypers" in sd:
        hypers = _as_list(sd["hypers"])
        if hypers is None:
            _fail("state_dict['hypers']", f"must be a list of dicts, got {_type_name(sd['hypers'])}")
        if len(hypers) != n:
            _fail("state_dict['hypers']", f"has {len(hypers)} parameter groups, this optimizer "
                  f"has {n}")
    if "param_groups" in sd:
        groups = _as_list(sd["param_groups"])
        if groups is None:
            _fail("state_dict['param_groups']",
                  f"must be a list of dicts, got {_type_name(sd['param_groups'])}")
        if len(groups) != n:
            _fail("state_dict['param_groups']", f"has {len(groups)} parameter groups, this "
                  f"optimizer has {n}")
    if hypers is None and groups is None:
        _fail("state_dict", "has neither 'hypers' nor 'param_groups'")
    out, origin = [], []
    for i in range(n):
        h, src = {}, {}
        if hypers is not None:
            if not isinstance(hypers[i], dict):
                _fail(f"state_dict['hypers'][{i}]", f"must be a dict, got {_type_name(hypers[i])}")
            h.update(hypers[i])
            src.update(dict.fromkeys(hypers[i], "hypers"))
        if groups is not None:
            g = groups[i]
            if not isinstance(g, dict):
                _fail(f"state_dict['param_groups'][{i}]", f"must be a dict, got {_type_name(g)}")
            for k, v in g.items():
                if k not in ("params", "param_names"):
                    h[k], src[k] = v, "param_groups"
        out.append(h)
        origin.append(src)
    return out, origin, groups


def _check_hypers(opt, hypers, origin, has_kind):
    required = set(opt.defaults)
    forbidden = _BUILTIN_STATE | set(FLAG_KEYS) | _bound_keywords(opt.cbs)
    for i, h in enumerate(hypers):
        src = "param_groups" if all(o == "param_groups" for o in origin[i].values()) else "hypers"
        for k, v in h.items():
            where = f"state_dict['{origin[i][k]}'][{i}][{k!r}]"
            if not isinstance(k, str):
                _fail(where, "hyper names must be strings")
            if k in forbidden:
                _fail(where, f"{k!r} is state or fixed by the steppers, not a hyper-parameter")
            _hyper_value(opt, where, k, v)
        missing = required - set(h)
        if missing:
            _fail(f"state_dict['{src}'][{i}]", f"lacks hyper-parameter(s) {sorted(missing)} "
                  "that this optimizer's steppers need")
        extra = set(h) - required - _SCHEDULER_KEYS
        if not has_kind and extra:
            # without 'kind', the hyper names are what says whose state this is
            raise StateDictError(
                f"state_dict has no 'kind' and its group {i} has hyper-parameters "
                f"{sorted(extra)} that this optimizer ({opt.kind()}) does not have: it is from "
                "another optimizer")


def _param_ids(groups, sizes):
    "The saved ids of the params, in order (from `param_groups`), or None (positions 0..n-1)."
    if groups is None or not any(isinstance(g, dict) and "params" in g for g in groups):
        return None
    ids = []
    for i, (g, size) in enumerate(zip(groups, sizes)):
        where = f"state_dict['param_groups'][{i}]['params']"
        if "params" not in g:
            _fail(f"state_dict['param_groups'][{i}]", "lacks 'params'")
        got = _as_list(g["params"])
        if got is None:
            _fail(where, f"must be a list of param ids, got {_type_name(g['params'])}")
        if len(got) != size:
            theirs = [len(_as_list(x.get("params")) or []) if isinstance(x, dict) else None
                      for x in groups]
            _fail("state_dict['param_groups']", f"groups have {theirs} params, this optimizer's "
                  f"have {list(sizes)}")
        for j in got:
            if not _is_int(j):
                _fail(where, f"param ids must be ints, got {_type_name(j)}")
        ids.extend(got)
    if len(set(ids)) != len(ids):
        _fail("state_dict['param_groups']", "names the same param id more than once")
    return ids


def prepare_load(opt, sd):
    """Check state dict `sd` for `opt` (a pyfastopt `Optimizer`) and return a `Loaded`.

    Accepted: what `state_dict()` writes, the same without `kind` or with only one of `hypers`
    and `param_groups`, and fastai's own layout (`{'state': [per-param dicts], 'hypers': [...]}`).
    Without `kind` the hyper names must be exactly this optimizer's (besides LR-scheduler keys):
    that is how fastai's and pyfastopt's dicts are recognised. A `torch.optim` state dict is
    refused with a pointer to the converters. Raises `StateDictError` naming the entry at fault."""
    if not isinstance(sd, dict):
        raise StateDictError(f"state_dict must be a dict (as returned by state_dict()), got "
                             f"{_type_name(sd)}")
    if "state" not in sd:
        raise StateDictError("state_dict must have a 'state' entry (as returned by state_dict())")
    if _looks_like_torch(sd):
        raise StateDictError("state_dict is a torch.optim state dict (its param groups or state "
                             "use torch's names, and it has no 'kind' or 'hypers'): "
                             + _CONVERT_HINT)
    kind = _kind(opt, sd)
    hypers, origin, groups = _group_hypers(opt, sd)
    _check_hypers(opt, hypers, origin, kind is not None)
    ps = [p for pl in opt.param_lists for p in pl]
    sizes = [len(pl) for pl in opt.param_lists]
    ids = _param_ids(groups, sizes)
    st = sd["state"]
    extra = {}
    if isinstance(st, dict):
        index = {k: i for i, k in enumerate(ids if ids is not None else range(len(ps)))}
        states = [{} for _ in ps]
        for k, v in st.items():
            if isinstance(k, (bool, torch.Tensor)) or (isinstance(k, numbers.Number)
                                                         and not _is_int(k)):
                _fail(f"state_dict['state'][{k!r}]", "state is keyed by param ids (ints) or by "
                      "names of non-param state")
            if _is_int(k):
                if k not in index:
                    _fail(f"state_dict['state'][{k!r}]", f"{k} is not the id of a param of "
                          f"this optimizer ({len(ps)} params)")
                states[index[k]] = v
            else:
                extra[k] = v              # non-param state, kept as torch keeps it
    else:
        states = _as_list(st)
        if states is None:
            _fail("state_dict['state']", f"must be a dict or a list, got {_type_name(st)}")
        if len(states) != len(ps):
            _fail("state_dict['state']", f"has state for {len(states)} params, this optimizer has "
                  f"{len(ps)}")
    allowed = _chain_state_keys(opt.cbs)
    if allowed is not None:
        allowed |= set(FLAG_KEYS)
    bound = _bound_keywords(opt.cbs)
    label = (lambda i: ids[i]) if ids is not None else (lambda i: i)
    states = [_param_state(f"state_dict['state'][{label(i)}]", s, p, allowed, bound)
              for i, (p, s) in enumerate(zip(ps, states))]
    return Loaded([dict(h) for h in hypers], states, extra)


def checked_count(v, where="state_dict['count']"):
    if not _is_int(v) or v < 0:
        _fail(where, f"must be a non-negative int, got {_type_name(v)}")
    return int(v)


def checked_slow_weights(v, param_lists, where="state_dict['slow_weights']"):
    "Lookahead's slow weights: None, or one tensor like each param, group by group (copied)."
    if v is None:
        return None
    groups = _as_list(v)
    if groups is None or len(groups) != len(param_lists):
        _fail(where, f"must be a list of {len(param_lists)} lists of tensors, got {_type_name(v)}")
    out = []
    for i, (sl, pl) in enumerate(zip(groups, param_lists)):
        sl = _as_list(sl)
        if sl is None or len(sl) != len(pl):
            shapes = [[tuple(p.shape) for p in pl_] for pl_ in param_lists]
            _fail(f"{where}[{i}]", f"must hold one tensor per param; the params have shapes "
                  f"{shapes}")
        out.append([checked_slow_weight(t, p, f"{where}[{i}][{j}]")
                    for j, (t, p) in enumerate(zip(sl, pl))])
    return out


def checked_slow_weight(t, p, where):
    "Lookahead's slow weight of param `p`: a floating tensor of its shape (copied to p's place)."
    if not isinstance(t, torch.Tensor):
        _fail(where, f"must be a tensor, got {_type_name(t)}")
    _check_tensor_place(where, t, p)
    if not (t.is_floating_point() or t.is_complex()) or t.is_complex() != p.is_complex():
        _fail(where, f"must be a floating-point tensor like its param ({p.dtype}), got {t.dtype}")
    if t.shape != p.shape:
        _fail(where, f"has shape {tuple(t.shape)}, the param has shape {tuple(p.shape)}")
    return t.detach().to(device=p.device, dtype=p.dtype).clone()


# ---- converters between pyfastopt and torch.optim ---------------------------------------------
# The chains (after the weight-decay stepper) whose math torch.optim has too, and the torch
# classes that have it. Adam's eps is added after debiasing in both libraries; RAdam's is not
# (torch adds it before dividing by sqrt(1 - beta2**t)), so RAdam converts only with eps = 0.
_FAMILIES = {
    ("average_grad(dampening=True)", "average_sqr_grad", "step_stat", "adam_step"): "Adam",
    ("average_grad(dampening=True)", "average_sqr_grad", "step_stat", "radam_step"): "RAdam",
    ("average_grad", "momentum_step"): "SGD with momentum",
    ("sgd_step",): "SGD",
    ("average_sqr_grad", "rms_prop_step"): "RMSProp",
}
_TORCH_CLASSES = {"Adam": ("Adam", "AdamW"), "RAdam": ("RAdam",), "SGD with momentum": ("SGD",),
                  "SGD": ("SGD",), "RMSProp": ("RMSprop",)}
# torch state keys per family, pyfastopt key -> torch key
_STATE_MAP = {"Adam": {"step": "step", "grad_avg": "exp_avg", "sqr_avg": "exp_avg_sq"},
              "RAdam": {"step": "step", "grad_avg": "exp_avg", "sqr_avg": "exp_avg_sq"},
              "SGD with momentum": {"grad_avg": "momentum_buffer"},
              "SGD": {},
              "RMSProp": {"sqr_avg": "square_avg"}}


def _family(kind, what):
    kind = list(kind)
    if kind and kind[0] == "Lookahead":
        raise StateDictError(f"{what} is a Lookahead (ranger): torch.optim has no Lookahead, so "
                             "there is nothing to convert to or from")
    fam = _FAMILIES.get(tuple(kind[1:])) if kind and kind[0] in ("weight_decay", "l2_reg") else None
    if fam is None:
        raise StateDictError(
            f"{what} has steppers {kind}: no torch.optim optimizer does the same math. Converters "
            "exist for Adam (torch Adam/AdamW), RAdam (eps=0), SGD with or without momentum and "
            "RMSProp without momentum")
    return fam, kind[0] == "weight_decay"


def _num(where, v):
    "A Python float from a number or a one-element CPU tensor."
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type == "cpu":
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        _fail(where, f"must be a number, got {_type_name(v)}")
    return float(v) if not _is_int(v) else v


def _scalar_step(step):
    "torch keeps `step` as a 0-d float tensor (float64 when that is the default dtype)."
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(float(step), dtype=dtype)


def _torch_defaults(torch_cls):
    "The group options `torch_cls` fills in (read from a throwaway instance on one dummy param)."
    d = dict(torch_cls([torch.zeros(1, requires_grad=True)]).defaults)
    d.pop("params", None)
    return d


def to_torch_state_dict(source, torch_cls):
    """A `torch_cls` state dict with the state and hypers of `source` (a pyfastopt optimizer, or
    its `state_dict()`), such that `torch_cls(same params).load_state_dict(it)` continues the
    training with the same math.

    Supported: `Adam` -> `torch.optim.AdamW` (decoupled weight decay, the default) or
    `torch.optim.Adam` (`decouple_wd=False`, L2); `RAdam` -> `torch.optim.RAdam` when `eps == 0`
    and `beta == 0`; `SGD` (with or without momentum) -> `torch.optim.SGD`; `RMSProp` with
    `mom == 0` -> `torch.optim.RMSprop`. Weight decay converts where torch applies it the same way
    (SGD and RMSprop decay by L2 only, so they need `decouple_wd=False` or `wd == 0`); a param with
    `do_wd=False` in a decaying group cannot be expressed in torch and is refused. The step count
    becomes torch's 0-d float `step`; RMSprop's step (a counter its math does not use) becomes 0,
    as pyfastopt's RMSProp does not count steps. Tensors are copied."""
    if isinstance(source, torch.optim.Optimizer) and hasattr(source, "kind"):
        sd = source.state_dict()
    elif isinstance(source, dict):
        sd = source
    else:
        raise TypeError(f"source must be a pyfastopt optimizer or its state_dict(), got "
                        f"{type(source).__name__}")
    if "kind" not in sd:
        raise StateDictError("source state dict has no 'kind', so its steppers are unknown: load "
                             "it into a pyfastopt optimizer and pass that optimizer")
    if not isinstance(torch_cls, type) or not issubclass(torch_cls, torch.optim.Optimizer):
        raise TypeError(f"torch_cls must be a torch.optim optimizer class, got {torch_cls!r}")
    fam, decoupled = _family(sd["kind"], "source")
    names = _TORCH_CLASSES[fam]
    if torch_cls.__name__ not in names or getattr(torch.optim, torch_cls.__name__) is not torch_cls:
        raise StateDictError(f"a pyfastopt {fam} converts to torch.optim.{' or torch.optim.'.join(names)}, "
                             f"not {torch_cls.__module__}.{torch_cls.__qualname__}")
    defaults = _torch_defaults(torch_cls)
    hypers = _as_list(sd.get("hypers"))
    if hypers is None:
        raise StateDictError("source state dict has no 'hypers' list")
    state = sd["state"]
    states = dict(enumerate(state)) if isinstance(state, list) else dict(state)
    groups, start = [], 0
    sizes = [len(_as_list(g["params"])) for g in sd["param_groups"]] if "param_groups" in sd \
        else None
    if sizes is None:
        if len(hypers) != 1:
            raise StateDictError("source state dict has several groups but no 'param_groups' "
                                 "saying which params are in which")
        sizes = [sum(1 for k in states if _is_int(k))]
    wd_of_param = {}
    for i, (h, size) in enumerate(zip(hypers, sizes)):
        where = f"source['hypers'][{i}]"
        lr, wd = _num(f"{where}['lr']", h["lr"]), _num(f"{where}['wd']", h.get("wd", 0.0))
        g = dict(defaults)
        g.update(lr=lr, weight_decay=wd)
        if fam in ("Adam", "RAdam"):
            g["betas"] = (_num(f"{where}['mom']", h["mom"]), _num(f"{where}['sqr_mom']", h["sqr_mom"]))
            g["eps"] = _num(f"{where}['eps']", h["eps"])
        elif fam == "RMSProp":
            g.update(alpha=_num(f"{where}['sqr_mom']", h["sqr_mom"]),
                     eps=_num(f"{where}['eps']", h["eps"]), momentum=0, centered=False)
        else:
            g.update(momentum=_num(f"{where}['mom']", h["mom"]) if fam != "SGD" else 0,
                     dampening=0, nesterov=False)
        if wd != 0:
            if fam in ("SGD", "SGD with momentum", "RMSProp") and decoupled:
                raise StateDictError(
                    f"{where}: decoupled weight decay (wd={wd}, decouple_wd=True) has no "
                    f"torch.optim.{names[0]} equivalent (torch's weight_decay is L2 there); use "
                    "decouple_wd=False or wd=0")
            if fam == "Adam" and torch_cls.__name__ != ("AdamW" if decoupled else "Adam"):
                raise StateDictError(
                    f"{where}: {'decoupled' if decoupled else 'L2'} weight decay (wd={wd}) is "
                    f"torch.optim.{'AdamW' if decoupled else 'Adam'}'s, not "
                    f"torch.optim.{torch_cls.__name__}'s")
            if "decoupled_weight_decay" in g:
                g["decoupled_weight_decay"] = decoupled
        if fam == "RAdam":
            if g["eps"] != 0 or h.get("beta", 0):
                raise StateDictError(
                    f"{where}: RAdam converts exactly only with eps=0 and beta=0 (got eps="
                    f"{g['eps']}, beta={h.get('beta', 0)}): torch adds eps before the debiasing "
                    "of the second moment, fastai after it, and torch has no SAdam (beta)")
        if "initial_lr" in h:
            g["initial_lr"] = h["initial_lr"]
        g["params"] = list(range(start, start + size))
        for j in g["params"]:
            wd_of_param[j] = (i, wd)
        start += size
        groups.append(g)
    out_state = {}
    keymap = _STATE_MAP[fam]
    for k, st in states.items():
        if not _is_int(k):
            out_state[k] = st                         # non-param state, as torch keeps it
            continue
        where = f"source['state'][{k}]"
        if k not in wd_of_param:
            _fail(where, "is not the index of a param in the source's groups")
        i, wd = wd_of_param[k]
        if wd != 0 and st.get("do_wd", True) is False:
            _fail(where, f"has do_wd=False in a group with wd={wd}: torch.optim applies one weight "
                  "decay to a whole group; put such params in their own group with wd=0")
        moments = {tk: st[fk] for fk, tk in keymap.items() if fk in st}
        if not moments:
            continue
        if len(moments) != len(keymap):
            _fail(where, f"has {sorted(k_ for k_ in keymap if k_ in st)} but torch needs all of "
                  f"{sorted(keymap)}")
        out = {}
        for tk, v in moments.items():
            if tk == "step":
                out[tk] = _scalar_step(_step(f"{where}['step']", v))
            elif not isinstance(v, torch.Tensor):
                _fail(f"{where}[{tk!r}]", f"must be a tensor, got {_type_name(v)}")
            else:
                out[tk] = v.detach().clone()
        if fam == "RMSProp":
            out = {"step": _scalar_step(0), **out}
        out_state[k] = out
    return {"state": out_state, "param_groups": groups}


def _torch_group_check(fam, i, g, decoupled):
    "Refuse torch options whose math pyfastopt's chain does not do."
    where = f"torch_sd['param_groups'][{i}]"
    need = {"Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
            "RAdam": ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay"),
            "SGD with momentum": ("lr", "momentum", "dampening", "nesterov", "weight_decay"),
            "SGD": ("lr", "momentum", "weight_decay"),
            "RMSProp": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")}[fam]
    missing = [k for k in need if k not in g]
    if missing or (fam == "RAdam" and ("amsgrad" in g or "momentum_decay" in g)):
        raise StateDictError(f"{where} is not a torch.optim {_TORCH_CLASSES[fam]} group "
                             f"(lacks {missing or 'nothing, but has other options'}): this "
                             f"optimizer is a pyfastopt {fam}")
    flags = {"maximize": False, "amsgrad": False, "nesterov": False, "centered": False}
    for k, ok in flags.items():
        if g.get(k, ok) != ok:
            _fail(f"{where}[{k!r}]", f"is {g[k]!r}: pyfastopt's {fam} has no such option")
    if fam == "SGD with momentum":
        if _num(f"{where}['dampening']", g["dampening"]) != 0:
            _fail(f"{where}['dampening']", "must be 0: pyfastopt's SGD momentum is undampened")
        if _num(f"{where}['momentum']", g["momentum"]) == 0:
            _fail(f"{where}['momentum']", "is 0 but this optimizer has momentum (mom != 0)")
    if fam in ("SGD", "RMSProp") and _num(f"{where}['momentum']", g["momentum"]) != 0:
        _fail(f"{where}['momentum']", f"must be 0: this pyfastopt {fam} has no momentum"
              + (" (torch's RMSprop momentum divides each gradient by its own rms, fastai's "
                 "the sum: different math)" if fam == "RMSProp" else ""))
    wd = _num(f"{where}['weight_decay']", g["weight_decay"])
    if wd != 0:
        theirs = bool(g.get("decoupled_weight_decay", False))
        if theirs != decoupled:
            _fail(where, f"decays weights {'decoupled' if theirs else 'by L2'} (weight_decay={wd}) "
                  f"but this optimizer {'decoupled' if decoupled else 'by L2'}: build it with "
                  f"decouple_wd={theirs}")
    if fam == "RAdam" and _num(f"{where}['eps']", g["eps"]) != 0:
        _fail(f"{where}['eps']", "must be 0: torch's RAdam adds eps before debiasing the second "
              "moment, pyfastopt's after it, so only eps=0 gives the same math")


def from_torch_state_dict(torch_sd, opt):
    """A pyfastopt state dict for `opt` from `torch_sd` (a torch.optim optimizer's
    `state_dict()` over the same params in the same groups), to pass to `opt.load_state_dict`.

    The inverse of `to_torch_state_dict`, with the same pairs: torch Adam/AdamW -> `Adam`
    (L2 or decoupled weight decay as `opt` was built), RAdam (eps 0) -> `RAdam` (beta 0), SGD ->
    `SGD` (dampening 0, no nesterov), RMSprop (no momentum, not centered) -> `RMSProp(mom=0)`.
    torch's options become `opt`'s hypers (lr, betas -> mom/sqr_mom, alpha -> sqr_mom, eps,
    weight_decay -> wd); options pyfastopt's math lacks (amsgrad, maximize, nesterov, ...) are
    refused. torch's float `step` becomes an int. Tensors are copied."""
    if not hasattr(opt, "kind") or not hasattr(opt, "param_lists"):
        raise TypeError(f"opt must be a pyfastopt optimizer, got {type(opt).__name__}")
    fam, decoupled = _family(opt.kind(), "opt")
    if not isinstance(torch_sd, dict) or "state" not in torch_sd or "param_groups" not in torch_sd:
        raise StateDictError("torch_sd must be a torch.optim state dict: a dict with 'state' and "
                             "'param_groups'")
    if "kind" in torch_sd or "hypers" in torch_sd:
        raise StateDictError("torch_sd is a pyfastopt state dict already: load it directly")
    groups = _as_list(torch_sd["param_groups"])
    if groups is None or len(groups) != len(opt.param_lists) or \
            not all(isinstance(g, dict) and "params" in g for g in groups):
        _fail("torch_sd['param_groups']", f"must list {len(opt.param_lists)} group dicts with "
              "'params', as opt has")
    ids = _param_ids(groups, [len(pl) for pl in opt.param_lists])
    hypers = []
    for i, (g, h) in enumerate(zip(groups, opt.hypers)):
        _torch_group_check(fam, i, g, decoupled)
        where = f"torch_sd['param_groups'][{i}]"
        h = dict(h)
        h["lr"] = _num(f"{where}['lr']", g["lr"])
        h["wd"] = _num(f"{where}['weight_decay']", g["weight_decay"])
        if fam in ("Adam", "RAdam"):
            betas = _as_list(g["betas"])
            if betas is None or len(betas) != 2:
                _fail(f"{where}['betas']", f"must be two numbers, got {_type_name(g['betas'])}")
            h["mom"], h["sqr_mom"] = (_num(f"{where}['betas']", b) for b in betas)
            h["eps"] = _num(f"{where}['eps']", g["eps"])
            if fam == "RAdam" and h.get("beta", 0):
                _fail("opt", f"has beta={h['beta']} (SAdam), which torch's RAdam does not do")
        elif fam == "RMSProp":
            h["sqr_mom"] = _num(f"{where}['alpha']", g["alpha"])
            h["eps"] = _num(f"{where}['eps']", g["eps"])
            h["mom"] = 0.0
        else:
            h["mom"] = _num(f"{where}['momentum']", g["momentum"])
        if "initial_lr" in g:
            h["initial_lr"] = g["initial_lr"]
        hypers.append(h)
    index = {k: i for i, k in enumerate(ids)}
    back = {tk: fk for fk, tk in _STATE_MAP[fam].items()}
    state, extra = {}, {}
    st_in = torch_sd["state"]
    if not isinstance(st_in, dict):
        _fail("torch_sd['state']", f"must be a dict, got {_type_name(st_in)}")
    for k, st in st_in.items():
        if k not in index:
            if _is_int(k) or isinstance(k, torch.Tensor):
                _fail(f"torch_sd['state'][{k!r}]", "is not the id of a param in its param_groups")
            extra[k] = st
            continue
        where = f"torch_sd['state'][{k!r}]"
        if not isinstance(st, dict):
            _fail(where, f"must be a dict, got {_type_name(st)}")
        # torch's RMSprop counts steps its math does not use; SGD without momentum may keep a
        # None momentum buffer: both have no pyfastopt counterpart and are dropped
        ignored = {"RMSProp": {"step"}, "SGD": {"momentum_buffer"}}.get(fam, set())
        unknown = set(st) - set(back) - ignored
        if unknown:
            _fail(where, f"has {sorted(unknown, key=str)}, which a torch.optim "
                  f"{'/'.join(_TORCH_CLASSES[fam])} does not keep: it is another optimizer's state")
        out = {}
        for tk, v in st.items():
            if tk not in back or v is None:
                continue
            if tk == "step":
                s = _num(f"{where}['step']", v)
                if not (math.isfinite(s) and s >= 0 and s == int(s)):
                    _fail(f"{where}['step']", f"must be a whole number >= 0, got {s!r}")
                out["step"] = int(s)
            elif not isinstance(v, torch.Tensor):
                _fail(f"{where}[{tk!r}]", f"must be a tensor, got {_type_name(v)}")
            else:
                out[back[tk]] = v.detach().clone()
        state[index[k]] = out
    state.update(extra)
    start, pgs = 0, []
    for h, pl in zip(hypers, opt.param_lists):
        pgs.append({**h, "params": list(range(start, start + len(pl)))})
        start += len(pl)
    sd = {"state": state, "hypers": hypers, "param_groups": pgs, "kind": opt.kind()}
    prepare_load(opt, sd)                  # refuse here what load_state_dict would refuse
    return sd


# ---- fastai checkpoints -------------------------------------------------------------------------
FastaiCheckpoint = namedtuple("FastaiCheckpoint", "model opt")
FastaiCheckpoint.__doc__ = """A fastai checkpoint: the model's state dict, and the optimizer's
state dict (`{'state': [...], 'hypers': [...]}`, lists throughout) or None if saved without it."""


class _FastcoreL:
    """Stands in for fastcore's `L` while a checkpoint is unpickled. An `L` pickles as the class
    and its `__dict__`, `{'items': [...]}`; only that list is kept, and it replaces the `L`."""
    __slots__ = ("items",)

    def __setstate__(self, state):
        if not (isinstance(state, dict) and set(state) == {"items"}
                and isinstance(state["items"], list)):
            raise pickle.UnpicklingError(
                "fastcore.foundation.L in the file does not hold a list of items "
                f"(its state is {_type_name(state)})")
        self.items = state["items"]


def _unwrap_L(obj, memo):
    "`obj` with every `_FastcoreL` replaced by its list (shared and cyclic references kept)."
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _FastcoreL):
        if not hasattr(obj, "items"):
            raise UnsafeCheckpointError("fastcore.foundation.L in the file has no items")
        out = memo[id(obj)] = []
        out.extend(_unwrap_L(x, memo) for x in obj.items)
        return out
    if type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(_unwrap_L(x, memo) for x in obj)
        return out
    if isinstance(obj, dict):
        out = memo[id(obj)] = type(obj)()
        for k, v in obj.items():
            out[k] = _unwrap_L(v, memo)
        return out
    if type(obj) is tuple:
        return tuple(_unwrap_L(x, memo) for x in obj)
    return obj


def _torch_reason(e):
    """The specific part of torch's weights-only error, without its advice to allow the global
    or to use `weights_only=False`, which is exactly what must not be done here."""
    msg = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", msg, re.DOTALL)
    if m and m.group(1).strip():
        return " ".join(m.group(1).split(" Please use ")[0].split())[:500]
    parts = [x.strip() for x in msg.split("\n\n") if x.strip()]
    specific = [x for x in parts if not x.startswith(("Weights only load failed",
                                                        "Check the documentation"))]
    return " ".join(specific or parts)[:500]


def load_fastai_checkpoint(f, map_location=None):
    """Read a fastai 2.8 `Learner.save` / `save_model` file safely; returns a `FastaiCheckpoint`.

    The file is read with `torch.load(weights_only=True)`: tensors and plain containers, plus
    fastcore's `L`, allowed under its name but read by a stand-in that keeps only its items as a
    list. fastai, fastcore and pickled code are never imported or run; a file that references any
    other global is refused with `UnsafeCheckpointError`. Load the result's `opt` with
    `opt.load_state_dict(ckpt.opt)` (fastai's layout is accepted as is)."""
    try:
        with torch.serialization.safe_globals([(_FastcoreL, "fastcore.foundation.L")]):
            obj = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to read {f!r}: it holds something other than tensors, plain containers and "
            f"fastcore's L, which a fastai checkpoint never needs ({_torch_reason(e)})") from None
    obj = _unwrap_L(obj, {})
    if isinstance(obj, dict) and set(obj) == {"model", "opt"}:
        return FastaiCheckpoint(obj["model"], obj["opt"])
    return FastaiCheckpoint(obj, None)
