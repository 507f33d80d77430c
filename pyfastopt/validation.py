"""Checks of user input that raise a clear error naming the argument, before anything changes.

What is accepted where (the optimizer calls these; see also `Optimizer._check_step_inputs`):

- Hyper values (`check_hyper`, `as_hyper_value`): finite real numbers in each hyper's range.
  numpy scalars (np.float64, np.int64, ...), 0-d numpy arrays and the elements of a numpy array
  or tensor given as one value per group are stored as Python numbers, the type the native
  kernels take. A 0-d *tensor* is refused: torch keeps such an lr as a tensor that schedulers
  update in place (capturable/fused optimizers); storing its current value would silently drop
  that link, and keeping it would make every step read it back from the device.
- Hyper names (`check_hyper_name`): non-empty strings other than 'params' (R's NA arrives as a
  Python bool or float).
- Params (`check_params`): distinct floating point, non-complex tensors (fastai's steppers square
  grads as `g*g`, which is not |g|^2 for complex numbers).
- Grads (`check_grads`): dense, with their param's shape, dtype and device. The step repeats
  the check cheaply: the per-param path every step, the bucket engine when a grad's data pointer
  changed (a storage swapped in through `p.grad.data = ...`, grads added or replaced).
- Hypers written directly (`opt.hypers[i]['lr'] = nan`, `opt.param_groups[i]['lr'] = -1`):
  `HyperWatch` checks them at the next step, again only the groups that changed.
"""
import math
import numbers
import operator

import torch

__all__ = ["check_hyper", "as_int", "HYPER_BOUNDS", "describe", "check_hyper_name",
           "as_hyper_value", "check_params", "check_grads", "HyperWatch",
           "group_index", "freeze_index", "as_flag"]

_INF = math.inf
# hyper name -> (low, high, high_inclusive). Values must be finite real numbers in the range.
HYPER_BOUNDS = {
    "lr": (0.0, _INF, False),
    "mom": (0.0, 1.0, True),
    "sqr_mom": (0.0, 1.0, True),
    "eps": (0.0, _INF, False),
    "wd": (0.0, _INF, False),
    "beta": (0.0, _INF, False),
    "trust_coeff": (0.0, _INF, False),
    "nu_1": (0.0, 1.0, True),
    "nu_2": (0.0, 1.0, True),
}

_MAX_REPR = 60


def describe(v, with_type=False):
    """A short description of `v` for an error message: a repr cut to a few dozen characters,
    after its type unless it is a plain number (or `with_type`)."""
    if isinstance(v, torch.Tensor):
        if v.numel() <= 4 and v.device.type == "cpu":
            return f"tensor {v.tolist()!r}"
        return f"tensor of shape {tuple(v.shape)} ({v.dtype}, {v.device})"
    if v is None:
        return "None"
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"int of {len(str(abs(v)))} digits"     # repr would be as long as the number
    try:
        r = repr(v)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        r = "<unprintable>"
    if len(r) > _MAX_REPR:
        r = f"{r[:_MAX_REPR]}... ({len(r)} characters)"
    if type(v) in (int, float, bool) and not with_type:
        return r
    return f"{type(v).__name__} {r}"


def _is_numpy(v):
    return type(v).__module__ == "numpy"


def _plain_number(v):
    """numpy scalars and 0-d numpy arrays as Python numbers (bool stays bool, to be refused);
    anything else unchanged."""
    if _is_numpy(v) and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return v.item()
    return v


def check_hyper_name(k):
    "A hyper name is a non-empty string; 'params' is the group's params, never a hyper."
    if not isinstance(k, str) or not k:
        raise TypeError(f"hyper name must be a non-empty string, got {describe(k)}")
    if k == "params":
        raise ValueError("'params' is not a hyper: set a group's params with "
                         "param_groups[i]['params'] = ... or add_param_group()")


def check_hyper(name, v, bounds=None):
    """Check one value of hyper-parameter `name` against `bounds` (low, high, high_inclusive),
    by default `HYPER_BOUNDS[name]`. Unknown names pass unchecked. Tensors are checked only on
    the CPU (reading a device tensor would be a host sync)."""
    bounds = bounds or HYPER_BOUNDS.get(name)
    if bounds is None:
        return
    low, high, high_incl = bounds
    v = _plain_number(v)
    rng = f">= {low:g}" if high == _INF else f"in [{low:g}, {high:g}{']' if high_incl else ')'}"
    kind = "a finite number" if high == _INF else "a number"
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(v.shape)}")
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a real number, got a {v.dtype} tensor")
        if v.device.type != "cpu":
            return
        x = v.item()
    elif isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {describe(v)}")
    else:
        try:
            x = float(v)
        except OverflowError:
            raise ValueError(f"{name} must be {kind} {rng}, got {describe(v)} "
                             "(too large for a float)") from None
    ok = math.isfinite(x) and x >= low and (x <= high if high_incl else x < high)
    if not ok:
        raise ValueError(f"{name} must be {kind} {rng}, got {describe(v)}")


def as_hyper_value(name, v, bounds=None, element=False):
    """`v` as hyper `name` stores it. Values of bounded hypers are checked (`check_hyper`) and
    stored as Python numbers: numpy scalars and, with `element` (one of the values spread over
    the groups), 0-d tensors become ints or floats; a tensor given as one group's value is
    refused (see the module docstring). Other hypers' values are kept, numpy scalars unwrapped."""
    v = _plain_number(v)
    bounds = bounds or HYPER_BOUNDS.get(name)
    if bounds is None:
        return v
    if isinstance(v, torch.Tensor):
        if not element or v.ndim != 0:
            raise TypeError(f"{name} got a {describe(v)}: pass a Python number, or a list with "
                            "one value per parameter group")
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a real number, got a {v.dtype} tensor")
        v = v.item()
    check_hyper(name, v, bounds)
    if not isinstance(v, (int, float)):
        v = int(v) if isinstance(v, numbers.Integral) else float(v)   # Fraction, ...
    return v


def as_int(name, v):
    "An int from an int or an integral float (R hands us 1 where Python wants 1L)."
    v = _plain_number(v)
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() \
            and v.dtype != torch.bool and not v.is_complex():
        return int(v.item())
    if isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.numel() == 1
                                       and v.is_floating_point()):
        x = float(v)
        if math.isfinite(x) and x == int(x):
            return int(x)
        raise ValueError(f"{name} must be an integer, got {describe(v)}")
    raise TypeError(f"{name} must be an integer, got {describe(v)}")


def as_flag(name, v):
    "True or False (also 0/1 and numpy's bools, as R and numpy hand them over)."
    v = _plain_number(v)
    if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {describe(v)}")


def group_index(n, n_groups, name="n"):
    "A param group index in [-G, G-1], as an int >= 0."
    i = as_int(name, n)
    if not -n_groups <= i < n_groups:
        raise IndexError(f"{name} must be a param group index in [{-n_groups}, {n_groups - 1}] "
                         f"(this optimizer has {n_groups} groups), got {i}")
    return i % n_groups


def freeze_index(n, n_groups, name="n"):
    """`freeze_to`'s `n`: an int >= -G (counting from the end). Larger than G is fastai's
    "freeze everything" (with its warning), so only the lower end is bounded."""
    i = as_int(name, n)
    if i < -n_groups:
        raise ValueError(f"{name} must be an integer >= {-n_groups} (minus the number of param "
                         f"groups, {n_groups}), got {i}")
    return i


# ---- params and grads -------------------------------------------------------------------------
def _where(i, j, flat=False):
    return f"param {j}, counting through all groups" if flat else f"param {j} of group {i}"


def check_params(param_lists):
    "Every param a distinct floating point (not complex) tensor; errors name group and index."
    seen = set()
    for i, pl in enumerate(param_lists):
        for j, p in enumerate(pl):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params must be tensors, got {describe(p, True)} ({_where(i, j)})")
            if not p.is_floating_point():
                hint = " (complex params are not supported: fastai's steppers square grads " \
                       "as g*g, not |g|^2)" if p.is_complex() else ""
                raise TypeError(f"params must be floating point tensors, got {p.dtype} "
                                f"({_where(i, j)}){hint}")
            if id(p) in seen:
                raise ValueError("params holds the same tensor more than once "
                                 f"(shape {tuple(p.shape)}, {_where(i, j)}): each param may "
                                 "appear only once")
            seen.add(id(p))


def check_grads(param_lists, flat=False):
    """Every grad dense, with its param's shape, dtype and device, its param floating point.
    Raises naming the param (group, index, shape; with `flat`, the params of one list numbered
    through all groups); changes nothing."""
    for i, pl in enumerate(param_lists):
        for j, p in enumerate(pl):
            g = getattr(p, "grad", None)
            if g is None:
                continue
            where = f"{_where(i, j, flat)}, shape {tuple(p.shape)}"
            if g.layout is not torch.strided:
                raise ValueError(f"sparse gradients are not supported ({where} has a {g.layout} "
                                 "grad); use a dense gradient")
            if not p.is_floating_point():
                raise TypeError(f"params must be floating point tensors, got {p.dtype} ({where})")
            if g.shape != p.shape:
                raise ValueError(f"grad of {where} has shape {tuple(g.shape)}: a grad must "
                                 "have its param's shape")
            if g.dtype != p.dtype:
                raise ValueError(f"grad of {where} has dtype {g.dtype}, the param {p.dtype}: "
                                 "a grad must have its param's dtype")
            if g.device != p.device:
                raise ValueError(f"grad of {where} is on {g.device}, the param on {p.device}: "
                                 "a grad must be on its param's device")


class HyperWatch:
    """The per-step hyper check: every group's hyper names are strings and its bounded values
    are in range (`check_hyper`), re-checked only for groups whose dict, keys or value objects
    changed since the last check (a tensor value is re-checked every step: it can change in place)."""
    __slots__ = ("seen",)

    def __init__(self):
        self.seen = None

    def __reduce__(self):                  # a copy or a pickle starts afresh
        return (type(self), ())

    def reset(self):
        self.seen = None

    def __call__(self, hypers, bounds_of):
        seen = self.seen
        new = []
        for i, h in enumerate(hypers):
            if seen is not None and i < len(seen) and seen[i] is not None:
                d, keys, vals = seen[i]
                if d is h and len(h) == len(keys) and tuple(h) == keys \
                        and all(map(operator.is_, h.values(), vals)):
                    new.append(seen[i])
                    continue
            if not isinstance(h, dict):
                raise TypeError(f"hypers[{i}] must be a dict, got {describe(h)}")
            volatile = False
            for k, v in h.items():
                if not isinstance(k, str) or not k:
                    raise TypeError(f"hyper names must be non-empty strings, got {describe(k)} "
                                    f"in hypers[{i}] (param group {i})")
                b = bounds_of(k)
                if b is None:
                    continue
                try:
                    check_hyper(k, v, b)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"{e} (hypers[{i}]['{k}'] of param group {i}, written "
                                  "directly; the step changed nothing)") from None
                volatile |= isinstance(v, torch.Tensor)
            new.append(None if volatile else (h, tuple(h), tuple(h.values())))
        self.seen = new
