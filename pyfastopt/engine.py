"""The bucket engine: how `Optimizer.step()` runs a chain of `@multi_tensor` steppers on whole
buckets of params, and the state cache that goes with it.

A *plan* groups the params with a grad into buckets (same group, device, dtype, scalar state and
`backend.choose_path` answer) and gives each its kernel: a native C call (`native.py`), a torch
fused kernel (`kernels.py`), or none (the steppers run on `TensorList`s, `torch._foreach_*`). The
plan is built once and reused while the params, the groups, the steppers and the knobs are
unchanged (`matches`, an O(params) identity check). New grad tensors alone
(`zero_grad(set_to_none=True)`) do not rebuild it: when each param that had a grad has one of
the same type, dtype and contiguity (torch's `.grad` setter already keeps shape and device), the
buckets are re-pointed at them (`regrad`).

The buckets hold the state while steps run (as TensorLists, or flat buffers); the params' state
dicts (`opt._state`) are brought up to date from them only when someone may look (`sync`). A
reader of `opt.state` may also edit it: `sync(watch=True)` remembers what the dicts held, and the
next step rebuilds the plan if anything was changed. Every other change goes through
`invalidate()`: bring the dicts up to date, drop the plan.
"""
import operator
import itertools
from itertools import compress, repeat

import torch

from . import half as _half, kernels, native
from .backend import (CHAIN, FUSED, NATIVE, ChainFacts, Knobs, ParamFacts, choose_path)
from .flat import MUTATES_GRAD, FlatBucketData, flat_safe
from .recipe import recipe_for, stepper_func
from .shards import LocalShards
from .tensor_list import ParamBatch, TensorList
from .validation import check_grads

__all__ = ["Engine", "Plan", "Bucket", "FLAT_MIN_PARAMS", "LIST_MAX_TOTAL", "FLAT_MAX_TOTAL"]

FLAT_MIN_PARAMS = 8         # a flat bucket needs at least this many params of one kind
LIST_MAX_TOTAL = 1 << 20    # elements per bucket of a chain run without a kernel (temporaries)
FLAT_MAX_TOTAL = 1 << 18    # elements per flat buffer: bounds scratch memory, keeps temporaries in cache

_MISSING = object()


class Plan:
    "The buckets of one step, and the params, grads, steppers and knobs they were built from."
    __slots__ = ("params", "grads", "gmeta", "gptrs", "regrad", "buckets", "cbs", "fused",
                 "flatten", "threads", "native", "stepped", "written")

    def __init__(self, cbs, fused, flatten, threads, native_on):
        self.params, self.grads, self.buckets, self.cbs = [], [], [], list(cbs)
        self.gmeta = None           # what the buckets' choices read of the grads (`grad_meta`)
        self.gptrs = None           # the grads' data pointers at the last full check
        self.regrad = False         # this step's grads were just re-pointed (`regrad`)
        self.fused, self.flatten, self.threads, self.native = fused, flatten, threads, native_on
        self.stepped = False        # the buckets hold state newer than the params' dicts
        self.written = None         # what `state` readers were shown: (param, dict, items)


class Bucket:
    """Params of one group that share device, dtype, scalar state and path, stepped together.

    `state` holds, per key, either a TensorList (one value per param) or one value for all.
    `kernel` is the chain kernel that steps it, if any; `kernel_state` its scratch (e.g. the
    step tensor the fused kernels read), never part of the params' state."""
    __slots__ = ("group", "params", "batch", "state", "kernel", "kernel_state", "flat", "half",
                 "index", "shards")

    def __init__(self, group, params, states, flat=False, grads_back=False, views_only=True,
                 upcast=False):
        self.group, self.params = group, params
        self.index = None           # the params' positions in the group, None if all of it
        self.kernel, self.kernel_state, self.flat, self.half = None, {}, None, None
        self.shards = None          # DTensor params: how a step runs on their shards (shards.py)
        if upcast:                      # half params: the chain runs on float32 shadows (half.py)
            for st in states:
                _half.upcast_state(st)
            self.half = _half.Shadows(params, grads_back)
            self.batch = ParamBatch(self.half.p32, self.half.g32)
            first = states[0]
            self.state = {k: (TensorList(s[k] for s in states) if isinstance(v, torch.Tensor)
                              else v) for k, v in first.items()}
            self.shards = LocalShards.of(self.half.p32, states)     # DTensor shadows
            return
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
        self.shards = LocalShards.of(params, states)

    @property
    def backend(self):
        return self.kernel.backend if self.kernel is not None else CHAIN

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


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def param_facts(p):
    "What `backend.choose_path` needs to know of param `p` (which has a grad)."
    g = p.grad
    plain = type(p) in _PLAIN and type(p.data) is torch.Tensor and type(g) is torch.Tensor
    grad_like = g.shape == p.shape and g.dtype == p.dtype
    dense = plain and native.param_ok(p)
    return ParamFacts(p.device.type, p.dtype, p.numel(), plain, grad_like, dense)


_get_grad = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr


def grad_ptrs(grads):
    "The data pointers of the grads (per group lists, None skipped), or None for a sparse one."
    flat = list(itertools.chain.from_iterable(grads))
    try:
        return list(map(_data_ptr, compress(flat, map(operator.is_not, flat, repeat(None)))))
    except (RuntimeError, NotImplementedError):
        return None


def kept_grad_moved(old_grads, old_ptrs, new_grads, new_ptrs):
    """Has a grad that is still the same tensor as at the last check (not one set anew through
    torch's checked `.grad` setter) got another storage (`p.grad.data = ...`)? C-level passes; True
    where pointers are missing (a sparse grad: the full check reports it)."""
    if old_ptrs is None or new_ptrs is None:
        return True
    old = list(compress(*_present(old_grads)))
    new = list(compress(*_present(new_grads)))
    if len(old) != len(old_ptrs) or len(new) != len(new_ptrs) or len(old) != len(new):
        return True
    return any(map(operator.and_, map(operator.is_, old, new), map(operator.ne, old_ptrs, new_ptrs)))


def _present(grads):
    flat = list(itertools.chain.from_iterable(grads))
    return flat, map(operator.is_not, flat, repeat(None))


_get_dtype = operator.attrgetter("dtype")
_NoneType = type(None)


def grad_meta(grads):
    """What a plan's choices read of the grads besides what torch's `.grad` setter keeps equal to
    the param's (shape, device): per group, the grads' types (None included), and the dtypes and
    contiguity of those not None. C-level passes, no Python call per grad. Raises for a layout
    without strides (a sparse grad)."""
    out = []
    for gs in grads:
        types = list(map(type, gs))
        there = list(compress(gs, map(operator.is_not, gs, repeat(None)))) \
            if _NoneType in types else gs
        out.append((types, list(map(_get_dtype, there)),
                    list(map(torch.Tensor.is_contiguous, there))))
    return out


class Engine:
    "The plan and state cache of one `Optimizer` (see the module docstring)."

    def __init__(self, opt):
        self.opt = opt
        self.plan = None

    # ---- the state cache -----------------------------------------------------------------------
    def invalidate(self):
        "Bring the params' state dicts up to date with the buckets, then drop the plan."
        self.sync()
        self.plan = None

    def forget(self):
        "Drop the plan without writing its state back (the dicts were replaced wholesale)."
        self.plan = None

    def sync(self, watch=False):
        """Write the buckets' state into each param's state dict, if a step changed it since.
        With `watch` (the caller may edit the dicts), remember what they hold, so that the next
        step can tell whether anything was changed (`_state_unchanged`)."""
        plan = self.plan
        if plan is None:
            return
        st = self.opt._state
        if plan.stepped:
            for b in plan.buckets:
                b.write_back(st)
            plan.stepped = False
        if watch and plan.written is None:
            plan.written = [(p, d, list(d.items()))
                            for b in plan.buckets for p in b.params for d in (st[p],)]

    def _state_unchanged(self):
        "Do the watched state dicts still hold exactly the objects written into them?"
        get = self.opt._state.get
        for p, d, items in self.plan.written:
            if get(p) is not d or len(d) != len(items):
                return False
            for k, v in items:
                if d.get(k, _MISSING) is not v:
                    return False
        return True

    def release_grads(self):
        """The grads are being set to None (`zero_grad(set_to_none=True)`): let go of them now, as
        torch's optimizers hold none, so that they are freed here rather than kept alive until
        the next step re-points the buckets (`regrad`). Flat buckets are left alone."""
        plan = self.plan
        if plan is None or plan.grads is None \
                or any(b.flat is not None or b.half is not None for b in plan.buckets):
            return
        plan.grads = None
        for b in plan.buckets:
            b.batch.grad = None

    # ---- a step --------------------------------------------------------------------------------
    def step(self):
        opt = self.opt
        plan = self.plan
        if plan is not None and plan.written is not None:
            if self._state_unchanged():
                plan.written = None
            else:                       # edited since read: the dicts are the truth, rebuild
                plan = self.plan = None
        if plan is None or not self.matches():
            self.invalidate()
            plan = self.plan = self.build()
        else:
            self._check_grad_storage(plan)
        plan.stepped = True
        cbs, hypers = opt.cbs, opt.hypers
        for b in plan.buckets:
            hyper = hypers[b.group]
            batch, state, kernel, flat = b.batch, b.state, b.kernel, b.flat
            if flat is not None:
                flat.gather()
            elif b.half is not None:
                b.half.gather()
            if kernel is None or not kernel(b, {**state, **hyper}):
                local = b.shards.enter(batch, state) if b.shards is not None else None
                if local is not None:
                    batch, state = local
                for cb in cbs:
                    res = cb(batch, **{**state, **hyper})
                    if isinstance(res, dict):
                        state.update(res)
                if local is not None:
                    b.shards.leave(state, b.state, b.params)
            if flat is not None:
                flat.scatter()
            elif b.half is not None:
                b.half.scatter()

    def _check_grad_storage(self, plan):
        """The grads the plan steps are the same tensors as at its build (or were re-pointed), but
        one may have got another storage (`p.grad.data = ...`, of any shape): one data-pointer
        pass, and the full check (`check_grads`, which raises) when a pointer moved, before
        anything moves. A sparse grad has no data pointer: the full check reports it."""
        if plan.regrad:                 # new grads, re-pointed and their storage taken this step
            plan.regrad = False
            return
        ptrs = grad_ptrs(plan.grads)
        if ptrs is None or ptrs != plan.gptrs:
            check_grads(self.opt.param_lists)
            plan.gptrs = ptrs

    def matches(self):
        """Do the params, their grads, the groups, the steppers and the knobs still match what the
        plan was built from? O(params) identity checks, a few C-level passes (no Python loop per
        param)."""
        opt, plan = self.opt, self.plan
        lists = opt.param_lists
        if len(lists) != len(plan.params) or plan.fused != opt._fused \
                or plan.flatten != opt._flatten or plan.native != native.enabled() \
                or (plan.threads is not None and plan.threads != torch.get_num_threads()):
            return False
        cbs = opt.cbs.items if hasattr(opt.cbs, "items") else list(opt.cbs)
        if len(cbs) != len(plan.cbs) or not all(map(operator.is_, cbs, plan.cbs)):
            return False
        is_ = operator.is_
        new_grads, same = [], plan.grads is not None
        for gi, (pl, params) in enumerate(zip(lists, plan.params)):
            items = pl.items
            if len(items) != len(params) or not all(map(is_, items, params)):
                return False
            gs = list(map(_get_grad, items))
            new_grads.append(gs)
            same = same and all(map(is_, gs, plan.grads[gi]))
        if not same and not self.regrad(new_grads):
            return False
        return all(b.flat.still_valid() for b in plan.buckets if b.flat is not None)

    def regrad(self, new_grads):
        """The params are those of the plan, some of their grads are new tensors: re-point the
        buckets at them if every choice the plan made still holds (the same params have grads,
        of the same type, dtype and contiguity), else False (rebuild). No flat bucket: its grads were
        views of one buffer, which new tensors are not."""
        plan = self.plan
        if any(b.flat is not None or b.half is not None for b in plan.buckets):
            return False                # half buckets step float32 copies of the grads
        try:
            meta = grad_meta(new_grads)
        except (RuntimeError, NotImplementedError):     # e.g. a sparse grad: the build reports it
            return False
        if meta != plan.gmeta:
            return False
        ptrs = grad_ptrs(new_grads)
        if plan.grads is not None and kept_grad_moved(plan.grads, plan.gptrs, new_grads, ptrs):
            check_grads(self.opt.param_lists)       # raises, before anything moves
        for b in plan.buckets:
            gs = new_grads[b.group]
            b.batch.grad = TensorList(gs if b.index is None else map(gs.__getitem__, b.index))
            regrad = getattr(b.kernel, "regrad", None)
            if regrad is not None and not regrad(b):
                return False
        # new grad tensors got torch's checks when set (`p.grad = g` refuses another shape, dtype
        # or device; autograd makes grads like their params) and the plan's (meta); kept ones
        # were checked above if their storage moved: the storage is `_check_grad_storage`'s
        # baseline
        plan.grads, plan.gmeta, plan.gptrs = new_grads, meta, ptrs
        plan.regrad = True
        return True

    def build(self, for_flatten=False):
        """Buckets of params of one group, device, dtype, scalar state and path
        (`backend.choose_path`). Flat buckets (`flat.py`) are used only over params and grads
        that already are views of one buffer (after `flatten_params()`), so a step keeps no
        scratch copies; `for_flatten` builds them with scratch, for `flatten_params()` to gather
        into (and without native kernels, which never take flat buckets)."""
        opt = self.opt
        check_grads(opt.param_lists)
        cbs = list(opt.cbs)
        match = recipe_for(cbs)
        native_on = native.enabled()
        use_native = native_on and not for_flatten and match is not None \
            and match.recipe.native is not None and opt._fused and native.load() is not None
        native_kernel = native.kernel_for(match) if use_native else None
        fused_kernel = kernels.kernel_for(match) if opt._fused else None
        funcs = [stepper_func(cb) for cb in cbs]
        chain = ChainFacts(native=native_kernel is not None, fused=fused_kernel is not None,
                           flat_safe=flat_safe(funcs), fused_dtypes=kernels.FUSED_DTYPES)
        # the thread count matters only where a param could go either to a native kernel or to
        # torch's (multi-threaded) fused one; the plan is rebuilt when it changes
        threads = torch.get_num_threads() if chain.native and chain.fused else None
        knobs = Knobs(kernels=opt._fused, flatten=opt._flatten, native=native_kernel is not None,
                      threads=threads or 1)
        plan = Plan(cbs, opt._fused, opt._flatten, threads, native_on)
        grads_back = any(f in MUTATES_GRAD for f in funcs)
        kernel_of = {NATIVE: native_kernel, FUSED: fused_kernel, CHAIN: None}
        states = opt._state
        for gi, pl in enumerate(opt.param_lists):
            items = list(pl.items)
            plan.params.append(items)
            plan.grads.append([getattr(p, "grad", None) for p in items])
            buckets = {}
            for p in items:
                if p.grad is None:
                    continue
                path = choose_path(param_facts(p), chain, knobs)
                if path.upcast:
                    _half.upcast_state(states[p])
                key = (p.device, p.dtype, _signature(states[p]), path.kernel, path.flat,
                       path.upcast)
                buckets.setdefault(key, []).append(p)
            pos = None
            for key, ps in buckets.items():
                kind, small, upcast = key[-3], key[-2], key[-1]
                kernel = kernel_of[kind]
                # a kernel has no list-sized temporaries; the chain's are bounded by chunking
                parts = _chunks(ps, FLAT_MAX_TOTAL) if small else \
                    [ps] if kernel is not None else _chunks(ps, LIST_MAX_TOTAL)
                for part in parts:
                    b = Bucket(gi, part, [states[p] for p in part],
                               flat=small and len(part) >= FLAT_MIN_PARAMS,
                               grads_back=grads_back, views_only=not for_flatten,
                               upcast=upcast)
                    if kernel is not None and kernel.usable(b):
                        b.kernel = kernel
                    if len(part) != len(items):
                        if pos is None:
                            pos = {id(p): i for i, p in enumerate(items)}
                        b.index = [pos[id(p)] for p in part]
                    plan.buckets.append(b)
        plan.gmeta = grad_meta(plan.grads)
        plan.gptrs = grad_ptrs(plan.grads)         # checked at the top of this build
        return plan

    @torch.no_grad()
    def flatten_params(self):
        "See `Optimizer.flatten_params`."
        self.invalidate()
        plan = self.build(for_flatten=True)
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
        self.plan = plan
        self.invalidate()                # rebuilt on the next step, over the views
        return moved
