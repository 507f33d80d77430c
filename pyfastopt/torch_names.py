"""torch's setting names and named parameters, honoured.

fastai names its hypers `wd`, `mom`, `sqr_mom`; torch.optim names them `weight_decay`, `momentum`,
`betas` and `alpha`. fastai's `pytorch_hp_map` (spec §4.2) gives the correspondence, which is used
here in the other direction, wherever a torch user may write a torch name:

- as a keyword of a factory (`Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)`) or
  of `Optimizer(params, cbs, ...)`;
- as a key of a torch-style group dict (`{'params': biases, 'weight_decay': 0.}`), also in
  `add_param_group` and when a group is assigned through `param_groups`;
- through `param_groups[i]['betas']`, `['momentum']`, `['weight_decay']`, `['alpha']`: live views
  of `mom`, `sqr_mom`, `wd` (read and written), which is what torch's momentum-cycling schedulers
  (`OneCycleLR`, `CyclicLR` with `cycle_momentum=True`) read and write. The views are not stored:
  `opt.hypers` keeps fastai's keys in fastai's order, and iterating a group shows no view.
  `opt.defaults` answers the views too (`'betas' in opt.defaults`), as the schedulers check.

A torch name maps only onto hypers that a stepper of the chain actually reads: `betas` needs
`mom` and `sqr_mom`, so it is refused by `SGD`; `momentum` is refused by `SGD(mom=0)`, whose chain
has no momentum stepper (torch's SGD would start using momentum; fastai's chain cannot). A torch
setting with no fastai equivalent (`nesterov`, `amsgrad`, `foreach`, ...) is refused too: a
torch name is never silently stored and left unused. A key that is itself a hyper of the chain is
never translated (a custom stepper may take `alpha`; `ranger`'s `alpha` is Lookahead's).
Other unknown keys of a group dict are kept, as torch and fastai both keep them (schedulers store
`initial_lr`, `max_momentum`; custom steppers read free-form hypers).

Named parameters: `Adam(model.named_parameters(), lr=...)` and groups of `(name, tensor)` pairs,
as torch >= 2.6 accepts them; the names go to `state_dict()`'s groups as `param_names`.
"""
import inspect

from .recipe import stepper_func


__all__ = ["TORCH_NAMES", "NO_EQUIVALENT", "translate", "accepts_torch_names", "chain_reads",
           "views", "view_get", "view_set", "TorchDefaults", "split_named"]

# torch name -> the fastai hypers it stands for (fastai's pytorch_hp_map, betas spread)
TORCH_NAMES = {"weight_decay": ("wd",), "momentum": ("mom",), "alpha": ("sqr_mom",),
               "betas": ("mom", "sqr_mom")}
# torch.optim settings with no fastai equivalent: refused rather than stored and ignored
NO_EQUIVALENT = {
    "nesterov": "fastai's momentum_step is plain (heavy-ball) momentum",
    "dampening": "fastai's SGD momentum is undampened; Adam's averages are dampened",
    "amsgrad": "no AMSGrad variant in fastai",
    "maximize": "negate the loss instead",
    "foreach": "pyfastopt picks its path itself; see opt.impl",
    "fused": "set opt.fused (True or False) after construction",
    "capturable": "pyfastopt steps need no host sync on any device",
    "differentiable": "steps run under torch.no_grad()",
    "decoupled_weight_decay": "use decouple_wd",
    "centered": "no centered RMSProp in fastai",
    "lr_decay": "no Adagrad in fastai",
    "initial_accumulator_value": "no Adagrad in fastai",
    "momentum_decay": "no NAdam in fastai",
}


def chain_reads(cbs):
    "The hyper names the steppers `cbs` take by name (their signatures, the param excluded)."
    names = set()
    for cb in cbs:
        f = stepper_func(cb)
        try:
            params = list(inspect.signature(f).parameters.values())
        except (TypeError, ValueError):
            continue
        names.update(q.name for q in params[1:]
                      if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY))
    return names


def _pair(name, v):
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {v!r}")
    return tuple(v)


def translate(given, known, where, reads=None):
    """`given` (a dict of settings) with torch's names replaced by fastai's. `known`: the names
    that are hypers (or arguments) here, never translated; `reads`: the names a torch name may
    map onto (default `known`). Raises ValueError, naming the key, for a torch name that maps onto
    nothing read here, one given together with its fastai name, or one with no equivalent."""
    known = set(known)
    reads = known if reads is None else set(reads)
    out = {}
    for k, v in given.items():
        if k in known or (k not in TORCH_NAMES and k not in NO_EQUIVALENT):
            out[k] = v
            continue
        if k in NO_EQUIVALENT:
            raise ValueError(f"{where}: torch's setting '{k}' has no equivalent in pyfastopt "
                             f"({NO_EQUIVALENT[k]})")
        targets = TORCH_NAMES[k]
        missing = [t for t in targets if t not in reads]
        if missing:
            raise ValueError(
                f"{where}: torch's '{k}' stands for fastai's {' and '.join(targets)}, but this "
                f"optimizer's steppers do not read {' or '.join(missing)}, so '{k}' would be "
                f"ignored; its settings are {sorted(reads)}")
        values = _pair(k, v) if len(targets) == 2 else (v,)
        for t, x in zip(targets, values):
            if t in given:
                raise ValueError(f"{where}: both '{k}' and '{t}' given; give one of them "
                                 f"('{k}' is torch's name for fastai's '{t}')")
            out[t] = x
    return out


def accepts_torch_names(factory):
    "Let `factory` (a fastai factory) take torch's names for its own arguments (`translate`)."
    sig = inspect.signature(factory)
    names = [n for n in sig.parameters if n != "params"]

    def wrapper(*args, **kwargs):
        if any(k in TORCH_NAMES or k in NO_EQUIVALENT for k in kwargs):
            try:
                positional = set(sig.bind_partial(*args).arguments)
            except TypeError:
                positional = set()
            kw = translate({**{n: None for n in positional}, **kwargs}, names,
                           f"{factory.__name__}()")
            kwargs = {k: v for k, v in kw.items() if k not in positional}
        return factory(*args, **kwargs)

    for attr in ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__"):
        setattr(wrapper, attr, getattr(factory, attr))
    wrapper.__wrapped__ = factory
    wrapper.__signature__ = sig
    return wrapper


# ---- views: torch names read and written through a group's fastai hypers ---------------------
def views(reads):
    "The torch names whose fastai hypers are all read by the chain (a tuple, in a fixed order)."
    return tuple(k for k, ts in TORCH_NAMES.items() if all(t in reads for t in ts))


def view_get(hyper, name, available):
    "The value of torch name `name` as a view of `hyper`, or KeyError."
    if name not in available:
        raise KeyError(name)
    targets = TORCH_NAMES[name]
    try:
        vals = tuple(hyper[t] for t in targets)
    except KeyError:
        raise KeyError(name) from None
    return vals if len(vals) == 2 else vals[0]


def view_set(hyper, name, value, where="param group"):
    "Write torch name `name` into `hyper`'s fastai keys (`betas` keeps any items past the 2nd out)."
    targets = TORCH_NAMES[name]
    if len(targets) == 2:
        value = _pair(name, value)
    else:
        value = (value,)
    for t, x in zip(targets, value):
        hyper[t] = x


class TorchDefaults(dict):
    """An optimizer's `defaults`: a plain dict of fastai's hypers that also answers the torch
    names it has views for (`'betas' in opt.defaults`, `opt.defaults['betas']`), which is what
    torch's schedulers check. Iterating, `len` and `==` see only the real keys."""

    def __init__(self, d=(), available=()):
        super().__init__(d)
        self.available = tuple(available)

    def __contains__(self, k):
        return dict.__contains__(self, k) or (k in self.available and self._has(k))

    def _has(self, k):
        return all(dict.__contains__(self, t) for t in TORCH_NAMES[k])

    def __getitem__(self, k):
        if not dict.__contains__(self, k) and k in self.available:
            return view_get(self, k, self.available)
        return dict.__getitem__(self, k)

    def get(self, k, default=None):
        try:
            return self[k]
        except KeyError:
            return default

    def __reduce__(self):
        return (TorchDefaults, (dict(self), self.available))

    def __copy__(self):
        return TorchDefaults(dict(self), self.available)

    def __deepcopy__(self, memo):
        import copy
        return TorchDefaults(copy.deepcopy(dict(self), memo), self.available)


# ---- named parameters --------------------------------------------------------------------------
def _is_named(x):
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)


def split_named(items, where="params"):
    """(tensors, names or None) of a list of params that may be `(name, tensor)` pairs, as torch
    accepts them; all named or none (torch's rule)."""
    items = list(items)
    named = [_is_named(x) for x in items]
    if not any(named):
        return items, None
    if not all(named):
        raise ValueError(f"{where}: all params must be given with names ((name, tensor) pairs, as "
                         "from named_parameters()) or all without; some names are missing")
    return [x[1] for x in items], [x[0] for x in items]


def is_named_list(items):
    "Whether `items` (a list) is a list of `(name, tensor)` pairs."
    return len(items) > 0 and _is_named(items[0])
