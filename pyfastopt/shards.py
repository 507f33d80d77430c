"""Stepping a bucket of DTensor params (FSDP2's `fully_shard`) on their local shards.

DTensor runs a `_foreach_*` op tensor by tensor (sharding propagation, and a new DTensor for each
result): for a step of a few dozen params that is most of the time. When the params are laid out
with Shard/Replicate placements, and their grads and state tensors exactly as they are, every
element-wise op of a step computes on each rank what DTensor would, on the local shards. So the
steppers get `ShardList`s of the shards (plain tensors, plain `_foreach_*` calls); the few
operations that are not element-wise answer for the whole tensors (`ShardList.norm` reduces
across the shards, `numel` counts every element). Updates in place reach the DTensors, whose
storage the shards are; state a step creates is wrapped back into DTensors laid out as its param,
so `opt.state` and the state dict hold DTensors, as DCP expects.
"""
import operator

import torch

from .distributed import dtensor_type, same_sharding, shardwise
from .tensor_list import ParamBatch, ShardList, TensorList

__all__ = ["LocalShards"]


class LocalShards:
    "The layout of one bucket's DTensor params, and the passage of a step to their shards."
    __slots__ = ("specs",)

    def __init__(self, specs):
        self.specs = specs

    @classmethod
    def of(cls, params, states):
        """A `LocalShards` for a bucket of `params` with `states`, or None unless every param is a
        DTensor with Shard/Replicate placements and every state tensor is laid out as its param
        (or is a plain 0-d per-tensor scalar, such as LARC's `local_lr`)."""
        DTensor = dtensor_type()
        if DTensor is None or not params or not all(type(p) is DTensor for p in params):
            return None
        try:
            specs = [p._spec for p in params]
            if not all(map(shardwise, specs)):
                return None
            for p, spec, st in zip(params, specs, states):
                for v in st.values():
                    if type(v) is DTensor and same_sharding(v, p, spec):
                        continue
                    if isinstance(v, torch.Tensor) and (type(v) is not torch.Tensor or v.ndim):
                        return None
        except AttributeError:          # DTensor's internals are not as this was written for
            return None
        return cls(specs)

    def enter(self, batch, state):
        """The bucket's `batch` and `state` on the local shards, or None when a grad is not laid
        out as its param (this step then goes through DTensor's ops)."""
        DTensor, specs = dtensor_type(), self.specs
        params, grads = batch.data, batch.grad
        for g, p, spec in zip(grads, params, specs):
            # FSDP2 gives a grad its param's spec object: one identity test per grad
            if getattr(g, "_spec", None) is not spec and not (
                    type(g) is DTensor and same_sharding(g, p, spec)):
                return None
        local = ParamBatch(ShardList([p._local_tensor for p in params], specs),
                           ShardList([g._local_tensor for g in grads], specs))
        return local, {k: ShardList([t._local_tensor for t in v], specs)
                       if type(v) is TensorList and v and type(v[0]) is DTensor else v
                       for k, v in state.items()}

    def leave(self, local_state, state, params):
        """Write the step's results (`local_state`) into the bucket's `state`: values updated in
        place are already there; new shards are wrapped into DTensors laid out as their params."""
        DTensor = dtensor_type()
        for k, v in local_state.items():
            if type(v) is not ShardList:
                state[k] = v
                continue
            old = state.get(k)
            if type(old) is TensorList and len(old) == len(v) and all(
                    map(operator.is_, v, (t._local_tensor for t in old))):
                continue
            state[k] = TensorList(map(_as_dtensor, v, params, self.specs, (DTensor,) * len(v)))


def _as_dtensor(local, p, spec, DTensor):
    "New state `local` as a DTensor laid out as its param `p` (spec `spec`)."
    pl = p._local_tensor
    if local.dtype == pl.dtype and local.shape == pl.shape and local.stride() == pl.stride():
        return DTensor(local, spec, requires_grad=False)       # what DTensor's own op would give
    return DTensor.from_local(local, spec.mesh, spec.placements, run_check=False,
                              shape=p.shape, stride=p.stride())
