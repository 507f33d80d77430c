"""Native CPU kernels for the built-in stepper chains (`csrc/pyfastopt_kernels.c`).

A chain run as torch ops makes several memory passes with temporaries, and on a bucket of many
small tensors every `torch._foreach_*` op costs about a microsecond per tensor. The C source has
one function per built-in chain that updates each element of each tensor of a bucket in one pass
(two for Larc and Lamb, which need per-tensor norms first), in the tensor's own precision and in
the order of the steppers' torch ops, so the numbers are the chain's.

The source is compiled at first use with the system C compiler into a private, verified cache
and loaded with ctypes (`native_build.py`: where, and what is checked before loading). No
compiler, a failed compile (one warning) or `PYFASTOPT_NATIVE=0` leave everything on the torch
paths, with the same numbers.

`match_chain(cbs)` returns the `NativeKernel` for a chain, or None. A kernel runs a CPU bucket of
contiguous float32/float64 tensors whose hypers are plain numbers; it reads and writes the state
the chain would (`grad_avg`, `sqr_avg` per-param tensors, `step` an int, Larc's `local_lr`).
"""
import ctypes
import math

import torch
from torch.autograd.graph import increment_version

from . import native_build
from . import steppers as S
from .kernels import ChainKernel, _norm_cb
from .tensor_list import TensorList

# the build and load machinery lives in native_build; these names stay importable from here
from .native_build import (CFLAGS, SOURCE, _cache_dir, _compile, _cpu_id, _warn,  # noqa: F401
                           compile_info, enabled, find_compiler)

__all__ = ["available", "enabled", "load", "match_chain", "NativeKernel", "compile_info"]

F_DECAY, F_L2, F_MOM, F_RECT, F_CLIP, F_EPS = 1, 2, 4, 8, 16, 32
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def load():
    "The library with every kernel `_declare` needs checked and declared, or None (one warning)."
    return native_build.load(_declare)


def available():
    "Whether native kernels can run here (compiles on first call)."
    return enabled() and load() is not None


def _declare(lib):
    vp, i64p, dp = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
    c_int = ctypes.c_int
    sig = {
        "sgd": [c_int, vp, vp, vp, i64p, dp, c_int],
        "rmsprop": [c_int, vp, vp, vp, vp, i64p, dp, c_int],
        "adam": [c_int, vp, vp, vp, vp, i64p, dp, c_int],
        "qhadam": [c_int, vp, vp, vp, vp, i64p, dp, c_int],
        "larc": [c_int, vp, vp, vp, i64p, dp, c_int, vp, vp],
        "lamb": [c_int, vp, vp, vp, vp, i64p, dp, c_int],
        "lookahead": [c_int, vp, vp, i64p, ctypes.c_double],
    }
    for name, args in sig.items():
        for sfx in ("f32", "f64"):
            f = getattr(lib, f"pfo_{name}_{sfx}")
            f.argtypes, f.restype = args, None


def _num(x):
    return type(x) in (float, int) and math.isfinite(x)


def lookahead_sync(slow, fast, alpha):
    """Lookahead's `slow += alpha * (fast - slow); fast = slow` over two lists of CPU tensors of
    one float dtype, in one native pass. Returns False (nothing done) where it does not apply."""
    if not slow or not enabled() or load() is None or not _num(alpha):
        return False
    s0 = slow[0]
    if s0.dtype not in _SUFFIX or s0.device.type != "cpu":
        return False
    if not all(s.dtype == s0.dtype and _tensor_ok(s, s) and _tensor_ok(f, s)
               for s, f in zip(slow, fast)):
        return False
    n = len(slow)
    arr = ctypes.c_void_p * n
    fn = getattr(load(), f"pfo_lookahead_{_SUFFIX[s0.dtype]}")
    fn(n, arr(*[s.data_ptr() for s in slow]), arr(*[f.data_ptr() for f in fast]),
       (ctypes.c_int64 * n)(*[s.numel() for s in slow]), float(alpha))
    increment_version(fast)
    increment_version(slow)
    return True


class _Arrays:
    "The pointer and length arrays of a bucket, built once, rebuilt when a storage moves."
    __slots__ = ("n", "lens", "P", "G", "M", "V", "pptr", "gptr", "m_list", "v_list", "h",
                 "out_lr", "clipped", "args")

    def __init__(self, params, grads, m_list, v_list, nh):
        n = self.n = len(params)
        arr = ctypes.c_void_p * n
        self.pptr = [p.data_ptr() for p in params]
        self.gptr = [g.data_ptr() for g in grads]
        self.P, self.G = arr(*self.pptr), arr(*self.gptr)
        self.M = arr(*[t.data_ptr() for t in m_list]) if m_list is not None else None
        self.V = arr(*[t.data_ptr() for t in v_list]) if v_list is not None else None
        self.m_list, self.v_list = m_list, v_list
        self.lens = (ctypes.c_int64 * n)(*[p.numel() for p in params])
        self.h = (ctypes.c_double * nh)()
        self.out_lr = self.clipped = None

    def valid(self, params, grads, m_list, v_list):
        return m_list is self.m_list and v_list is self.v_list \
            and list(map(torch.Tensor.data_ptr, params)) == self.pptr \
            and list(map(torch.Tensor.data_ptr, grads)) == self.gptr


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _tensor_ok(t, like):
    "A plain, dense, contiguous CPU tensor of `like`'s dtype and shape (cheap checks first)."
    return type(t) in _PLAIN_TYPES and t.is_cpu and t.dtype == like.dtype \
        and t.layout is torch.strided and t.is_contiguous() and not t.is_conj() \
        and not t.is_neg() and (t is like or t.shape == like.shape)


def param_ok(p):
    "Can a native kernel take this param and its grad (checked when the plan is built)."
    g = getattr(p, "grad", None)
    return p.dtype in _SUFFIX and g is not None and _tensor_ok(p.data, p) and _tensor_ok(g, p)


class LocalLR:
    """Larc's `local_lr` of a native bucket: the values one per param, turned into fastai's
    per-param values (`lr` itself where clipped, else a 0-d tensor) when the state is read."""
    __slots__ = ("values", "clipped", "lr", "dtype")

    def __init__(self, values, clipped, lr, dtype):
        self.values, self.clipped, self.lr, self.dtype = values, clipped, lr, dtype

    def unpack(self):
        ts = torch.tensor(list(self.values), dtype=self.dtype).unbind(0)
        return TensorList(self.lr if c else t for t, c in zip(ts, self.clipped))


class NativeKernel(ChainKernel):
    "Base: one native chain function over a bucket (see the module docstring)."
    name = "?"
    fn = "?"
    needs = ()
    uses_m = uses_v = False
    nh = 16
    _is_num = staticmethod(_num)        # ctypes takes Python numbers only



    def usable(self, bucket):
        if not enabled() or load() is None:
            return False
        ps = bucket.batch.data
        p0 = ps[0]
        if p0.dtype not in _SUFFIX or p0.device.type != "cpu":
            return False
        for p, g in zip(ps, bucket.batch.grad):
            if g is None or p.dtype != p0.dtype or not _tensor_ok(p, p) or not _tensor_ok(g, p):
                return False
        for k, v in bucket.state.items():
            if isinstance(v, TensorList) and k in ("grad_avg", "sqr_avg"):
                if len(v) != len(ps) or not all(_tensor_ok(t, p) for t, p in zip(v, ps)):
                    return False
        return True

    def _arrays(self, bucket):
        ks = bucket.kernel_state
        ps, gs = bucket.batch.data, bucket.batch.grad
        m = self._zeros(bucket, "grad_avg") if self.uses_m else None
        v = self._zeros(bucket, "sqr_avg") if self.uses_v else None
        a = ks.get("native")
        if a is not None:
            if a.valid(ps, gs, m, v):
                return a
            if not self.usable(bucket):      # a storage was swapped: check it all again
                return None
        # (else: first call; the plan attached this kernel only after `usable(bucket)`)
        a = ks["native"] = _Arrays(ps, gs, m, v, self.nh)
        return a

    def _decay(self, lr, wd, do_wd, h, i):
        "Fill decay_mul and l2_wd at h[i], h[i+1]; the flags they need."
        if do_wd and wd != 0:
            if self.decoupled:
                h[i], h[i + 1] = 1 - lr * wd, 0.
                return F_DECAY
            h[i], h[i + 1] = 1., wd
            return F_L2
        h[i], h[i + 1] = 1., 0.
        return 0

    def _call(self, a, bucket, flags, *extra):
        b = bucket.batch
        f = getattr(load(), f"pfo_{self.fn}_{_SUFFIX[b.data[0].dtype]}")
        args = [a.n, a.P, a.G, a.M]
        if self.fn not in ("sgd", "larc"):
            args.append(a.V)
        f(*args, a.lens, a.h, flags, *extra)
        # written through raw pointers: tell autograd, as torch's own in-place ops do, so that
        # a graph that saved a param (or, with l2_reg, a grad) still refuses to backward
        increment_version(b.data)
        if flags & F_L2:
            increment_version(b.grad)


def _step_of(kw):
    step = kw.get("step", 0)
    if type(step) is not int:
        return None
    return step + 1


class SGDKernel(NativeKernel):
    "[wd|l2, average_grad (undampened) if mom, momentum_step | sgd_step]"
    name, fn = "native_sgd", "sgd"

    def __init__(self, decoupled, mom):
        super().__init__(decoupled)
        self.has_mom = mom
        self.needs = ("lr", "mom", "wd") if mom else ("lr", "wd")
        self.uses_m = mom

    def __call__(self, bucket, kw):
        hv = self._hypers(kw)
        if hv is None:
            return False
        lr, wd = hv[0], hv[-1]
        mom = hv[1] if self.has_mom else 0.
        a = self._arrays(bucket)
        if a is None:
            return False
        h = a.h
        h[0], h[1], h[4] = lr, mom, 1.
        flags = self._decay(lr, wd, kw.get("do_wd", True), h, 2)
        if self.has_mom:
            flags |= F_MOM
        self._call(a, bucket, flags)
        return True


class RMSPropKernel(NativeKernel):
    "[wd|l2, average_grad (undampened) if mom, average_sqr_grad, rms_prop_step]"
    name, fn = "native_rmsprop", "rmsprop"
    uses_v = True

    def __init__(self, decoupled, mom, damp2):
        super().__init__(decoupled)
        self.has_mom, self.damp2 = mom, damp2
        self.uses_m = mom
        self.needs = ("lr", "mom", "sqr_mom", "eps", "wd") if mom else ("lr", "sqr_mom", "eps", "wd")

    def __call__(self, bucket, kw):
        hv = self._hypers(kw)
        if hv is None:
            return False
        if self.has_mom:
            lr, mom, sqr_mom, eps, wd = hv
        else:
            (lr, sqr_mom, eps, wd), mom = hv, 0.
        a = self._arrays(bucket)
        if a is None:
            return False
        h = a.h
        h[0], h[1], h[2], h[3] = lr, mom, sqr_mom, eps
        flags = self._decay(lr, wd, kw.get("do_wd", True), h, 4)
        h[6], h[7] = 1., (1 - sqr_mom if self.damp2 else 1.)
        if self.has_mom:
            flags |= F_MOM
        self._call(a, bucket, flags)
        return True


class _AdamLike(NativeKernel):
    """The Adam family's kernels: the moving averages and step count of the chain, then the last
    stepper's update, which `_fill` sets up (hypers into `h`, extra flags; None to decline)."""
    uses_m = uses_v = True

    def __init__(self, decoupled, damp2):
        super().__init__(decoupled)
        self.damp2 = damp2

    def __call__(self, bucket, kw):
        hv = self._hypers(kw)
        step = _step_of(kw)
        if hv is None or step is None or not self._applies(hv):
            return False
        lr, mom, sqr_mom, eps, wd = hv[:5]
        a = self._arrays(bucket)
        if a is None:
            return False
        h = a.h
        h[1], h[2], h[3] = mom, sqr_mom, eps
        flags = self._decay(lr, wd, kw.get("do_wd", True), h, 4)
        h[6], h[7] = 1 - mom, (1 - sqr_mom if self.damp2 else 1.)
        flags |= self._fill(h, step, *hv)
        self._call(a, bucket, flags)
        bucket.state["step"] = step
        return True

    def _applies(self, hv):
        return True


class AdamKernel(_AdamLike):
    "[wd|l2, average_grad(dampening=True), average_sqr_grad, step_stat, adam_step]"
    name, fn = "native_adam", "adam"
    needs = ("lr", "mom", "sqr_mom", "eps", "wd")

    def _fill(self, h, step, lr, mom, sqr_mom, eps, wd):
        h[0] = -lr / S.debias(mom, 1 - mom, step)
        h[8] = S.debias(sqr_mom, 1 - sqr_mom, step)
        return F_RECT | F_EPS


class RAdamKernel(_AdamLike):
    "[wd|l2, average_grad(dampening=True), average_sqr_grad, step_stat, radam_step], beta == 0"
    name, fn = "native_radam", "adam"
    needs = ("lr", "mom", "sqr_mom", "eps", "wd", "beta")

    def _applies(self, hv):
        return not hv[5]                  # SAdam (beta != 0): softplus, the chain runs

    def _fill(self, h, step, lr, mom, sqr_mom, eps, wd, beta):
        debias1 = S.debias(mom, 1 - mom, step)
        h[8] = S.debias(sqr_mom, 1 - sqr_mom, step)
        r_inf = 2 / (1 - sqr_mom) - 1
        r = r_inf - 2 * step * sqr_mom ** step / (1 - sqr_mom ** step)
        if r > 5:
            v = math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))
            h[0] = -lr * v / debias1
            return F_RECT | (F_EPS if eps else 0)
        h[0] = -lr / debias1
        return 0


class QHAdamKernel(_AdamLike):
    "[wd|l2, average_grad(dampening=True), average_sqr_grad(dampening=True), step_stat, qhadam_step]"
    name, fn = "native_qhadam", "qhadam"
    needs = ("lr", "mom", "sqr_mom", "eps", "wd", "nu_1", "nu_2")

    def _fill(self, h, step, lr, mom, sqr_mom, eps, wd, nu_1, nu_2):
        h[0] = lr
        h[8] = S.debias(mom, 1 - mom, step)
        h[9] = S.debias(sqr_mom, 1 - sqr_mom, step)
        h[10], h[11], h[12], h[13] = 1 - nu_1, nu_1, 1 - nu_2, nu_2
        return 0


class LambKernel(_AdamLike):
    "[wd|l2, average_grad(dampening=True), average_sqr_grad, step_stat, lamb_step]"
    name, fn = "native_lamb", "lamb"
    needs = ("lr", "mom", "sqr_mom", "eps", "wd")

    def _fill(self, h, step, lr, mom, sqr_mom, eps, wd):
        h[0] = lr
        h[8] = S.debias(mom, 1 - mom, step)
        h[9] = S.debias(sqr_mom, 1 - sqr_mom, step)
        return 0


class LarcKernel(NativeKernel):
    "[wd|l2, average_grad (undampened) if mom, larc_layer_lr(clip), larc_step]"
    name, fn = "native_larc", "larc"

    def __init__(self, decoupled, mom, clip):
        super().__init__(decoupled)
        self.has_mom, self.clip = mom, clip
        self.uses_m = mom
        self.needs = ("lr", "mom", "wd", "trust_coeff", "eps") if mom else \
            ("lr", "wd", "trust_coeff", "eps")

    def __call__(self, bucket, kw):
        hv = self._hypers(kw)
        if hv is None:
            return False
        if self.has_mom:
            lr, mom, wd, tc, eps = hv
        else:
            (lr, wd, tc, eps), mom = hv, 0.
        a = self._arrays(bucket)
        if a is None:
            return False
        h = a.h
        h[0], h[1], h[4], h[5], h[6], h[7] = lr, mom, 1., lr * tc, wd, eps
        flags = self._decay(lr, wd, kw.get("do_wd", True), h, 2)
        if self.has_mom:
            flags |= F_MOM
        if self.clip:
            flags |= F_CLIP
        if a.out_lr is None:
            a.out_lr = (ctypes.c_double * a.n)()
            a.clipped = (ctypes.c_int32 * a.n)()
        self._call(a, bucket, flags, a.out_lr, a.clipped)
        # the arrays are only read when the state is written back, before the next call
        bucket.state["local_lr"] = LocalLR(a.out_lr, a.clipped, lr, bucket.batch.data[0].dtype)
        return True


def match_chain(cbs):
    "The NativeKernel for stepper chain `cbs` (a built-in factory's), or None."
    n = [_norm_cb(cb) for cb in cbs]
    if not n or any(x is None for x in n) or n[0][0] not in (S.weight_decay, S.l2_reg) or n[0][1]:
        return None
    decoupled = n[0][0] is S.weight_decay
    f = [x[0] for x in n[1:]]
    kws = [x[1] for x in n[1:]]

    def undamped(i):            # average_grad without dampening (the default)
        return f[i] is S.average_grad and not kws[i].get("dampening", False) \
            and set(kws[i]) <= {"dampening"}

    def damped(i):
        return f[i] is S.average_grad and kws[i] == {"dampening": True}

    def sqr(i):                 # average_sqr_grad, dampened (default) or not
        return f[i] is S.average_sqr_grad and set(kws[i]) <= {"dampening"}

    def sqr_damp(i):
        return kws[i].get("dampening", True)

    if f == [S.sgd_step] and not kws[0]:
        return SGDKernel(decoupled, mom=False)
    if len(f) == 2 and undamped(0) and f[1] is S.momentum_step and not kws[1]:
        return SGDKernel(decoupled, mom=True)
    if len(f) == 2 and sqr(0) and f[1] is S.rms_prop_step and not kws[1]:
        return RMSPropKernel(decoupled, mom=False, damp2=sqr_damp(0))
    if len(f) == 3 and undamped(0) and sqr(1) and f[2] is S.rms_prop_step and not kws[2]:
        return RMSPropKernel(decoupled, mom=True, damp2=sqr_damp(1))
    if len(f) == 4 and damped(0) and sqr(1) and f[2] is S.step_stat and not kws[2] \
            and not kws[3]:
        k = {S.adam_step: AdamKernel, S.radam_step: RAdamKernel, S.qhadam_step: QHAdamKernel,
             S.lamb_step: LambKernel}.get(f[3])
        if k is not None:
            return k(decoupled, damp2=sqr_damp(1))
    larc = None
    if len(f) == 2 and f[0] is S.larc_layer_lr and f[1] is S.larc_step and not kws[1]:
        larc, mom, kw = f, False, kws[0]
    elif len(f) == 3 and undamped(0) and f[1] is S.larc_layer_lr and f[2] is S.larc_step \
            and not kws[2]:
        larc, mom, kw = f, True, kws[1]
    if larc is not None and set(kw) <= {"clip"} and kw.get("clip", True) in (True, False):
        return LarcKernel(decoupled, mom=mom, clip=bool(kw.get("clip", True)))
    return None
