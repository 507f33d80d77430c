"""What pyfastopt needs to step tensor subclasses of `torch.distributed` — FSDP2's DTensor params
(`torch.distributed.fsdp.fully_shard`) — with the same stepper code.

A bucket of DTensor params steps on its local shards (`shards.py`, with `shard_norms` for the
norms). Elsewhere, every element-wise stepper runs on DTensors as it is (torch has sharding
strategies for the `_foreach_*` ops); where the operands are laid out alike, `TensorList` runs the
op on the local shards instead (`on_shards`: DTensor's answer without its dispatch per tensor).
What needs help is per-tensor scalars: LARC's and LAMB's norms. A DTensor norm is one reduction
across the shards *per tensor*; `global_norms`/`shard_norms` compute the norms of a whole list
with one local `_foreach_norm` and one sum across the ranks per sharded mesh dimension, and give
them as plain 0-d tensors (the same value on every rank), so the scalar math after it is plain
tensor math. `replicating()` lets such per-tensor scalars meet the params in a `_foreach_*` op.

`by_position` reads state dicts laid out as torch's distributed checkpointing (DCP) hands them
over: state keyed through `param_groups[g]['params']` (parameter names) rather than 0..n-1.
"""
import contextlib
import numbers
import sys

import torch

__all__ = ["dtensor_type", "is_dtensor", "global_norms", "shard_norms", "replicating", "on_shards",
           "as_dtensors", "same_sharding", "shardwise", "by_position"]


def dtensor_type():
    "DTensor's class if `torch.distributed.tensor` was imported (there is none otherwise), or None."
    m = sys.modules.get("torch.distributed.tensor")
    return getattr(m, "DTensor", None)


def is_dtensor(t):
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def global_norms(ts):
    """The L2 norm of each DTensor of `ts` over all its shards, as plain 0-d tensors (replicated:
    equal on every rank), or None where a placement is not Shard/Replicate (then the caller uses
    DTensor's own ops). See `shard_norms`."""
    DTensor = dtensor_type()
    if DTensor is None or not ts or not all(isinstance(t, DTensor) for t in ts):
        return None
    specs = [t._spec for t in ts]
    if not all(map(shardwise, specs)):
        return None
    # without autograd, the shards themselves (`to_local()` costs a dispatch per tensor)
    grad = torch.is_grad_enabled()
    return shard_norms([t.to_local() if grad else t._local_tensor for t in ts], specs)


def shard_norms(local, specs, divisors=None):
    """The L2 norm of each whole tensor whose local shard is `local[i]`, laid out by DTensor spec
    `specs[i]` (Shard/Replicate placements), as plain 0-d tensors equal on every rank: one
    `_foreach_norm` of the shards and one sum of their squares across the ranks per mesh
    dimension they are sharded over (`_sum_across`), for the whole list (a DTensor norm would be
    one reduction per tensor). With `divisors`, each norm divided by its divisor (as
    `_foreach_div` would, on one tensor)."""
    s0 = specs[0]
    if all(s.mesh is s0.mesh and s.placements == s0.placements for s in specs):
        groups = {None: (s0, range(len(specs)))}       # the usual case: one layout for all
    else:
        groups = {}
        for i, spec in enumerate(specs):
            groups.setdefault((id(spec.mesh), spec.placements), (spec, []))[1].append(i)
    out = [None] * len(local)
    for spec, idx in groups.values():
        sq = torch.stack(torch._foreach_norm([local[i] for i in idx])).square_()
        for d, pl in enumerate(spec.placements):
            if pl.is_shard():
                sq = _sum_across(sq, spec.mesh.get_group(d))
        res = sq.sqrt_()
        if divisors is not None:
            res.div_(_on_device([divisors[i] for i in idx], res))
        for i, v in zip(idx, res.unbind(0)):
            out[i] = v
    return out


_ON_DEVICE = {}


def _on_device(values, like):
    """The numbers `values` as a tensor like `like`, made once per device, dtype and values: on an
    accelerator, making it anew each step would be a host-to-device copy each step."""
    key = (like.device, like.dtype, tuple(values))
    t = _ON_DEVICE.get(key)
    if t is None:
        if len(_ON_DEVICE) >= 256:
            _ON_DEVICE.clear()
        t = _ON_DEVICE[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t


GATHER_MAX_RANKS = 64      # up to this many ranks, `_sum_across` gathers instead of all-reducing


def _sum_across(t, group):
    """The sum of the small tensor `t` over the ranks of `group`, the same on every rank. For a
    few ranks, one `all_gather` and a local sum in rank order: half the rounds of a ring
    all-reduce (gloo's small all-reduce took ≈1 ms on 2 CPU ranks, its all-gather ≈0.3 ms), and
    every rank adds the same values in the same order."""
    import torch.distributed as dist
    n = dist.get_world_size(group)
    if n > GATHER_MAX_RANKS:
        dist.all_reduce(t, group=group)
        return t
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t, group=group)
    return torch.stack(parts).sum(0)


@contextlib.contextmanager
def replicating():
    """Let DTensor ops take plain tensors as replicated (torch's `implicit_replication`, but
    restoring the previous setting): for per-tensor scalars such as LARC's `local_lr` or LAMB's
    trust ratio, plain 0-d tensors equal on every rank, meeting the params. No communication."""
    disp = getattr(dtensor_type(), "_op_dispatcher", None)
    if disp is None or not hasattr(disp, "_allow_implicit_replication"):
        from torch.distributed.tensor.experimental import implicit_replication
        with implicit_replication():
            yield
        return
    old = disp._allow_implicit_replication
    disp._allow_implicit_replication = True
    try:
        yield
    finally:
        disp._allow_implicit_replication = old


def shardwise(spec):
    "Element-wise math on the local shards is DTensor's answer for Shard/Replicate placements."
    return all(pl.is_shard() or pl.is_replicate() for pl in spec.placements)


def same_sharding(o, t, spec, dtype=True):
    """Is DTensor `o` laid out as `t` (whose spec is `spec`): placements, mesh, shape and (unless
    `dtype` is false) dtype?"""
    os_ = o._spec
    return os_ is spec or (os_.placements == spec.placements and os_.mesh == spec.mesh
                           and o.shape == t.shape and (not dtype or o.dtype == t.dtype))


def on_shards(ts, operands, kw, same_dtype=True):
    """The local shards of the DTensors `ts`, the operands of an element-wise `_foreach_*` op
    with them made local, and `ts`' specs; None where the op must go through DTensor's dispatch.

    DTensor dispatches a `_foreach_*` op tensor by tensor (sharding propagation, a new DTensor per
    result): for the few dozen tensors of a step that is most of its time. Where every tensor
    operand is laid out as its partner in `ts` (Shard or Replicate placements, same mesh, shape
    and dtype), or is a number, or a plain 0-d tensor that is equal on every rank (a per-tensor
    scalar such as LAMB's trust ratio), the op on the local shards is exactly DTensor's, with no
    communication. Only without autograd (as in a step): DTensor's ops also record the graph.
    `same_dtype=False` lets tensor operands be of another dtype (a copy converts)."""
    DTensor = dtensor_type()
    if DTensor is None or torch.is_grad_enabled() \
            or not all(isinstance(v, numbers.Number) for v in kw.values()):
        return None
    try:
        if not all(type(t) is DTensor for t in ts):
            return None
        specs = [t._spec for t in ts]
        if not all(map(shardwise, specs)):
            return None
        out = []
        for o in operands:
            if isinstance(o, numbers.Number):
                out.append(o)
            elif type(o) is torch.Tensor and o.ndim == 0:
                out.append(o)
            elif isinstance(o, (list, tuple)) and len(o) == len(ts):
                if all(isinstance(v, numbers.Number) for v in o):
                    out.append(list(o))
                elif all(type(v) is DTensor for v in o):
                    if not all(same_sharding(v, t, s, same_dtype)
                               for v, t, s in zip(o, ts, specs)):
                        return None
                    out.append([v._local_tensor for v in o])
                elif all(type(v) is torch.Tensor and v.ndim == 0 for v in o):
                    out.append(list(o))
                else:
                    return None
            else:
                return None
        return [t._local_tensor for t in ts], out, specs
    except AttributeError:          # DTensor's internals are not as this was written for
        return None


def as_dtensors(results, specs):
    "The results of an out-of-place op on local shards, as DTensors laid out as its inputs."
    DTensor = dtensor_type()
    return [DTensor(r, spec, requires_grad=False) for r, spec in zip(results, specs)]


def by_position(sd):
    """A state dict whose `state` is keyed by what its `param_groups[g]['params']` list — torch's
    convention, which torch's tools rely on (DCP's `set_optimizer_state_dict` hands over state
    keyed by parameter names) — re-keyed 0..n-1 in that order, as pyfastopt numbers its params.
    A state dict keyed by positions already, or not of this form, is returned as it is."""
    if not isinstance(sd, dict):
        return sd
    st, groups = sd.get("state"), sd.get("param_groups")
    if not isinstance(st, dict) or not isinstance(groups, (list, tuple)) \
            or all(type(k) is int for k in st):
        return sd
    if not all(isinstance(g, dict) and isinstance(g.get("params"), (list, tuple))
               for g in groups):
        return sd
    keys = [k for g in groups for k in g["params"]]
    if any(type(k) is int for k in keys):      # numbered by position: the load checks the keys
        return sd
    try:
        pos = {k: i for i, k in enumerate(keys)}
    except TypeError:
        return sd
    if len(pos) != len(keys) or not all(k in pos for k in st):
        return sd
    new_groups, start = [], 0
    for g in groups:
        n = len(g["params"])
        new_groups.append({**g, "params": list(range(start, start + n))})
        start += n
    return {**sd, "state": {pos[k]: v for k, v in st.items()}, "param_groups": new_groups}
