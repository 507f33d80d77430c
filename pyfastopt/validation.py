"""Checks of user input that raise a clear error naming the argument, before anything changes."""
import math
import numbers

import torch

__all__ = ["check_hyper", "as_int", "HYPER_BOUNDS"]

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


def _describe(v):
    return repr(v) if not isinstance(v, torch.Tensor) else f"tensor {v.tolist()!r}"


def check_hyper(name, v, bounds=None):
    """Check one value of hyper-parameter `name` against `bounds` (low, high, high_inclusive),
    by default `HYPER_BOUNDS[name]`. Unknown names pass unchecked. Tensors are checked only on
    the CPU (reading a device tensor would be a host sync)."""
    bounds = bounds or HYPER_BOUNDS.get(name)
    if bounds is None:
        return
    low, high, high_incl = bounds
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(v.shape)}")
        if v.device.type != "cpu":
            return
        x = v.item()
    elif isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {_describe(v)}")
    else:
        x = float(v)
    rng = f">= {low:g}" if high == _INF else f"in [{low:g}, {high:g}{']' if high_incl else ')'}"
    ok = math.isfinite(x) and x >= low and (x <= high if high_incl else x < high)
    if not ok:
        kind = "a finite number" if high == _INF else "a number"
        raise ValueError(f"{name} must be {kind} {rng}, got {_describe(v)}")


def as_int(name, v):
    "An int from an int or an integral float (R hands us 1 where Python wants 1L)."
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
        return int(v.item())
    if isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.numel() == 1):
        x = float(v)
        if math.isfinite(x) and x == int(x):
            return int(x)
        raise ValueError(f"{name} must be an integer, got {v!r}")
    raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
