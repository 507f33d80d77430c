"""Chain kernels: whole-bucket substitutes for the stepper chains of the built-in optimizers.

A stepper chain is the reference: `steppers.py` holds each stepper's math once, and the generic
multi-tensor path runs it on `TensorList`s. For a few chains torch has a kernel that does the
whole update of a parameter in one memory pass (`torch._fused_adam_`, `_fused_adamw_`,
`_fused_sgd_`); `match_chain(cbs)` recognises those chains by their stepper functions and partial
keywords and returns a `ChainKernel` that runs a bucket with it instead. On CPU, contiguous
float32/float64 buckets of every built-in chain run the native kernels first (`native.py`); these
torch kernels take the other buckets (CUDA, other dtypes, or native kernels unavailable/off).

A kernel:
- reads and writes exactly the bucket state the chain would (`grad_avg`, `sqr_avg` TensorLists,
  `step` a Python int), so `opt.state`, `state_dict` and checkpoints do not know which ran;
- keeps fastai's semantics where torch's differ: `l2_reg` changes `p.grad` in place (fastai does),
  `do_wd` is read per bucket, hypers override state as in `{**state, **hyper}`;
- returns False (nothing done) when it does not apply this step — a hyper that is not a plain
  number, a dtype or device the fused kernel lacks, mismatched state — and the generic chain runs.
  Tests (`tests/test_fast_paths.py`) prove kernel, generic chain and per-param loop equal.
"""
import math
import numbers
from functools import partial

import torch
from torch.autograd.graph import increment_version

from . import steppers as S

__all__ = ["ChainKernel", "match_chain", "KERNELS"]

_FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _norm_cb(cb):
    "(function, frozen keywords) of a stepper, or None if it has positional partial args."
    kw = {}
    chain = []
    while isinstance(cb, partial):
        if cb.args:
            return None
        chain.append(cb.keywords)
        cb = cb.func
    for k in reversed(chain):            # outer partials override inner ones
        kw.update(k)
    return cb, kw


def _num(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


class ChainKernel:
    "Base: a whole-bucket implementation of one stepper chain."
    name = "?"
    needs = ()                              # hypers that must be plain finite numbers
    _is_num = staticmethod(_num)

    def __init__(self, decoupled):
        self.decoupled = decoupled          # weight_decay (True) or l2_reg (False) first

    def __repr__(self):
        return f"{type(self).__name__}({'weight_decay' if self.decoupled else 'l2_reg'})"

    def usable(self, bucket):
        "Can the fused kernel take this bucket's tensors at all (checked once per bucket)?"
        data, grads = bucket.batch.data, bucket.batch.grad
        p0 = data[0]
        if p0.dtype not in _FUSED_DTYPES or p0.device.type not in _FUSED_DEVICES:
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

    def _hypers(self, kw):
        try:
            vals = [kw[k] for k in self.needs]
        except KeyError:
            return None
        return vals if all(map(self._is_num, vals)) else None

    def _decay(self, bucket, lr, wd, do_wd):
        """The chain's first stepper when it must run apart from the fused kernel. Returns the wd
        left for the kernel to apply (0 when done here)."""
        if not do_wd or wd == 0:
            return
        if self.decoupled:
            torch._foreach_mul_(bucket.batch.data, 1 - lr * wd)
        else:
            torch._foreach_add_(bucket.batch.grad, bucket.batch.data, alpha=wd)

    def _zeros(self, bucket, key):
        st = bucket.state
        v = st.get(key)
        if v is None:
            v = st[key] = S.zeros_like(bucket.batch.grad)
        return v

    def _step_tensors(self, bucket, step):
        "The same 0-d step tensor repeated (the fused kernels read it per param; never write it)."
        ks = bucket.kernel_state
        t = ks.get("step_t")
        if t is None:
            t = ks["step_t"] = torch.zeros((), dtype=torch.float32, device=bucket.params[0].device)
            ks["steps"] = [t] * len(bucket.batch.data)
        t.fill_(step)
        return ks["steps"]


class AdamKernel(ChainKernel):
    """[weight_decay|l2_reg, average_grad(dampening=True), average_sqr_grad, step_stat, adam_step]
    as one `_fused_adamw_` (decoupled wd inside the kernel) or `_fused_adam_` call."""
    name = "fused_adam"
    needs = ("lr", "mom", "sqr_mom", "eps", "wd")

    def __call__(self, bucket, kw):
        h = self._hypers(kw)
        if h is None:
            return False
        lr, mom, sqr_mom, eps, wd = h
        step = kw.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool):
            return False
        step += 1
        do_wd = kw.get("do_wd", True)
        m, v = self._zeros(bucket, "grad_avg"), self._zeros(bucket, "sqr_avg")
        b = bucket.batch
        if self.decoupled:
            fwd = wd if (do_wd and wd != 0) else 0.
            torch._fused_adamw_(b.data, b.grad, m, v, [], self._step_tensors(bucket, step), lr=lr,
                                beta1=mom, beta2=sqr_mom, weight_decay=fwd, eps=eps,
                                amsgrad=False, maximize=False)
            increment_version(b.data)   # torch's fused kernels do not bump it
        else:
            self._decay(bucket, lr, wd, do_wd)
            torch._fused_adam_(b.data, b.grad, m, v, [], self._step_tensors(bucket, step), lr=lr,
                               beta1=mom, beta2=sqr_mom, weight_decay=0., eps=eps,
                               amsgrad=False, maximize=False)
            increment_version(b.data)   # torch's fused kernels do not bump it
        bucket.state["step"] = step
        return True


class RAdamKernel(ChainKernel):
    """[wd|l2, average_grad(dampening=True), average_sqr_grad, step_stat, radam_step] with beta 0:
    once the rectification is defined (r > 5) the step is Adam's with lr * v_r, so one
    `_fused_adam_` call; the first (unrectified) steps and SAdam (beta != 0) run the chain."""
    name = "fused_radam"
    needs = ("lr", "mom", "sqr_mom", "eps", "wd", "beta")

    def __call__(self, bucket, kw):
        h = self._hypers(kw)
        if h is None:
            return False
        lr, mom, sqr_mom, eps, wd, beta = h
        step = kw.get("step", 0)
        if beta or not isinstance(step, int) or isinstance(step, bool):
            return False
        step += 1
        r_inf = 2 / (1 - sqr_mom) - 1
        r = r_inf - 2 * step * sqr_mom ** step / (1 - sqr_mom ** step)
        if not r > 5:
            return False
        vr = math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))
        self._decay(bucket, lr, wd, kw.get("do_wd", True))
        m, v = self._zeros(bucket, "grad_avg"), self._zeros(bucket, "sqr_avg")
        b = bucket.batch
        torch._fused_adam_(b.data, b.grad, m, v, [], self._step_tensors(bucket, step),
                           lr=lr * vr, beta1=mom, beta2=sqr_mom, weight_decay=0., eps=eps,
                           amsgrad=False, maximize=False)
        increment_version(b.data)   # torch's fused kernels do not bump it
        bucket.state["step"] = step
        return True


class SGDMomentumKernel(ChainKernel):
    """[wd|l2, average_grad (undampened), momentum_step] as one `_fused_sgd_` call:
    grad_avg = mom * grad_avg + g; p -= lr * grad_avg."""
    name = "fused_sgd"
    needs = ("lr", "mom", "wd")

    def __call__(self, bucket, kw):
        h = self._hypers(kw)
        if h is None:
            return False
        lr, mom, wd = h
        if mom == 0:
            return False
        self._decay(bucket, lr, wd, kw.get("do_wd", True))
        buf = self._zeros(bucket, "grad_avg")
        b = bucket.batch
        torch._fused_sgd_(b.data, b.grad, buf, weight_decay=0., momentum=mom, lr=lr,
                          dampening=0., nesterov=False, maximize=False, is_first_step=False)
        increment_version(b.data)   # torch's fused kernels do not bump it
        return True


def _is(cb, f, **kw):
    return cb is not None and cb[0] is f and cb[1] == kw


def match_chain(cbs):
    "The ChainKernel that runs stepper chain `cbs`, or None if no kernel knows it."
    n = [_norm_cb(cb) for cb in cbs]
    if not n or n[0] is None or n[0][0] not in (S.weight_decay, S.l2_reg) or n[0][1]:
        return None
    decoupled = n[0][0] is S.weight_decay
    rest = n[1:]
    if len(rest) == 4 and _is(rest[0], S.average_grad, dampening=True) and \
            (_is(rest[1], S.average_sqr_grad) or _is(rest[1], S.average_sqr_grad, dampening=True)) \
            and _is(rest[2], S.step_stat):
        if _is(rest[3], S.adam_step):
            return AdamKernel(decoupled)
        if _is(rest[3], S.radam_step):
            return RAdamKernel(decoupled)
    if len(rest) == 2 and (_is(rest[0], S.average_grad) or
                           _is(rest[0], S.average_grad, dampening=False)) \
            and _is(rest[1], S.momentum_step):
        return SGDMomentumKernel(decoupled)
    return None


KERNELS = (AdamKernel, RAdamKernel, SGDMomentumKernel)
