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

What each chain's C function takes is a named struct of `csrc/pyfastopt_kernels.h`, mirrored
here (`Bucket`, `Decay`, `Moments`) and in each family's recipe (`optimizers/<family>.py`, which
also packs the hypers). `kernel_for(match)` returns the `NativeKernel` that runs a recognised
chain: a CPU bucket of contiguous float32/float64 tensors whose hypers are plain numbers, reading
and writing the state the chain would (`grad_avg`, `sqr_avg` per-param tensors, `step` an int,
Larc's `local_lr`).
"""
import ctypes

import torch
from torch.autograd.graph import increment_version

from . import native_build
from .recipe import kernel_inputs, plain_number
from .tensor_list import TensorList, zeros_like

# the build and load machinery lives in native_build; these names stay importable from here
from .native_build import (ABI_VERSION, CFLAGS, SOURCE, _cache_dir, _compile,  # noqa: F401
                           _cpu_id, _warn, compile_info, enabled, find_compiler, source_text)

__all__ = ["available", "enabled", "load", "kernel_for", "NativeKernel", "compile_info", "Decay",
           "Moments", "Bucket", "doubles", "fill_moments", "lookahead_sync"]

F_DECAY, F_L2, F_MOM, F_ADAPTIVE, F_CLIP, F_EPS = 1, 2, 4, 8, 16, 32     # as in the C header
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def load():
    "The library with every kernel `_declare` needs checked and declared, or None (one warning)."
    return native_build.load(_declare)


def available():
    "Whether native kernels can run here (compiles on first call)."
    return enabled() and load() is not None


# ---- the boundary: ctypes mirrors of the structs of csrc/pyfastopt_kernels.h -------------------
def doubles(*names):
    "ctypes fields for C doubles named `names`."
    return [(n, ctypes.c_double) for n in names]


class Decay(ctypes.Structure):
    "pfo_decay: the chain's first stepper (p *= mul with F_DECAY, g += l2 * p with F_L2)."
    _c_name_ = "pfo_decay"
    _fields_ = doubles("mul", "l2")


class Moments(ctypes.Structure):
    "pfo_moments: m = mom * m + damp1 * g; v = sqr_mom * v + damp2 * g * g."
    _c_name_ = "pfo_moments"
    _fields_ = doubles("mom", "sqr_mom", "damp1", "damp2")


class Bucket(ctypes.Structure):
    "pfo_bucket: n tensors, one data-pointer array per role (null where a chain has no such state)."
    _c_name_ = "pfo_bucket"
    _fields_ = [("n", ctypes.c_int64), ("p", ctypes.c_void_p), ("g", ctypes.c_void_p),
                ("m", ctypes.c_void_p), ("v", ctypes.c_void_p), ("len", ctypes.c_void_p),
                ("out_lr", ctypes.c_void_p), ("clipped", ctypes.c_void_p)]


def _structs():
    from .recipe import recipes
    return [Bucket, Decay, Moments] + [r.native.hypers for r in recipes() if r.native is not None]


def _declare(lib):
    """Declare the kernels' signatures and check the library's structs against this module's
    mirrors; raises if a kernel is missing or a struct's size differs (the torch paths run then).
    The ABI version was checked by the loader (`native_build`)."""
    from .recipe import recipes
    vp = ctypes.c_void_p
    for sfx in _SUFFIX.values():
        for r in recipes():
            if r.native is not None:
                f = getattr(lib, f"pfo_{r.native.fn}_{sfx}")
                f.argtypes, f.restype = [vp, vp, ctypes.c_int], None
        f = getattr(lib, f"pfo_lookahead_{sfx}")
        f.argtypes, f.restype = [ctypes.c_int64, vp, vp, vp, ctypes.c_double], None
    lib.pfo_sizeof.argtypes, lib.pfo_sizeof.restype = [ctypes.c_char_p], ctypes.c_int64
    for st in _structs():
        size = lib.pfo_sizeof(st._c_name_.encode())
        if size != ctypes.sizeof(st):
            raise RuntimeError(f"struct {st._c_name_} is {size} bytes in C, "
                               f"{ctypes.sizeof(st)} in Python")


def lookahead_sync(slow, fast, alpha):
    """Lookahead's `slow += alpha * (fast - slow); fast = slow` over two lists of CPU tensors of
    one float dtype, in one native pass. Returns False (nothing done) where it does not apply."""
    if not slow or not enabled() or load() is None or not plain_number(alpha):
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


class _Arrays:
    "A bucket's pfo_bucket and the pointer arrays behind it, built once, rebuilt when a storage moves."
    __slots__ = ("n", "pptr", "gptr", "m_list", "v_list", "keep", "bucket", "addr", "out_lr",
                 "clipped", "grads")

    def __init__(self, params, grads, m_list, v_list, local_lr):
        n = self.n = len(params)
        arr = ctypes.c_void_p * n
        self.pptr = [p.data_ptr() for p in params]
        self.gptr = [g.data_ptr() for g in grads]
        self.grads = None           # the grads `set_grads` just pointed at
        self.m_list, self.v_list = m_list, v_list
        P, G = arr(*self.pptr), arr(*self.gptr)
        M = arr(*[t.data_ptr() for t in m_list]) if m_list is not None else None
        V = arr(*[t.data_ptr() for t in v_list]) if v_list is not None else None
        lens = (ctypes.c_int64 * n)(*[p.numel() for p in params])
        self.out_lr = (ctypes.c_double * n)() if local_lr else None
        self.clipped = (ctypes.c_int32 * n)() if local_lr else None
        self.keep = (P, G, M, V, lens)          # the C struct points into these
        addr = ctypes.addressof
        self.bucket = Bucket(n, addr(P), addr(G), M and addr(M), V and addr(V), addr(lens),
                             self.out_lr and addr(self.out_lr),
                             self.clipped and addr(self.clipped))
        self.addr = addr(self.bucket)

    def set_grads(self, grads):
        "Point the bucket at new grad tensors (checked by the caller)."
        self.gptr = list(map(torch.Tensor.data_ptr, grads))
        self.keep[1][:] = self.gptr
        self.grads = grads

    def valid(self, params, grads, m_list, v_list):
        if grads is self.grads:     # pointed at them just now: no need to read their pointers
            self.grads = None
        elif list(map(torch.Tensor.data_ptr, grads)) != self.gptr:
            return False
        return m_list is self.m_list and v_list is self.v_list \
            and list(map(torch.Tensor.data_ptr, params)) == self.pptr


def fill_decay(d, decoupled, lr, wd, do_wd):
    "The decay stepper's part of a kernel's hypers; returns its flag."
    if do_wd and wd != 0:
        if decoupled:
            d.mul, d.l2 = 1 - lr * wd, 0.
            return F_DECAY
        d.mul, d.l2 = 1., wd
        return F_L2
    d.mul, d.l2 = 1., 0.
    return 0


def fill_moments(avg, mom, sqr_mom, damp1, damp2):
    "The moving averages' part of a kernel's hypers."
    avg.mom, avg.sqr_mom, avg.damp1, avg.damp2 = mom, sqr_mom, damp1, damp2


class NativeKernel:
    """Runs a recipe's chain on a CPU bucket with one C call (the recipe's `NativeSpec`): the
    generic part — checks, pointer arrays, decay, the call, autograd's version counters and the
    state it writes back — is here once; what differs per family is the spec's `fill`."""
    backend = "native"

    def __init__(self, match):
        self.match, self.recipe, self.spec = match, match.recipe, match.recipe.native
        self.decoupled, self.options = match.decoupled, match.options
        self.needs = self.spec.needs(self.options)
        self.state_keys = self.spec.state(self.options)
        self.uses_m = "grad_avg" in self.state_keys
        self.uses_v = "sqr_avg" in self.state_keys
        self.h = self.spec.hypers()
        self.h_addr = ctypes.addressof(self.h)

    def __repr__(self):
        return f"NativeKernel({self.match})"

    def usable(self, bucket):
        "Can the C function take this bucket's tensors (checked when the bucket is built)?"
        if not enabled() or load() is None:
            return False
        ps = bucket.batch.data
        p0 = ps[0]
        if p0.dtype not in _SUFFIX or p0.device.type != "cpu":
            return False
        for p, g in zip(ps, bucket.batch.grad):
            if g is None or p.dtype != p0.dtype or not _tensor_ok(p, p) or not _tensor_ok(g, p):
                return False
        for k in self.state_keys:
            v = bucket.state.get(k)
            if isinstance(v, TensorList) and (len(v) != len(ps) or
                                              not all(_tensor_ok(t, p) for t, p in zip(v, ps))):
                return False
        return True

    def _zeros(self, bucket, key):
        st = bucket.state
        v = st.get(key)
        if v is None:
            v = st[key] = zeros_like(bucket.batch.grad)
        return v

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
        a = ks["native"] = _Arrays(ps, gs, m, v, self.spec.local_lr)
        return a

    def regrad(self, bucket):
        """New grad tensors for the bucket's params (`Engine.regrad` has checked that they have
        the old ones' type, dtype and contiguity; torch's `.grad` setter, their shape and device):
        check what is left of `_tensor_ok` (the neg bit) and re-point the arrays."""
        gs = bucket.batch.grad
        if any(map(torch.Tensor.is_neg, gs)):
            return False
        a = bucket.kernel_state.get("native")
        if a is not None:
            a.set_grads(gs)
        return True

    def __call__(self, bucket, kw):
        inputs = kernel_inputs(kw, self.needs, self.spec.counts_steps)
        if inputs is None:
            return False
        hv, step = inputs
        h = self.h
        flags = self.spec.fill(h, self.options, hv, step)
        if flags is None:
            return False
        flags |= fill_decay(h.decay, self.decoupled, hv["lr"], hv["wd"], kw.get("do_wd", True))
        a = self._arrays(bucket)
        if a is None:
            return False
        b = bucket.batch
        getattr(load(), f"pfo_{self.spec.fn}_{_SUFFIX[b.data[0].dtype]}")(a.addr, self.h_addr, flags)
        # written through raw pointers: tell autograd, as torch's own in-place ops do, so that
        # a graph that saved a param (or, with l2_reg, a grad) still refuses to backward
        increment_version(b.data)
        if flags & F_L2:
            increment_version(b.grad)
        if step is not None:
            bucket.state["step"] = step
        if self.spec.local_lr:
            # the arrays are only read when the state is written back, before the next call
            bucket.state["local_lr"] = LocalLR(a.out_lr, a.clipped, hv["lr"], b.data[0].dtype)
        return True


def kernel_for(match):
    "The NativeKernel of a recognised chain, or None where its recipe has no native spec."
    return NativeKernel(match) if match is not None and match.recipe.native is not None else None
