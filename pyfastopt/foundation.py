"""The small collection and tensor helpers fastai's optimizers lean on: fastcore's `L` list, its
`listify`/`merge`/`even_mults` helpers, fastai's `tensor` and the test helper `tst_param`.

Semantics follow fastcore 2.2.41 and fastai 2.8.12 (spec §5); this is our own implementation.
"""
import itertools
import math
import numbers
import operator
import random
from collections.abc import Iterable, Mapping, Sequence
from functools import reduce

import torch

__all__ = ["L", "listify", "is_listy", "merge", "even_mults", "range_of", "tensor", "tst_param"]


def _is_array_like(o):
    return hasattr(o, "__array__") or hasattr(o, "iloc")


def is_listy(x):
    "True for the sequences fastcore spreads: tuple, list, L, slice, generator, set, frozenset."
    return isinstance(x, (tuple, list, L, slice, set, frozenset)) or _is_generator(x)


def _is_generator(x):
    import types
    return isinstance(x, types.GeneratorType)


def listify(o=None, *rest, use_list=False, match=None):
    "Turn `o` into a list, following fastcore's rules (a str, a mapping or an array is one item)."
    if rest:
        o = (o,) + rest
    if use_list:
        res = list(o)
    elif o is None:
        res = []
    elif isinstance(o, list):
        res = o
    elif isinstance(o, (str, bytes, Mapping)) or _is_array_like(o):
        res = [o]
    elif isinstance(o, Iterable):
        res = list(o)
    else:
        res = [o]
    if match is not None:
        if _is_generator(match):
            match = list(match)
        n = match if isinstance(match, int) else len(match)
        if len(res) == 1:
            res = res * n
        elif len(res) != n:
            raise ValueError(f"Match length mismatch: expected {n}, got {len(res)}")
    return res


def merge(*ds):
    "Merge dicts left to right; a later value wins but keeps the key's first position. None is skipped."
    return {k: v for d in ds if d is not None for k, v in d.items()}


def range_of(x):
    "All indices of collection `x`."
    return list(range(len(x)))


def even_mults(start, stop, n):
    "`n` values from `start` to `stop`, evenly spaced on a log scale (just `stop` when n == 1)."
    if n == 1:
        return stop
    mult = stop / start
    step = mult ** (1 / (n - 1))
    return [start * (step ** i) for i in range(n)]


def _is_index(o):
    "An int, or a 0-d integer-like object (np.int64(1), tensor(1))."
    if isinstance(o, bool):
        return False
    if isinstance(o, numbers.Integral):
        return True
    return getattr(o, "ndim", 1) == 0 and hasattr(o, "__index__")


def _mask_to_indices(mask):
    first = next(iter(mask), None)
    if isinstance(first, (bool,)) or type(first).__name__ in ("bool_", "bool"):
        return [i for i, m in enumerate(mask) if m]
    return list(mask)


class _LMeta(type):
    "`L(x)` with an existing L and nothing else returns that same L."

    def __call__(cls, x=None, *args, **kwargs):
        if not args and not kwargs and x is not None and isinstance(x, cls):
            return x
        return super().__call__(x, *args, **kwargs)


class L(metaclass=_LMeta):
    """fastcore's `L`: a list with int/slice/list/mask indexing, `map`, `filter`, `itemgot`, ...

    `L(items)` keeps a given list object (no copy), a str, mapping or array as one item, and
    consumes other iterables. Attributes it lacks are looked up on its `items` list.
    """

    def __init__(self, items=None, *rest, use_list=False, match=None):
        if (use_list is not None) or not _is_array_like(items):
            items = listify(items, *rest, use_list=use_list, match=match)
        object.__setattr__(self, "items", items)

    # ---- list protocol -------------------------------------------------------------------------
    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __contains__(self, b):
        return b in self.items

    def __reversed__(self):
        return self._new(reversed(self.items))

    def __getitem__(self, idx):
        if isinstance(idx, int) and not hasattr(self.items, "iloc"):
            return self.items[idx]
        if _is_index(idx):
            return self.items[int(idx)]
        if isinstance(idx, slice):
            return self._new(self.items[idx])
        if isinstance(idx, L):
            idx = idx.items
        if hasattr(self.items, "iloc"):
            return self._new(self.items.iloc[idx])
        idxs = _mask_to_indices(idx)
        return self._new([self.items[int(i)] for i in idxs])

    def __setitem__(self, idx, o):
        if isinstance(idx, (int, slice)) or _is_index(idx):
            if not isinstance(idx, slice):
                idx = int(idx)
            self.items[idx] = o
            return
        idx = idx if isinstance(idx, L) else listify(idx)
        if not is_listy(o) and not isinstance(o, L):
            o = [o] * len(idx)
        for i, v in zip(idx, o):
            self.items[int(i)] = v

    def __getattr__(self, k):
        if k.startswith("__") or k == "items":
            raise AttributeError(k)
        return getattr(self.items, k)

    def __setattr__(self, k, v):
        object.__setattr__(self, k, v)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(dir(self.items)))

    # ---- comparison and arithmetic -------------------------------------------------------------
    def __eq__(self, b):
        if b is None or isinstance(b, (str, dict)) or callable(b):
            return False
        if hasattr(b, "__array__") and not isinstance(b, torch.Tensor):
            import numpy as np
            return bool(np.array_equal(np.asarray(b), self.items))
        if not isinstance(b, Iterable):
            return False
        b = list(b)
        if len(b) != len(self.items):
            return False
        return all(_equals(x, y) for x, y in zip(self.items, b))

    __hash__ = None

    def __add__(self, b):
        return self._new(list(self.items) + listify(b))

    def __radd__(self, b):
        return self._new(listify(b) + list(self.items))

    def __mul__(self, n):
        return self._new(self.items * n)

    def __invert__(self):
        return self._new(not i for i in self)

    def __repr__(self):
        return repr(self.items)

    def _repr_pretty_(self, p, cycle):
        p.text("..." if cycle else _coll_repr(self))

    # ---- construction helpers ------------------------------------------------------------------
    def _new(self, items, *args, **kwargs):
        return type(self)(items, *args, use_list=None, **kwargs)

    def copy(self):
        return self._new(list(self.items))

    @classmethod
    def range(cls, a, b=None, step=None):
        "`L(range(...))`; a collection stands for its length."
        if not isinstance(a, numbers.Integral) and hasattr(a, "__len__"):
            a = len(a)
        args = (a,) if b is None else (a, b) if step is None else (a, b, step)
        return cls(range(*args))

    @classmethod
    def split(cls, s, sep=None, maxsplit=-1):
        return cls(s.split(sep, maxsplit))

    # ---- functional methods --------------------------------------------------------------------
    def map(self, f, *args, **kwargs):
        return self._new(_map_ex(self.items, f, *args, **kwargs))

    def filter(self, f=None, negate=False, **kwargs):
        f = f if f is not None else (lambda o: o)
        if kwargs:
            f0 = f
            f = lambda o: f0(o, **kwargs)  # noqa: E731
        keep = (lambda o: not f(o)) if negate else f
        return self._new([o for o in self.items if keep(o)])

    def argwhere(self, f, negate=False, **kwargs):
        f0 = f if not kwargs else (lambda o: f(o, **kwargs))
        return self._new([i for i, o in enumerate(self.items) if bool(f0(o)) != negate])

    def enumerate(self):
        return L(enumerate(self.items))

    def zip(self, cycled=False):
        if cycled:
            n = max(len(o) for o in self.items)
            return self._new(zip(*[itertools.islice(itertools.cycle(o), n) for o in self.items]))
        return self._new(zip(*self.items))

    def zipwith(self, *rest, cycled=False):
        return self._new([self.items, *rest]).zip(cycled=cycled)

    def concat(self):
        return self._new(itertools.chain.from_iterable(L(o) for o in self.items))

    def itemgot(self, *idxs):
        x = self
        for idx in idxs:
            x = x.map(operator.itemgetter(idx))
        return x

    def attrgot(self, k, default=None):
        def get(o):
            if isinstance(o, dict):
                return o.get(k, default)
            return reduce(lambda obj, name: getattr(obj, name, default), k.split("."), o)
        return self.map(get)

    def sorted(self, key=None, reverse=False):
        if isinstance(key, str):
            k = lambda o: getattr(o, key, 0)  # noqa: E731
        elif isinstance(key, int):
            k = operator.itemgetter(key)
        else:
            k = key
        return self._new(sorted(self.items, key=k, reverse=reverse))

    def unique(self, sort=False, bidir=False, start=None):
        res = list(dict.fromkeys(self.items))
        return self._new(sorted(res) if sort else res)

    def first(self, f=None, negate=False, **kwargs):
        src = self.filter(f, negate=negate, **kwargs) if f is not None else self
        return next(iter(src), None)

    def reduce(self, f, initial=None):
        return reduce(f, self.items) if initial is None else reduce(f, self.items, initial)

    def sum(self):
        return self.reduce(operator.add, 0)

    def product(self):
        return self.reduce(operator.mul, 1)

    def shuffle(self):
        it = list(self.items)
        random.shuffle(it)
        return self._new(it)

    def map_dict(self, f=lambda o: o, *args, **kwargs):
        return {k: v for k, v in zip(self.items, self.map(f, *args, **kwargs))}

    def setattrs(self, attr, val):
        for o in self.items:
            setattr(o, attr, val)


Sequence.register(L)


def _equals(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
        except (TypeError, RuntimeError):
            return False
    if hasattr(a, "__array__") or hasattr(b, "__array__"):
        import numpy as np
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    if isinstance(a, (list, tuple, L)) and isinstance(b, (list, tuple, L)):
        return len(a) == len(b) and all(_equals(x, y) for x, y in zip(a, b))
    return a == b


def _map_ex(items, f, *args, **kwargs):
    if isinstance(f, str):
        g = f.format
    elif callable(f):
        g = f
    else:
        g = f.__getitem__
    if args or kwargs:
        g0 = g
        g = lambda o: g0(o, *args, **kwargs)  # noqa: E731
    return [g(o) for o in items]


def _coll_repr(c, max_n=250):
    n = len(c)
    body = ", ".join(map(repr, itertools.islice(c, max_n)))
    prefix = f"(#{n}) " if n >= max(7, max_n) else ""
    return f"{prefix}[{body}{'...' if n > max_n else ''}]"


# ---- tensors ----------------------------------------------------------------------------------
def tensor(x, *rest, **kwargs):
    """fastai's `tensor`: accepts a tensor, a number, a list (or varargs) or an array; float64
    becomes float32 (the R side hands us Python floats, which are float64 in numpy)."""
    if rest:
        x = (x,) + rest
    if x is None or isinstance(x, (str, bytes, Mapping, set, frozenset)):
        raise TypeError(f"tensor(): x must be a number, a list, an array or a tensor, got "
                        f"{type(x).__name__} {_short_repr(x)}")
    try:
        res = _tensor(x, kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise type(e)(f"tensor(): x must hold numbers of one shape; could not make a tensor "
                      f"of {type(x).__name__} {_short_repr(x)}: {e}") from e
    if res.dtype == torch.float64 and "dtype" not in kwargs:
        res = res.float()
    return res


def _named_tensor(name, x):
    "`tensor(x)`, its error naming argument `name` of the caller."
    try:
        return tensor(x)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        msg = str(e)
        head = "tensor(): x "
        msg = f"{name} {msg[len(head):]}" if msg.startswith(head) else f"{name}: {msg}"
        raise type(e)(msg) from e


def _short_repr(x, n=60):
    r = repr(x)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} characters)"


def _tensor(x, kwargs):
    if isinstance(x, torch.Tensor):
        res = x
    elif isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        res = torch.stack([torch.as_tensor(o) for o in x])
    elif isinstance(x, (list, tuple)):
        res = torch.tensor(list(x), **kwargs)
    elif hasattr(x, "__array__") and not isinstance(x, numbers.Number):
        import numpy as np
        res = torch.from_numpy(np.ascontiguousarray(x)) if not kwargs else torch.tensor(x, **kwargs)
    else:
        res = torch.tensor(x, **kwargs)
    return res


def tst_param(val, grad=None):
    """A float32 test parameter shaped like `val` (a number gives a 0-d tensor) whose `.grad` is
    `grad`, or `val / 10` when no grad is given. This is the helper of fastai's R optimizer page."""
    res = _named_tensor("val", val).float()
    grad = res / 10 if grad is None else _named_tensor("grad", grad).float()
    if grad.shape != res.shape:
        raise ValueError(f"tst_param: grad must have val's shape {tuple(res.shape)}, got shape "
                         f"{tuple(grad.shape)}")
    res.grad = grad
    return res
