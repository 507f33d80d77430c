"""`TensorList`: a list of tensors that answers the tensor methods a stepper uses with one
`torch._foreach_*` call for the whole list.

This is what lets every stepper's math be written once: `p.data.add_(p.grad, alpha=-lr)` updates
one tensor when `p` is a parameter, and every parameter of a bucket when `p` is a `ParamBatch`
(whose `.data` and `.grad` are TensorLists). The module-level helpers (`zeros_like`, `norm`,
`rms`, `softplus`, `clip_lr`, `trust_ratio`) do the same for the few operations that are
functions rather than methods.
"""
import itertools
import math
import numbers

import torch
import torch.nn.functional as F

from .distributed import as_dtensors, global_norms, is_dtensor, on_shards, replicating, shard_norms

__all__ = ["TensorList", "ShardList", "ParamBatch", "zeros_like", "norm", "norms", "rms", "rmss",
           "softplus", "clip_lr", "trust_ratio"]


def _per_tensor(other, like):
    "A per-tensor operand list for a foreach call: all numbers, or all tensors."
    items = list(other)
    if all(type(o) is torch.Tensor for o in items):         # per-tensor scalars, as tensors
        return items
    if all(isinstance(o, numbers.Number) for o in items):
        return items
    if any(isinstance(o, numbers.Number) for o in items) and all(
            isinstance(o, numbers.Number) or o.device.type == "cpu" and o.ndim == 0
            for o in items):
        # numbers and CPU scalars (LARC's clipped `local_lr`): reading a CPU scalar is free,
        # making a tensor of each number is not; the same values either way
        return [o if isinstance(o, numbers.Number) else o.item() for o in items]
    return [o if isinstance(o, torch.Tensor) else torch.tensor(o, dtype=t.dtype, device=t.device)
            for o, t in zip(items, like)]


class TensorList(list):
    """A list of tensors (or, for per-tensor scalars, of numbers) with tensor-like methods.

    The other operand of a binary method may be a number (applied to every tensor), a list of the
    same length (element-wise), or a TensorList.
    """

    @property
    def data(self):
        return self

    def _op(self, name, other=None, **kw):
        if self and is_dtensor(self[0]):
            return self._on_dtensors(name, () if other is None else (other,), kw)
        return self._op_1(name, other, **kw)

    def _op_1(self, name, other=None, **kw):
        f = getattr(torch, f"_foreach_{name}")
        if other is None:
            res = f(self, **kw)
        elif isinstance(other, list):
            res = f(self, _per_tensor(other, self), **kw)
        else:
            res = f(self, other, **kw)
        # in place: the same tensors (and this list, whose identity callers may rely on)
        return self if res is None or name.endswith("_") else self._like(res)

    def _like(self, tensors):
        "A list of the same kind as this one (see `ShardList`) holding `tensors`."
        return TensorList(tensors)

    def _on_dtensors(self, name, operands, kw):
        "A `_foreach_*` op of DTensors: on the local shards where that is DTensor's answer."
        f = getattr(torch, f"_foreach_{name}")
        shards = on_shards(self, operands, kw)
        if shards is not None:
            local, ops, specs = shards
            res = f(local, *ops, **kw)
            if res is None or name.endswith("_"):      # in place: the DTensors hold the result
                return self
            return TensorList(as_dtensors(res, specs))
        ops = [_per_tensor(o, self) if isinstance(o, list) else o for o in operands]
        with replicating():     # per-tensor scalars (plain 0-d tensors) meet the DTensors
            res = f(self, *ops, **kw)
        return self if res is None or name.endswith("_") else TensorList(res)

    # in-place methods
    def add_(self, other, alpha=None):
        if alpha is None or not isinstance(other, list):
            if alpha is not None:
                other = other * alpha
            return self._op("add_", other)
        return self._op("add_", other, alpha=alpha)

    def sub_(self, other):
        return self._op("sub_", other)

    def mul_(self, other):
        return self._op("mul_", other)

    def div_(self, other):
        return self._op("div_", other)

    def addcmul_(self, t1, t2, value=1):
        return self._op_3("addcmul_", t1, t2, value)

    def addcdiv_(self, t1, t2, value=1):
        return self._op_3("addcdiv_", t1, t2, value)

    def _op_3(self, name, t1, t2, value):
        if self and is_dtensor(self[0]):
            if isinstance(value, list):
                return self._on_dtensors(name, (t1, t2, value), {})
            return self._on_dtensors(name, (t1, t2), {"value": value})
        return self._op_3_1(name, t1, t2, value)

    def _op_3_1(self, name, t1, t2, value):
        f = getattr(torch, f"_foreach_{name}")
        if isinstance(value, list):
            f(self, t1, t2, _per_tensor(value, self) if not all(
                isinstance(v, numbers.Number) for v in value) else value)
        else:
            f(self, t1, t2, value=value)
        return self

    def lerp_(self, end, weight):
        return self._op("lerp_", end, weight=weight)

    def sqrt_(self):
        return self._op("sqrt_")

    def sign_(self):
        return self._op("sign_")

    def zero_(self):
        return self._op("zero_")

    def copy_(self, src):
        if self and is_dtensor(self[0]):
            shards = on_shards(self, (src,), {}, same_dtype=False)
            if shards is None:                  # no sharding strategy for _foreach_copy_
                for t, s in zip(self, src):
                    t.copy_(s)
                return self
            torch._foreach_copy_(shards[0], shards[1][0])
        else:
            torch._foreach_copy_(self, src)
        return self

    def clamp_(self, min=None, max=None):
        if min is not None:
            self._op("clamp_min_", min)
        if max is not None:
            self._op("clamp_max_", max)
        return self

    # out-of-place methods
    def add(self, other, alpha=None):
        if alpha is None or not isinstance(other, list):
            if alpha is not None:
                other = other * alpha
            return self._op("add", other)
        return self._op("add", other, alpha=alpha)

    def mul(self, other):
        return self._op("mul", other)

    def div(self, other):
        return self._op("div", other)

    def sqrt(self):
        return self._op("sqrt")

    def pow(self, exponent):
        return self._op("pow", exponent)

    def neg(self):
        return self._op("neg")

    def clone(self):
        return self._like([t.clone() for t in self])

    def detach(self):
        return self._like([t.detach() for t in self])

    def norm(self):
        # DTensors: every norm over all shards, with one reduction for the list (distributed.py)
        g = global_norms(self) if self and is_dtensor(self[0]) else None
        return TensorList(torch._foreach_norm(self) if g is None else g)

    def numel(self):
        return [t.numel() for t in self]

    __add__ = add
    __radd__ = add
    __mul__ = mul
    __rmul__ = mul
    __truediv__ = div
    __neg__ = neg
    __pow__ = pow

    def __sub__(self, other):
        return self._op("sub", other)

    def __rsub__(self, other):
        return self.neg().add_(other)

    def __iadd__(self, other):
        return self.add_(other)

    def __imul__(self, other):
        return self.mul_(other)

    def __repr__(self):
        return f"TensorList({list.__repr__(self)})"


class ShardList(TensorList):
    """The local shards of DTensors laid out by `specs` (Shard/Replicate placements), on which a
    bucket of DTensor params steps (`shards.LocalShards`): element-wise ops are plain `_foreach_*`
    ops on the shards, which is what DTensor would compute, without its dispatch per tensor. What
    is not element-wise answers for the whole tensors: `norm` reduces across the shards, `numel`
    counts every element."""

    def __init__(self, tensors, specs):
        super().__init__(tensors)
        self.specs = specs

    def _like(self, tensors):
        return ShardList(tensors, self.specs)

    def norm(self):
        return TensorList(shard_norms(self, self.specs))

    def numel(self):
        return [math.prod(spec.shape) for spec in self.specs]

    def __repr__(self):
        return f"ShardList({list.__repr__(self)})"


class ParamBatch:
    """The stand-in for one parameter when a stepper runs on a whole bucket: `.data` is the
    TensorList of the bucket's parameters and `.grad` that of their gradients."""

    __slots__ = ("data", "grad")

    def __init__(self, params, grads):
        self.data = params if isinstance(params, TensorList) else TensorList(params)
        self.grad = grads if isinstance(grads, TensorList) else TensorList(grads)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        return f"ParamBatch({len(self.data)} tensors)"


def zeros_like(x):
    "A zero tensor like `x`, or a TensorList of them."
    if isinstance(x, list):
        zeros = [torch.zeros_like(t, memory_format=torch.preserve_format) for t in x]
        return x._like(zeros) if isinstance(x, TensorList) else TensorList(zeros)
    return torch.zeros_like(x, memory_format=torch.preserve_format)


def norm(x):
    "The L2 norm of a tensor (0-d), or the TensorList of the norms of each tensor."
    return x.norm() if isinstance(x, TensorList) else torch.norm(x)


def norms(*xs):
    """`norm` of several tensors or TensorLists at once: for lists of DTensors or of their shards,
    one reduction across the shards for all of them (`distributed.shard_norms`)."""
    if len(xs) > 1 and all(type(x) is ShardList for x in xs):
        return _per_list(shard_norms(*_joined(xs)), xs)
    if len(xs) > 1 and all(type(x) is TensorList and x and is_dtensor(x[0]) for x in xs):
        g = global_norms(_joined(xs)[0])
        if g is not None:
            return _per_list(g, xs)
    return tuple(norm(x) for x in xs)


def rmss(*xs):
    "`rms` of several tensors or TensorLists at once (one reduction for lists of DTensors)."
    if all(type(x) is ShardList for x in xs):     # one reduction, the division on the stack
        return _per_list(shard_norms(*_joined(xs), [math.sqrt(k) for x in xs for k in x.numel()]),
                         xs)
    if len(xs) > 1 and all(type(x) is TensorList and x and is_dtensor(x[0]) for x in xs):
        return tuple(TensorList(torch._foreach_div(n, [math.sqrt(k) for k in x.numel()]))
                     for n, x in zip(norms(*xs), xs))
    return tuple(rms(x) for x in xs)


def _joined(xs):
    "The tensors of the lists `xs` in one list, and (ShardLists) their specs likewise."
    return ([t for x in xs for t in x],
            [s for x in xs for s in x.specs] if type(xs[0]) is ShardList else None)


def _per_list(values, xs):
    "One result per tensor of the lists `xs`, split back into a TensorList per list."
    return tuple(TensorList(values[i - len(x):i])
                 for x, i in zip(xs, itertools.accumulate(map(len, xs))))


def rms(x):
    "Root mean square of a tensor, or of each tensor of a TensorList."
    if hasattr(x, "_rms"):              # per param, on a flat bucket (flat.py)
        return x._rms()
    if isinstance(x, TensorList):
        return TensorList(torch._foreach_div(x.norm(), [math.sqrt(k) for k in x.numel()]))
    return x.pow(2).mean().sqrt()


def softplus(x, beta):
    "`F.softplus(x, beta)` on a tensor or on each tensor of a TensorList."
    if isinstance(x, TensorList):
        return x._like([F.softplus(t, beta) for t in x])
    return F.softplus(x, beta)


def _clip_one(lr, local_lr):
    if local_lr.device.type == "cpu":
        # fastai returns Python's `min(lr, local_lr)`: the tensor only when strictly smaller,
        # otherwise `lr` itself (the R page prints `[1] 0.1`). On CPU reading it costs nothing.
        return min(lr, local_lr)
    # On an accelerator a Python comparison would be a host sync: clamp on the device instead.
    return torch.clamp(local_lr, max=lr) if isinstance(lr, numbers.Number) \
        else torch.minimum(local_lr, lr)


def clip_lr(lr, local_lr):
    "`min(lr, local_lr)` per tensor (see `_clip_one` for the device rule)."
    if hasattr(local_lr, "_clip_lr"):   # one value per param of a flat bucket (flat.py)
        return local_lr._clip_lr(lr)
    if isinstance(local_lr, list):
        if isinstance(lr, numbers.Number) and _one_plain_kind(local_lr) \
                and local_lr[0].device.type == "cpu":
            # `_clip_one`'s CPU rule for the whole list with one comparison
            below = (torch.stack(local_lr) < lr).tolist()
            return TensorList(t if b else lr for t, b in zip(local_lr, below))
        return TensorList(_clip_one(lr, t) for t in local_lr)
    return _clip_one(lr, local_lr)


def _one_plain_kind(ts):
    "Plain 0-d tensors of one device and dtype (that `torch.stack` can take as they are)."
    t0 = ts[0] if ts else None
    return isinstance(t0, torch.Tensor) and all(
        type(t) is torch.Tensor and t.ndim == 0 and t.dtype == t0.dtype and t.device == t0.device
        for t in ts)


def _trust_one(r1, r2, cap):
    q = torch.where((r1 == 0) | (r2 == 0), torch.ones_like(r1), (r1 / r2).clamp(max=cap))
    return q


def trust_ratio(r1, r2, cap=10):
    "LAMB's `1 if r1 == 0 or r2 == 0 else min(r1/r2, cap)`, computed on the device (no sync)."
    if hasattr(r1, "_trust_ratio"):
        return r1._trust_ratio(r2, cap)
    if isinstance(r1, list):
        if _one_plain_kind(r1) and _one_plain_kind(r2) and r1[0].device == r2[0].device:
            # per-tensor scalars: one stacked computation, the same element-wise ops
            return TensorList(_trust_one(torch.stack(r1), torch.stack(r2), cap).unbind(0))
        return TensorList(_trust_one(a, b, cap) for a, b in zip(r1, r2))
    return _trust_one(r1, r2, cap)
