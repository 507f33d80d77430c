"""Recipes: everything pyfastopt knows about one built-in optimizer family, declared in one place.

The steppers (`steppers.py`) are the reference math and fastai's public API; any chain of them
runs, per param or on whole buckets. A *recipe* says which chains form a family (`Chain`s of
`Step` patterns) and how the faster implementations of those same chains are driven:

- `native`: a `NativeSpec` — the C function of `csrc/pyfastopt_kernels.c`, the ctypes struct of
  its hypers (mirrored from `csrc/pyfastopt_kernels.h`) and `fill(h, options, hv, step)`, which
  packs the group's hypers into it the way the steppers combine them;
- `fused`: a `FusedSpec` — a whole-bucket call of torch's fused kernels (`kernels.py`);
- `flat_safe`: whether the chain may step many small params as one flat tensor (`flat.py`).

Each family's recipe lives beside its factory in `pyfastopt/optimizers/<family>.py`, read top to
bottom; `recipe_for(cbs)` is the one data-driven lookup from a stepper chain to its recipe.
"""
import inspect
import math
from functools import partial

from . import steppers as S

__all__ = ["Step", "Opt", "Chain", "Recipe", "NativeSpec", "FusedSpec", "Match", "register",
           "recipe_for", "recipes", "plain_number", "chain_hypers", "chain_step", "kernel_inputs",
           "DECAY_STEPPERS", "stepper_func"]

# Every built-in chain starts with one of these: true weight decay, or L2 regularization.
DECAY_STEPPERS = {S.weight_decay: True, S.l2_reg: False}     # stepper -> decoupled


def plain_number(x):
    "A hyper a kernel can take: a finite Python float or int (not a bool, tensor or numpy type)."
    return type(x) in (float, int) and math.isfinite(x)


def chain_hypers(kw, needs):
    "The hypers `needs` from `{**state, **hyper}`, or None unless each is a plain number."
    try:
        hv = {k: kw[k] for k in needs}
    except KeyError:
        return None
    return hv if all(map(plain_number, hv.values())) else None


def chain_step(kw):
    "The step count after this step (state `step` + 1), or None if the state's is not an int."
    step = kw.get("step", 0)
    return step + 1 if type(step) is int else None


def kernel_inputs(kw, needs, counts_steps):
    """What a kernel reads from `{**state, **hyper}`: (hypers, step after this one — None unless
    it counts steps), or None when it cannot run this step (then the chain runs)."""
    hv = chain_hypers(kw, needs)
    if hv is None:
        return None
    if not counts_steps:
        return hv, None
    step = chain_step(kw)
    return None if step is None else (hv, step)


class Opt:
    "A pattern's placeholder for a True/False keyword that selects a variant (e.g. Larc's `clip`)."
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Opt({self.name!r})"


def _default(func, key):
    p = inspect.signature(func).parameters.get(key)
    return inspect.Parameter.empty if p is None else p.default


class Step:
    """One stepper of a chain pattern: the function, and the value of each keyword it may be
    given with `partial` (defaults count as given). Any other keyword does not match: a hyper
    frozen into a partial is not something a kernel reads."""
    __slots__ = ("func", "kw")

    def __init__(self, func, **kw):
        self.func, self.kw = func, kw

    def match(self, func, kw, options):
        if func is not self.func or not set(kw) <= set(self.kw):
            return False
        for k, want in self.kw.items():
            v = kw.get(k, _default(func, k))
            if isinstance(want, Opt):
                if v not in (True, False):
                    return False
                options[want.name] = bool(v)
            elif v != want:
                return False
        return True

    def __repr__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kw.items())
        return f"Step({self.func.__name__}{', ' + kw if kw else ''})"


class Chain:
    "The steppers after the decay stepper, and the options this variant fixes (e.g. mom=True)."
    __slots__ = ("steps", "options")

    def __init__(self, *steps, **options):
        self.steps, self.options = steps, options

    def match(self, norm):
        if len(norm) != len(self.steps):
            return None
        options = dict(self.options)
        for step, (func, kw) in zip(self.steps, norm):
            if not step.match(func, kw, options):
                return None
        return options


def _by_options(x, options):
    return x(options) if callable(x) else x


class NativeSpec:
    """How a chain runs as one C call per bucket (`native.py`).

    fn: the C function's stem (`pfo_<fn>_f32` / `_f64`); hypers: its ctypes struct (first field
    `decay`, filled by the runner); needs: the hypers it reads, each a plain number or the chain
    runs instead; state: the per-param state tensors it updates; counts_steps: it also does
    `step_stat`; fill(h, options, hv, step) -> C flags, or None to let the chain run this step;
    local_lr: Larc's per-param learning rates come back from C. `needs` and `state` may be
    functions of the variant's options."""

    def __init__(self, fn, hypers, needs, fill, state=(), counts_steps=False, local_lr=False):
        self.fn, self.hypers, self.fill = fn, hypers, fill
        self._needs, self._state = needs, state
        self.counts_steps, self.local_lr = counts_steps, local_lr

    def needs(self, options):
        return tuple(_by_options(self._needs, options))

    def state(self, options):
        return tuple(_by_options(self._state, options))


class FusedSpec:
    """How a chain runs with torch's fused kernels (`kernels.py`): run(kernel, bucket, hv, step,
    do_wd) -> False to let the chain run instead; applies(options): whether the variant has a
    fused kernel at all; needs and counts_steps as in NativeSpec."""

    def __init__(self, run, needs, counts_steps=False, applies=None):
        self.run, self._needs, self.counts_steps = run, needs, counts_steps
        self.applies = applies or (lambda options: True)

    def needs(self, options):
        return tuple(_by_options(self._needs, options))


class Recipe:
    "One optimizer family: its chains and the fast implementations of them (module docstring)."

    def __init__(self, name, chains, native=None, fused=None, flat_safe=True):
        self.name, self.chains = name, tuple(chains)
        self.native, self.fused, self.flat_safe = native, fused, flat_safe

    def steppers(self):
        return {s.func for c in self.chains for s in c.steps}

    def __repr__(self):
        return f"Recipe({self.name!r})"


class Match:
    "A chain recognised: its recipe, whether its decay is decoupled, and the variant's options."
    __slots__ = ("recipe", "decoupled", "options")

    def __init__(self, recipe, decoupled, options):
        self.recipe, self.decoupled, self.options = recipe, decoupled, options

    def __repr__(self):
        decay = "weight_decay" if self.decoupled else "l2_reg"
        return f"Match({self.recipe.name}, {decay}, {self.options})"


_RECIPES = []


def register(recipe):
    "Add a family's recipe (done once, when its module is imported). Returns it."
    if any(r.name == recipe.name for r in _RECIPES):
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _RECIPES.append(recipe)
    return recipe


def recipes():
    "The registered recipes, in registration order."
    return list(_RECIPES)


def stepper_func(cb):
    "The function under a stepper's partials."
    while isinstance(cb, partial):
        cb = cb.func
    return cb


def _unwrap(cb):
    "(function, keywords) of a stepper or nested partial, or None with positional partial args."
    kw, layers = {}, []
    while isinstance(cb, partial):
        if cb.args:
            return None
        layers.append(cb.keywords)
        cb = cb.func
    for k in reversed(layers):           # outer partials override inner ones
        kw.update(k)
    return cb, kw


def recipe_for(cbs):
    "The `Match` of stepper chain `cbs` (decay stepper first, then a recipe's chain), or None."
    norm = [_unwrap(cb) for cb in cbs]
    if len(norm) < 2 or any(n is None for n in norm):
        return None
    (first, first_kw), rest = norm[0], norm[1:]
    decoupled = DECAY_STEPPERS.get(first)
    if decoupled is None or first_kw:
        return None
    for recipe in _RECIPES:
        for chain in recipe.chains:
            options = chain.match(rest)
            if options is not None:
                return Match(recipe, decoupled, options)
    return None


def flat_safe_steppers():
    "Steppers whose TensorList code is flat-safe: the decay steppers and those of flat-safe recipes."
    out = set(DECAY_STEPPERS)
    for r in _RECIPES:
        if r.flat_safe:
            out |= r.steppers()
    return out
