"""Flat buckets: many small params stepped as one contiguous tensor.

With thousands of small tensors every `torch._foreach_*` op costs about a microsecond per tensor,
however little work it does. A flat bucket lays its params end to end: the state lives in one flat
buffer per key (each param's `opt.state[p][key]` is a view of it), and the stepper chain (or a
chain kernel) runs once on the flat tensors, so every op of the chain is one big vectorised op.

A step uses a flat bucket only over params and grads that already are consecutive views of one
buffer (`Optimizer.flatten_params()`, opt-in), so it keeps no scratch copies (`views_only`);
`flatten_params()` itself builds them with scratch once, to gather the values into the buffer.
On CPU the native list kernels (`native.py`) step such buckets without flattening at all.

The steppers' math is not rewritten: they run on a `FlatList` (a TensorList of one flat tensor,
that knows the params' segments). Elementwise ops are the same; the few per-param reductions
(`norm`, `rms`) return `SegValues` (one value per param, in one 1-D tensor), which broadcast back
over the segments when they meet a FlatList. Only chains made of the built-in steppers are
flattened (`flat_safe`, from the recipes): a user stepper might treat its TensorList per tensor.
"""
import operator

import torch

from . import steppers as S
from .tensor_list import ParamBatch, TensorList

__all__ = ["FlatList", "SegValues", "Segments", "flat_safe"]

MUTATES_GRAD = {S.l2_reg}


def flat_safe(funcs):
    "Are all these steppers flat-safe: the decay steppers and those of flat-safe recipes?"
    from .recipe import flat_safe_steppers
    safe = flat_safe_steppers()
    return all(f in safe for f in funcs)


class Segments:
    "Where each param lies in a flat buffer: lengths, offsets, shapes."
    __slots__ = ("lengths", "offsets", "shapes", "total", "n", "uniform", "lengths_t")

    def __init__(self, params):
        self.shapes = [p.shape for p in params]
        self.lengths = [p.numel() for p in params]
        self.n = len(params)
        offs, o = [], 0
        for n in self.lengths:
            offs.append(o)
            o += n
        self.offsets, self.total = offs, o
        self.uniform = self.lengths[0] if len(set(self.lengths)) == 1 else None
        self.lengths_t = torch.tensor(self.lengths, dtype=torch.int64, device=params[0].device)

    def views(self, flat):
        "Per-param views (param shapes) of a flat buffer."
        return [t.view(s) for t, s in zip(flat.split(self.lengths), self.shapes)]

    def reduce_sumsq(self, t):
        if self.uniform is not None:
            return t.view(self.n, self.uniform).pow(2).sum(dim=1)
        return torch.segment_reduce(t * t, "sum", lengths=self.lengths_t)

    def expand(self, v, like):
        "A per-param value vector spread over the segments (broadcast view when uniform)."
        if self.uniform is not None:
            return v.repeat_interleave(self.uniform, output_size=self.total)
        return v.repeat_interleave(self.lengths_t, output_size=self.total)


class SegValues(TensorList):
    "One value per param of a flat bucket, held as one 1-D tensor (a TensorList of it)."

    def __init__(self, t, seg, clip=None):
        super().__init__([t])
        self.seg, self.clip = seg, clip

    def _like(self, tensors):
        return SegValues(tensors[0], self.seg)

    def _op(self, name, other=None, **kw):
        if isinstance(other, FlatList):
            if name in ("mul", "add"):                  # commutative: let the flat side do it
                return other._op(name, self, **kw)
            raise TypeError(f"{name} of per-param values by a flat tensor is not flat-safe")
        return TensorList._op(self, name, other, **kw)

    def _clip_lr(self, lr):
        t = self[0]
        res = torch.clamp(t, max=lr) if not isinstance(lr, torch.Tensor) else torch.minimum(t, lr)
        return SegValues(res, self.seg, clip=lr)

    def _trust_ratio(self, r2, cap):
        a, b = self[0], r2[0]
        q = torch.where((a == 0) | (b == 0), torch.ones_like(a), (a / b).clamp(max=cap))
        return SegValues(q, self.seg)

    def per_param(self, lr_is_number):
        "Each param's value, for its state dict (fastai's `min(lr, x)`: `lr` itself unless x < lr)."
        t = self[0]
        vals = list(t.unbind(0))
        if self.clip is not None and lr_is_number and t.device.type == "cpu":
            return [v if v < self.clip else self.clip for v in vals]
        return vals


class FlatList(TensorList):
    "A TensorList of one flat tensor laid out by `seg` (see the module docstring)."

    def __init__(self, t, seg):
        super().__init__([t])
        self.seg = seg

    def _other(self, other):
        if isinstance(other, SegValues):
            return [self.seg.expand(other[0], self[0])]
        return other

    def _like(self, tensors):
        return FlatList(tensors[0], self.seg)

    def _op(self, name, other=None, **kw):
        return TensorList._op(self, name, self._other(other), **kw)

    def _op_3(self, name, t1, t2, value):
        if isinstance(value, SegValues):
            raise TypeError("per-param values in addcmul_/addcdiv_ are not flat-safe")
        return TensorList._op_3(self, name, self._other(t1), self._other(t2), value)

    def norm(self):
        return SegValues(self.seg.reduce_sumsq(self[0]).sqrt_(), self.seg)

    def numel(self):
        return list(self.seg.lengths)

    # the hook tensor_list's `rms` calls (one reduction per segment)
    def _rms(self):
        return SegValues(self.seg.reduce_sumsq(self[0]).div_(self.seg.lengths_t.to(self[0].dtype))
                         .sqrt_(), self.seg)

    __add__ = __radd__ = lambda self, o: self._op("add", o)
    __mul__ = __rmul__ = lambda self, o: self._op("mul", o)


class FlatBucketData:
    """The flat side of a bucket: segments, the flat params and grads, the views used to gather
    and scatter, and whether grads must be copied back (a chain that changes them).

    When the params (or grads) already are consecutive views of one buffer — after
    `Optimizer.flatten_params()` — that buffer is used directly and nothing is copied."""
    __slots__ = ("seg", "flat_p", "flat_g", "p_views", "g_views", "params", "grads", "ptrs", "gptrs",
                 "p_flat_src", "p_src", "g_flat_src", "grads_back", "p_is_view", "g_is_view")

    def __init__(self, params, grads_back, views_only=False):
        self.params = params
        self.grads = [p.grad for p in params]
        p0 = params[0]
        self.seg = seg = Segments(params)
        pdata = [p.data for p in params]
        self.ptrs = [p.data_ptr() for p in params]
        self.gptrs = [g.data_ptr() for g in self.grads]
        base_p, base_g = _storage_view(pdata, seg), _storage_view(self.grads, seg)
        self.p_is_view, self.g_is_view = base_p is not None, base_g is not None
        if views_only and not (self.p_is_view and self.g_is_view):
            self.flat_p = None             # not flat: the caller steps these params as a list
            return
        self.flat_p = base_p if self.p_is_view else \
            torch.empty(seg.total, dtype=p0.dtype, device=p0.device)
        self.flat_g = base_g if self.g_is_view else \
            torch.empty(seg.total, dtype=p0.dtype, device=p0.device)
        self.p_views = seg.views(self.flat_p)
        self.g_views = seg.views(self.flat_g)
        self.p_src = pdata                          # valid while `ptrs` match (checked per step)
        self.p_flat_src = [t.reshape(-1) for t in pdata] if all(
            t.is_contiguous() for t in pdata) else None
        self.g_flat_src = [g.reshape(-1) for g in self.grads] if all(
            g.is_contiguous() for g in self.grads) else None
        self.grads_back = grads_back and not self.g_is_view

    def batch(self):
        b = ParamBatch.__new__(ParamBatch)
        b.data = FlatList(self.flat_p, self.seg)
        b.grad = FlatList(self.flat_g, self.seg)
        return b

    def gather(self):
        if not self.p_is_view:
            if self.p_flat_src is not None:
                torch.cat(self.p_flat_src, out=self.flat_p)
            else:
                torch._foreach_copy_(self.p_views, self.p_src)
        if not self.g_is_view:
            if self.g_flat_src is not None:
                torch.cat(self.g_flat_src, out=self.flat_g)
            else:
                torch._foreach_copy_(self.g_views, self.grads)

    def scatter(self):
        if not self.p_is_view:
            torch._foreach_copy_(self.p_src, self.p_views)
        if self.grads_back:
            torch._foreach_copy_(self.grads, self.g_views)

    def still_valid(self):
        "No param's or grad's storage was swapped (`p.data = ...`) since the bucket was built."
        return all(map(operator.eq, map(torch.Tensor.data_ptr, self.params), self.ptrs)) and \
            all(map(operator.eq, map(torch.Tensor.data_ptr, self.grads), self.gptrs))

    def flatten_state(self, states):
        """The bucket state from the params' state dicts: tensors of the params' shapes become one
        FlatList (reusing the buffer when they are already its views, else copied), 0-d tensors
        SegValues, other values are shared. None if some state does not fit a flat layout."""
        seg, first = self.seg, states[0]
        out = {}
        for k, v in first.items():
            if not isinstance(v, torch.Tensor):
                out[k] = v
                continue
            ts = [s[k] for s in states]
            if all(t.shape == s for t, s in zip(ts, seg.shapes)):
                base = _common_base(ts, seg)
                out[k] = FlatList(base if base is not None else
                                  torch.cat([t.reshape(-1) for t in ts]).to(self.flat_p.dtype),
                                  seg)
            elif all(t.ndim == 0 for t in ts):
                out[k] = SegValues(torch.stack(ts), seg)
            else:
                return None
        return out

    def unflatten(self, key, value, states):
        "Write one bucket state value back into the params' state dicts."
        if isinstance(value, SegValues):
            vals = value.per_param(True)
        elif isinstance(value, TensorList) and len(value) == 1 and value[0].ndim == 1 \
                and value[0].numel() == self.seg.total:
            vals = self.seg.views(value[0])
        else:
            vals = [value] * len(self.params)
        for st, v in zip(states, vals):
            st[key] = v


def _storage_view(ts, seg):
    "A 1-D tensor over the tensors' storage, if they lie end to end in it (in order, contiguous)."
    t0 = ts[0]
    if not all(t.is_contiguous() for t in ts):
        return None
    st = t0.untyped_storage()
    sptr, isz = st.data_ptr(), t0.element_size()
    start = t0.storage_offset()
    for t, off in zip(ts, seg.offsets):
        if t.dtype != t0.dtype or t.untyped_storage().data_ptr() != sptr \
                or t.storage_offset() != start + off:
            return None
    if (start + seg.total) * isz > st.nbytes():
        return None
    return torch.empty(0, dtype=t0.dtype, device=t0.device).set_(st, start, (seg.total,))


def _common_base(ts, seg):
    "The flat buffer the tensors are consecutive views of, if they are (no copy needed)."
    b = ts[0]._base
    if b is None or b.ndim != 1 or b.numel() != seg.total or not b.is_contiguous():
        return None
    start = b.storage_offset()
    for t, off in zip(ts, seg.offsets):
        if t._base is not b or t.storage_offset() != start + off or not t.is_contiguous():
            return None
    return b
