"""Helpers for the R package (r-pkg/, through reticulate). Nothing here is needed from Python.

- `r_stepper`: an R function as a stepper, named in its errors, optionally `multi_tensor`.
- `save_state` / `load_state`: an optimizer's state dict to and from a file, entirely in Python,
  so reticulate never converts it (its int keys and one-element lists would not survive).
- `route_warnings`: Python warnings handed to an R callback, which R re-raises as R warnings.
- `factory_defaults`: a factory's defaults, so R never restates them.
"""
import inspect
import warnings

import torch

__all__ = ["r_stepper", "save_state", "load_state", "route_warnings", "factory_defaults",
           "RStepperError"]


class RStepperError(RuntimeError):
    "An R stepper failed; the message names it."


def r_stepper(fn, name, multi_tensor=False, defaults=None, arg_names=None):
    """Wrap the R function `fn` (a reticulate callable) as a stepper called `name`.

    `multi_tensor`: the R code works on a whole bucket (`p.data`, `p.grad` and state are
    TensorLists), so the optimizer calls it once per bucket. `arg_names`: when the R function
    takes no `...`, only these keyword arguments are passed (the optimizer passes every hyper and
    state entry)."""
    keep = None if arg_names is None else frozenset(arg_names)

    def stepper(p, **kwargs):
        if keep is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in keep}
        try:
            return fn(p, **kwargs)
        except Exception as e:          # reticulate raises R errors as plain exceptions
            raise RStepperError(f"R stepper '{name}' failed: {e}") from None

    stepper.__name__ = stepper.__qualname__ = str(name)
    stepper.multi_tensor = bool(multi_tensor)
    if defaults:
        stepper.defaults = dict(defaults)
    return stepper


def save_state(opt, path):
    "Write `opt.state_dict()` to `path` with torch.save."
    torch.save(opt.state_dict(), path)


def load_state(opt, path):
    "Read a state dict written by `save_state` (tensors and plain values only) into `opt`."
    opt.load_state_dict(torch.load(path, weights_only=True))


def route_warnings(callback):
    """From now on, warnings Python would show go to `callback(message, category_name)` instead
    (R collects them and re-raises them after the call). Python's filters still decide which
    warnings are shown (e.g. once per place). `callback=None` restores Python's default."""
    if callback is None:
        warnings.showwarning = _python_showwarning
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        callback(str(message), category.__name__)

    warnings.showwarning = showwarning


_python_showwarning = warnings.showwarning


def factory_defaults(f):
    """The parameters of the Python callable `f`, in order, as dicts {name, has_default,
    default} (`**kwargs` and `*args` left out)."""
    out = []
    for p in inspect.signature(f).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        has = p.default is not inspect.Parameter.empty
        out.append({"name": p.name, "has_default": has, "default": p.default if has else None})
    return out


def state_entries(opt):
    """Each param's state entry, in group order, for R's `print(opt$state)`: a list of
    `{"group", "index", "entry"}` (0-based positions, as Python's errors give them), for the params
    that have state. Reads without adding entries (`opt.state[p]` would add an empty one)."""
    state = opt.state
    out = []
    for g, pl in enumerate(opt.param_lists):
        for i, p in enumerate(pl):
            if p in state and state[p]:
                out.append({"group": g, "index": i, "entry": dict(state[p])})
    return out
