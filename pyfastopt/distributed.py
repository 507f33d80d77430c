"""What pyfastopt needs to step tensor subclasses of `torch.distributed` — FSDP2's DTensor params
(`torch.distributed.fsdp.fully_shard`) — with the same stepper code.

Every element-wise stepper runs on DTensors as it is (torch has sharding strategies for the
`_foreach_*` ops). What needs help is per-tensor scalars: LARC's and LAMB's norms. A DTensor norm
is one reduction across the shards *per tensor*; `global_norms` computes the norms of a whole list
with one local `_foreach_norm` and one `all_reduce` per device mesh, and gives them as plain 0-d
tensors (the same value on every rank), so the scalar math after it is plain tensor math.
`replicating()` lets such per-tensor scalars meet the params in a `_foreach_*` op.

`by_position` reads state dicts laid out as torch's distributed checkpointing (DCP) hands them
over: state keyed through `param_groups[g]['params']` (parameter names) rather than 0..n-1.
"""
import contextlib
import sys

import torch

__all__ = ["dtensor_type", "is_dtensor", "global_norms", "replicating", "local_op", "by_position"]


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
    DTensor's own ops). One `_foreach_norm` of the local shards and one `all_reduce` per mesh
    dimension the tensors are sharded over, for the whole list."""
    DTensor = dtensor_type()
    if DTensor is None or not ts or not all(isinstance(t, DTensor) for t in ts):
        return None
    import torch.distributed as dist
    groups = {}
    for i, t in enumerate(ts):
        pls = t.placements
        if any(not (pl.is_shard() or pl.is_replicate()) for pl in pls):
            return None
        key = (id(t.device_mesh), tuple(d for d, pl in enumerate(pls) if pl.is_shard()))
        groups.setdefault(key, (t.device_mesh, []))[1].append(i)
    out = [None] * len(ts)
    for (_, dims), (mesh, idx) in groups.items():
        local = torch._foreach_norm([ts[i].to_local() for i in idx])
        sq = torch.stack(local).square_()
        for d in dims:
            dist.all_reduce(sq, group=mesh.get_group(d))
        for i, v in zip(idx, sq.sqrt_().unbind(0)):
            out[i] = v
    return out


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


def local_op(f, ts, scalars, kw):
    """`f(ts, scalars, **kw)` for a `_foreach_*` op `f` of DTensors `ts` and per-tensor plain 0-d
    tensors `scalars` (equal on every rank): an element-wise op with replicated scalars, so it is
    run on the local shards, without DTensor's dispatch per tensor. Results of an out-of-place op
    get the inputs' sharding. None where the DTensors' internals are not as expected."""
    DTensor = dtensor_type()
    try:
        locals_ = [t._local_tensor for t in ts]
        specs = [t._spec for t in ts]
    except AttributeError:
        return None
    res = f(locals_, scalars, **kw)
    if res is None:
        return ts
    return [DTensor(r, spec, requires_grad=False) for r, spec in zip(res, specs)]


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
