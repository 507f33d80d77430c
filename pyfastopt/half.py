"""One half-precision rule for every path (see docs/half_precision.md).

A float16 or bfloat16 param is stepped in float32: its value and grad are copied into float32
*shadows*, the chain (or the kernel that stands for it: native, torch fused, foreach) runs on the
shadows with the param's state kept in float32, and the result is rounded back into the param
(and into its grad, which `l2_reg` changes in place as in fastai). Every path therefore computes
the same float32 numbers, which differ by less than float32's rounding, and the params differ by
at most the rounding of their own dtype. torch's fused kernels never see a half tensor (torch's
`_fused_sgd_` is wrong on CPU float16/bfloat16 in torch 2.13; `backend.choose_path` routes on
the float32 shadow).

The per-param loop (`step_one`) and the buckets (`Shadows`, used by `engine.Bucket`) follow the
same rule; state loaded or set in a half dtype is upcast on the next step (`upcast_state`).
"""
import torch

from .tensor_list import TensorList

__all__ = ["HALF_DTYPES", "COMPUTE_DTYPE", "is_half", "upcast_state", "step_one", "Shadows"]

HALF_DTYPES = (torch.float16, torch.bfloat16)
COMPUTE_DTYPE = torch.float32


def is_half(t):
    return t.dtype in HALF_DTYPES


def upcast_state(state):
    "Turn a half param's state tensors of a half dtype into float32, in place (the dict's values)."
    for k, v in list(state.items()):
        if isinstance(v, torch.Tensor) and v.dtype in HALF_DTYPES:
            state[k] = v.to(COMPUTE_DTYPE)
    return state


def step_one(p, state, cbs, hyper, update):
    """fastai's per-param loop for one half param: the steppers run on a float32 shadow (a plain
    tensor with a float32 `.grad`), then the param and its grad get the rounded result."""
    shadow = p.detach().to(COMPUTE_DTYPE, copy=True)
    shadow.grad = p.grad.detach().to(COMPUTE_DTYPE, copy=True)
    upcast_state(state)
    for cb in cbs:
        update(state, cb(shadow, **{**state, **hyper}))
    p.data.copy_(shadow)
    p.grad.data.copy_(shadow.grad)


class Shadows:
    """The float32 shadows of a bucket of half params: `gather()` copies params and grads in
    (one foreach copy each), `scatter()` copies the stepped params back (and the grads when a
    stepper changes them in place)."""
    __slots__ = ("params", "grads", "p32", "g32", "grads_back")

    def __init__(self, params, grads_back):
        self.params = list(params)
        self.grads = [p.grad for p in self.params]
        self.p32 = [torch.empty_like(p, dtype=COMPUTE_DTYPE, memory_format=torch.contiguous_format)
                    for p in self.params]
        self.g32 = [torch.empty_like(g, dtype=COMPUTE_DTYPE, memory_format=torch.contiguous_format)
                    for g in self.grads]
        self.grads_back = grads_back

    # TensorList's copy: one foreach copy, or for DTensors (FSDP2) one on the local shards
    def gather(self):
        TensorList(self.p32).copy_(self.params)
        TensorList(self.g32).copy_(self.grads)

    def scatter(self):
        TensorList(self.params).copy_(self.p32)
        if self.grads_back:
            TensorList(self.grads).copy_(self.g32)
