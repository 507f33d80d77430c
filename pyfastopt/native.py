"""Native CPU kernels for the built-in stepper chains (`csrc/pyfastopt_kernels.c`).

A chain run as torch ops makes several memory passes with temporaries, and on a bucket of many
small tensors every `torch._foreach_*` op costs about a microsecond per tensor. The C source has
one function per built-in chain that updates each element of each tensor of a bucket in one pass
(two for Larc and Lamb, which need per-tensor norms first), in the tensor's own precision and in
the order of the steppers' torch ops, so the numbers are the chain's.

The source is compiled at first use with the system C compiler (`$CC`, else `cc`, `gcc` or
`clang`) into `$PYFASTOPT_CACHE` (default `~/.cache/pyfastopt/`), under a name keyed by a hash of
the source, the flags, the compiler and the CPU, written atomically, and loaded with ctypes. No
compiler, a failed compile (one warning) or `PYFASTOPT_NATIVE=0` leave everything on the torch
paths, with the same numbers.

What each chain's C function takes is a named struct of `csrc/pyfastopt_kernels.h`, mirrored
here (`Bucket`, `Decay`, `Moments`) and in each family's recipe (`optimizers/<family>.py`, which
also packs the hypers). `kernel_for(match)` returns the `NativeKernel` that runs a recognised
chain: a CPU bucket of contiguous float32/float64 tensors whose hypers are plain numbers, reading
and writing the state the chain would (`grad_avg`, `sqr_avg` per-param tensors, `step` an int,
Larc's `local_lr`).
"""
import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import torch
from torch.autograd.graph import increment_version

from .recipe import chain_hypers, chain_step, plain_number
from .tensor_list import TensorList, zeros_like

__all__ = ["available", "enabled", "load", "kernel_for", "NativeKernel", "compile_info", "Decay",
           "Moments", "Bucket", "doubles", "fill_moments", "lookahead_sync"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "pyfastopt_kernels.c")
HEADER = os.path.join(os.path.dirname(SOURCE), "pyfastopt_kernels.h")
CFLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off",
          "-fno-math-errno"]
F_DECAY, F_L2, F_MOM, F_ADAPTIVE, F_CLIP, F_EPS = 1, 2, 4, 8, 16, 32     # as in the C header
ABI_VERSION = 2
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_lib = None            # the loaded library, False once loading failed (never retried)
_warned = False
compile_info = {}      # what the last load did: path, compiled (bool), seconds


def enabled():
    "Native kernels are on unless `PYFASTOPT_NATIVE=0` (read at each plan build)."
    return os.environ.get("PYFASTOPT_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def find_compiler():
    cc = os.environ.get("CC")
    if cc and shutil.which(cc.split()[0]):
        return cc.split()
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _cache_dir():
    d = os.environ.get("PYFASTOPT_CACHE")
    return d if d else os.path.join(os.path.expanduser("~"), ".cache", "pyfastopt")


def _cpu_id():
    "What -march=native depends on: the CPU model and its flags."
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines()[:40]
                     if ln.startswith(("model name", "flags"))]
        return "\n".join(lines[:2])
    except OSError:
        return platform.processor()


def _warn(msg):
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"pyfastopt: native CPU kernels unavailable ({msg}); using the torch paths "
                      "(same numbers). Set PYFASTOPT_NATIVE=0 to silence.", RuntimeWarning,
                      stacklevel=3)


def source_text():
    "The kernels' translation unit: the C file with its header inlined (one file to compile and hash)."
    with open(HEADER) as f:
        header = f.read()
    with open(SOURCE) as f:
        src = f.read()
    return src.replace('#include "pyfastopt_kernels.h"', header, 1)


def _compile(cc, src_text, out):
    d = os.path.dirname(out)
    os.makedirs(d, exist_ok=True)
    fd, tmp_src = tempfile.mkstemp(suffix=".c", dir=d)
    tmp_so = tmp_src[:-2] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(src_text)
        r = subprocess.run([*cc, *CFLAGS, "-o", tmp_so, tmp_src, "-lm"], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {r.stderr.strip()[-500:]}")
        os.replace(tmp_so, out)          # atomic: a concurrent compile replaces it with the same
    finally:
        for f in (tmp_src, tmp_so):
            with contextlib.suppress(OSError):      # already renamed, or never written
                os.unlink(f)


def load():
    "The ctypes library (compiled on first use), or None when unavailable."
    global _lib
    if _lib is not None:
        return _lib or None
    _lib = False
    if sys.platform == "win32":
        return None
    cc = find_compiler()
    try:
        src = source_text()
    except OSError as e:
        _warn(f"source missing: {e}")
        return None
    if cc is None:
        _warn("no C compiler found (set CC)")
        return None
    try:
        ver = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.splitlines()[:1]
    except Exception:  # noqa: BLE001
        ver = []
    key = hashlib.sha256("\0".join([src, " ".join(CFLAGS), " ".join(cc), *ver, _cpu_id(),
                                    platform.machine()]).encode()).hexdigest()[:20]
    path = os.path.join(_cache_dir(), f"pyfastopt_kernels_{key}.so")
    import time
    t0 = time.perf_counter()
    compiled = False
    try:
        if not os.path.exists(path):
            _compile(cc, src, path)
            compiled = True
        lib = ctypes.CDLL(path)
        _declare(lib)
    except Exception as e:  # noqa: BLE001 - any failure means: stay on the torch paths
        _warn(str(e))
        return None
    compile_info.update(path=path, compiled=compiled, seconds=time.perf_counter() - t0)
    _lib = lib
    return lib


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
    """Check the library against this module (ABI version, every struct's size) and declare the
    kernels' signatures; raises if anything is missing or differs (the torch paths run then)."""
    if lib.pfo_abi_version() != ABI_VERSION:
        raise RuntimeError(f"ABI version {lib.pfo_abi_version()}, expected {ABI_VERSION}")
    lib.pfo_sizeof.argtypes, lib.pfo_sizeof.restype = [ctypes.c_char_p], ctypes.c_int64
    for st in _structs():
        size = lib.pfo_sizeof(st._c_name_.encode())
        if size != ctypes.sizeof(st):
            raise RuntimeError(f"struct {st._c_name_} is {size} bytes in C, "
                               f"{ctypes.sizeof(st)} in Python")
    from .recipe import recipes
    vp = ctypes.c_void_p
    for sfx in _SUFFIX.values():
        for r in recipes():
            if r.native is not None:
                f = getattr(lib, f"pfo_{r.native.fn}_{sfx}")
                f.argtypes, f.restype = [vp, vp, ctypes.c_int], None
        f = getattr(lib, f"pfo_lookahead_{sfx}")
        f.argtypes, f.restype = [ctypes.c_int64, vp, vp, vp, ctypes.c_double], None


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
        hv = chain_hypers(kw, self.needs)
        if hv is None:
            return False
        step = chain_step(kw) if self.spec.counts_steps else None
        if self.spec.counts_steps and step is None:
            return False
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
