"""Which path runs what: the backend policy, as small pure functions of plain facts.

`choose_impl` decides for the whole optimizer: fastai's per-param loop, or buckets. For buckets,
`choose_path` decides per param, from facts about the param and its chain, which kernel steps it
and whether it may share a flat bucket (`flat.py`). The engine (`engine.py`) gathers the facts,
asks, and groups the params by the answer; these functions read nothing else, so their tests
(`tests/test_backend.py`) pin the whole policy.
"""
from typing import NamedTuple

import torch

__all__ = ["PER_PARAM", "BUCKETS", "NATIVE", "FUSED", "CHAIN", "Knobs", "ChainFacts", "ParamFacts",
           "Path", "choose_impl", "choose_path", "NATIVE_MT_NUMEL", "FLAT_MAX_NUMEL",
           "NATIVE_DTYPES", "HALF_DTYPES", "COMPUTE_DTYPE", "FUSED_OK_DTYPES"]

PER_PARAM, BUCKETS = "per_param", "buckets"      # the two ways a step runs
NATIVE, FUSED, CHAIN = "native", "fused", "chain"   # what steps a bucket

NATIVE_DTYPES = (torch.float32, torch.float64)
# Half params are stepped in float32 (docs/half_precision.md): the path is chosen for the float32
# shadow, on every path alike.
HALF_DTYPES = (torch.float16, torch.bfloat16)
COMPUTE_DTYPE = torch.float32
# The dtypes torch's fused kernels are handed (each checked against a float64 reference in
# tests/test_half_precision.py). Not the half types: `_fused_sgd_` is wrong on CPU float16/bfloat16
# in torch 2.13 (params off by ~1 after 3 steps), and the half rule needs float32 state anyway.
FUSED_OK_DTYPES = (torch.float32, torch.float64)
NATIVE_MT_NUMEL = 32768     # with torch threads > 1, params this large go to torch's fused kernels
                            # (multi-threaded per tensor) rather than the single-threaded native ones
FLAT_MAX_NUMEL = 32768      # params up to this size may share a flat bucket


class Knobs(NamedTuple):
    "The user's switches: `opt.fused`, `opt.flatten`, PYFASTOPT_NATIVE, and torch's thread count."
    kernels: bool = True            # opt.fused: may a chain kernel (native or torch fused) run?
    flatten: bool = True            # opt.flatten: may small params share a flat bucket?
    native: bool = True             # native kernels enabled and loaded
    threads: int = 1


class ChainFacts(NamedTuple):
    "What the optimizer's stepper chain has: a native kernel, a torch fused one, flat-safe steppers."
    native: bool = False
    fused: bool = False
    flat_safe: bool = False
    fused_dtypes: tuple = FUSED_OK_DTYPES   # the dtypes the fused kernel computes right


class ParamFacts(NamedTuple):
    "What the policy needs to know of one param with a grad."
    device_type: str
    dtype: torch.dtype
    numel: int
    plain: bool                     # plain tensors (no subclass such as DTensor), param and grad
    grad_like: bool                 # the grad has the param's shape and dtype
    dense: bool                     # param and grad strided, contiguous, not lazily conjugated/negated


class Path(NamedTuple):
    kernel: str                     # NATIVE, FUSED or CHAIN (a fused kernel may still decline a bucket)
    flat: bool                      # may share a flat bucket
    reason: str
    upcast: bool = False            # a half param, stepped on float32 shadows (half.py)


def choose_impl(impl, steppers_multi_tensor):
    """PER_PARAM or BUCKETS for `opt.impl` ('auto', 'per_param', 'multi_tensor'), given whether
    every stepper is marked `@multi_tensor`."""
    if impl == "per_param":
        return PER_PARAM, "impl='per_param'"
    if not steppers_multi_tensor:
        if impl == "multi_tensor":
            raise ValueError("impl='multi_tensor' needs steppers marked @multi_tensor")
        return PER_PARAM, "a stepper is not marked @multi_tensor"
    return BUCKETS, f"impl={impl!r}, every stepper @multi_tensor"


def choose_path(param, chain, knobs):
    "The `Path` of one param (see the module docstring)."
    if param.dtype in HALF_DTYPES:
        # the kernel sees the float32 shadows: fresh, contiguous, the param's shape
        shadow = param._replace(dtype=COMPUTE_DTYPE, dense=param.plain and param.grad_like)
        p = choose_path(shadow, chain, knobs)
        return Path(p.kernel, False, f"{param.dtype} stepped in float32 (half rule): {p.reason}",
                    True)
    native_ok = knobs.kernels and knobs.native and chain.native and param.plain \
        and param.grad_like and param.dense and param.device_type == "cpu" \
        and param.dtype in NATIVE_DTYPES
    if native_ok:
        if knobs.threads > 1 and chain.fused and param.numel >= NATIVE_MT_NUMEL:
            return Path(FUSED, False, "large param with several torch threads: torch's fused "
                                      "kernel splits it over the threads")
        return Path(NATIVE, False, "CPU float32/float64 contiguous: one C call per bucket")
    flat = knobs.flatten and chain.flat_safe and param.plain and param.grad_like \
        and param.numel <= FLAT_MAX_NUMEL
    if knobs.kernels and chain.fused and param.dtype in chain.fused_dtypes:
        return Path(FUSED, flat, "torch's fused kernel for this chain")
    why = "kernels off (opt.fused = False)" if not knobs.kernels else \
        f"torch's fused kernel is not trusted with {param.dtype}" \
        if chain.fused and param.dtype not in chain.fused_dtypes else \
        "tensor subclass" if not param.plain else "no kernel for this chain, device or dtype"
    return Path(CHAIN, flat, f"the steppers on TensorLists ({why})")
