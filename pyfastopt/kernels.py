"""torch's fused kernels as whole-bucket substitutes for a recipe's stepper chain.

For a few chains torch has a kernel that does the whole update of a parameter in one memory pass
(`torch._fused_adam_`, `_fused_adamw_`, `_fused_sgd_`). A recipe that can use one declares a
`FusedSpec` (`recipe.py`); `FusedKernel` is the generic part: which buckets a fused kernel can take
at all, the hypers it reads, the state it creates, the step tensors torch's kernels read, and
autograd's version counters (torch's fused kernels do not bump them). On CPU, contiguous
float32/float64 buckets run the native kernels first (`native.py`); these take the other buckets
(CUDA, other dtypes, or native kernels unavailable/off).

A fused run reads and writes exactly the bucket state the chain would (`grad_avg`, `sqr_avg`
TensorLists, `step` a Python int), keeps fastai's semantics where torch's differ (`l2_reg` changes
`p.grad` in place, `do_wd` read per bucket, hypers override state as in `{**state, **hyper}`), and
returns False (nothing done) when it does not apply this step: then the chain runs. Tests
(`tests/test_fast_paths.py`) prove kernel, generic chain and per-param loop equal.
"""
import torch
from torch.autograd.graph import increment_version

from .recipe import kernel_inputs
from .tensor_list import zeros_like

__all__ = ["FusedKernel", "kernel_for", "FUSED_DTYPES", "FUSED_DEVICES"]

# Only these: half params reach a fused kernel as float32 shadows (half.py, backend.FUSED_OK_DTYPES)
FUSED_DTYPES = (torch.float64, torch.float32)
FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


class FusedKernel:
    "Runs a recipe's chain on a bucket with torch's fused kernels (the recipe's `FusedSpec`)."
    backend = "fused"

    def __init__(self, match):
        self.match, self.recipe, self.spec = match, match.recipe, match.recipe.fused
        self.decoupled, self.options = match.decoupled, match.options
        self.needs = self.spec.needs(self.options)

    def __repr__(self):
        return f"FusedKernel({self.match})"

    def usable(self, bucket):
        "Can the fused kernel take this bucket's tensors at all (checked once per bucket)?"
        data, grads = bucket.batch.data, bucket.batch.grad
        p0 = data[0]
        if p0.dtype not in FUSED_DTYPES or p0.device.type not in FUSED_DEVICES:
            return False
        for p, g in zip(data, grads):
            if g is None or g.dtype != p.dtype or g.device != p.device or g.shape != p.shape \
                    or g.is_sparse or p.is_sparse or type(p.data) is not torch.Tensor \
                    or not p.is_contiguous() or not g.is_contiguous():
                return False        # the fused kernels walk p, g and state in one memory order
        for v in bucket.state.values():
            if isinstance(v, list):
                if len(v) != len(data):
                    return False
                for t, p in zip(v, data):
                    if t.dtype != p.dtype or t.device != p.device or t.shape != p.shape \
                            or not t.is_contiguous():
                        return False
        return True

    def __call__(self, bucket, kw):
        inputs = kernel_inputs(kw, self.needs, self.spec.counts_steps)
        if inputs is None:
            return False
        hv, step = inputs
        if not self.spec.run(self, bucket, hv, step, kw.get("do_wd", True)):
            return False
        increment_version(bucket.batch.data)   # torch's fused kernels do not bump it
        if step is not None:
            bucket.state["step"] = step
        return True

    # ---- what the specs' run functions share ---------------------------------------------------
    def decay_apart(self, bucket, lr, wd, do_wd):
        "The chain's decay stepper, run apart from the fused kernel (foreach ops)."
        if not do_wd or wd == 0:
            return
        if self.decoupled:
            torch._foreach_mul_(bucket.batch.data, 1 - lr * wd)
        else:
            torch._foreach_add_(bucket.batch.grad, bucket.batch.data, alpha=wd)

    def zeros(self, bucket, key):
        "The bucket's state `key`, created as the chain would (zeros like the grads) if missing."
        st = bucket.state
        v = st.get(key)
        if v is None:
            v = st[key] = zeros_like(bucket.batch.grad)   # flat buckets stay flat
        return v

    def step_tensors(self, bucket, step):
        "The same 0-d step tensor repeated (the fused kernels read it per param; never write it)."
        ks = bucket.kernel_state
        t = ks.get("step_t")
        if t is None:
            t = ks["step_t"] = torch.zeros((), dtype=torch.float32, device=bucket.params[0].device)
            ks["steps"] = [t] * len(bucket.batch.data)
        t.fill_(step)
        return ks["steps"]


def kernel_for(match):
    "The FusedKernel of a recognised chain, or None where its recipe has no fused spec."
    if match is None or match.recipe.fused is None or not match.recipe.fused.applies(match.options):
        return None
    return FusedKernel(match)
