"""Native CPU kernels (`pyfastopt/native.py`, `csrc/pyfastopt_kernels.c`): every built-in chain
gives the per-param reference's numbers and state (float32 within 1e-6 of each tensor's scale,
float64 within 1e-12), the kernels really run, stale pointers are never used, turning them off
changes nothing, checkpoints move between paths, and a step keeps no scratch memory.

The kernels are compiled in this test session (first use); the tests skip only when no C
compiler is on PATH."""
import contextlib
import ctypes
import io
import os
import subprocess
import sys
import threading
import warnings
from functools import partial

import pytest
import torch

import pyfastopt as po
from helpers import close_scaled as close, native_off, same_state
from optim_db import rows
from pyfastopt import native, native_build
from pyfastopt.recipe import recipe_for

pytestmark = pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler on PATH")

# the native chains of the optimizer table (tests/optim_db.py), each with either decay stepper
NATIVE_ROWS = rows("SGD", "SGD_mom", "RMSProp", "RMSProp_mom", "Adam", "RAdam", "RAdam_eps0",
                   "QHAdam", "Larc", "Larc_nomom", "Larc_noclip", "Lamb", "Lion")
CHAINS = {r.name: (lambda ps, dw, row=r: row.make(ps, decouple_wd=dw)) for r in NATIVE_ROWS}
# the recipe (pyfastopt/optimizers/<family>.py) whose native kernel each chain gets
KERNEL = {r.name: r.recipe for r in NATIVE_ROWS}


def native_recipe(kernel):
    "The recipe name of a bucket's kernel if it is a native one, else None."
    return kernel.recipe.name if isinstance(kernel, native.NativeKernel) else None
# 0-d to 4-D, a vectorised length with a tail, a length-1 tensor
SHAPES = [(), (1,), (5,), (3, 4), (2, 3, 4), (2, 1, 3, 2), (40, 31), (17,), (6, 6), (3,)]




def make_params(dtype):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    return [ps[:6], ps[6:]]


def grads_for(ps, i, g, dtype):
    "Random grads, some None; a few scaled so that Larc clips some local_lr and not others."
    out = []
    for j, p in enumerate(ps):
        if (i + j) % 5 == 0:
            out.append(None)
        else:
            scale = 1e-3 if j % 3 == 0 else 1.
            out.append((torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(dtype))
    return out


def run(name, decoupled, dtype, mode="native", steps=12, opt_hook=None):
    groups = make_params(dtype)
    opt = CHAINS[name](groups, decoupled)
    opt.set_hyper("lr", [opt.hypers[0]["lr"] / 2, opt.hypers[1]["lr"]])  # groups differ
    ps = [p for pl in groups for p in pl]
    opt.state[ps[2]]["do_wd"] = False
    opt.state[ps[7]]["do_wd"] = False
    if mode == "per_param":
        opt.impl = "per_param"
    g = torch.Generator().manual_seed(1)
    ctx = native_off() if mode == "off" else contextlib.nullcontext()
    with ctx:
        for i in range(steps):
            for p, gr in zip(ps, grads_for(ps, i, g, dtype)):
                p.grad = gr
            opt.step()
            if mode == "native" and i > 0:
                kinds = [native_recipe(b.kernel) for b in opt._plan.buckets]
                assert kinds and all(k == KERNEL[name] for k in kinds), kinds
            if opt_hook is not None:
                opt_hook(opt, ps, i)
    return ps, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("name", list(CHAINS))
def test_native_matches_per_param(name, decoupled, dtype):
    ref_ps, ref = run(name, decoupled, dtype, "per_param")
    ps, opt = run(name, decoupled, dtype, "native")
    for a, b in zip(ps, ref_ps):
        close(a, b, dtype)
    same_state(opt.state, ps, ref.state, ref_ps, lambda a, b: close(a, b, dtype),
               close_float=lambda a, b: close(a, b, torch.float64))


def test_chains_recognised():
    p = [torch.randn(3)]
    for name, k in KERNEL.items():
        m = recipe_for(CHAINS[name](p, True).cbs)
        assert m.recipe.name == k and m.recipe.native is not None and m.decoupled, name
        assert recipe_for(CHAINS[name](p, False).cbs).decoupled is False
    # user chains that differ are not matched
    assert recipe_for([po.weight_decay, po.average_grad, po.average_sqr_grad,
                       po.step_stat, po.adam_step]) is None
    assert recipe_for([po.weight_decay, po.sgd_step, po.sgd_step]) is None
    assert recipe_for([po.sgd_step]) is None
    # a hyper frozen into a partial is not what a kernel reads: the chain runs
    assert recipe_for([po.weight_decay, partial(po.sgd_step, lr=0.1)]) is None


def test_larc_local_lr_types():
    "fastai on CPU: `lr` itself (a Python float) where clipped, else a 0-d tensor."
    ps, opt = run("Larc", True, torch.float32, steps=4)
    vals = [opt.state[p].get("local_lr") for p in ps if "local_lr" in opt.state[p]]
    assert any(type(v) is float for v in vals) and any(isinstance(v, torch.Tensor) for v in vals)
    for v in vals:
        if isinstance(v, torch.Tensor):
            assert v.ndim == 0 and v.dtype == torch.float32 and float(v) < 0.1
    ps, opt = run("Larc_noclip", True, torch.float64, steps=3)
    vals = [opt.state[p]["local_lr"] for p in ps if "local_lr" in opt.state[p]]
    assert vals and all(isinstance(v, torch.Tensor) and v.ndim == 0 and
                        v.dtype == torch.float64 for v in vals)


@pytest.mark.parametrize("name", ["Adam", "Lamb", "Larc", "RMSProp_mom"])
def test_pointer_swap(name):
    "`p.data = ...` and `p.grad.data = ...` keep the tensor objects but move the storage: the"
    " kernel must step the new storage, never the old one."
    def swap(opt, ps, i):
        if i == 3:
            old = ps[3].data
            ps[3].data = ps[3].data.clone()
            old.fill_(123.)               # the old storage must not be touched again
            swap.old = old
            ps[8].grad.data = ps[8].grad.data.clone()   # same grad object, new storage
    ps_ref, ref = run(name, True, torch.float64, "per_param", opt_hook=swap)
    ps, opt = run(name, True, torch.float64, "native", opt_hook=swap)
    assert torch.all(swap.old == 123.)
    for a, b in zip(ps, ps_ref):
        close(a, b, torch.float64)


@pytest.mark.parametrize("name", ["Adam", "QHAdam", "Larc", "Lamb", "SGD"])
def test_disabled_same_numbers_no_warning(name):
    ps_n, _ = run(name, False, torch.float32, "native")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps_off, opt = run(name, False, torch.float32, "off")
        with native_off():
            assert not native.available()
            assert not any(isinstance(b.kernel, native.NativeKernel) for b in opt._plan.buckets)
    for a, b in zip(ps_n, ps_off):
        close(a, b, torch.float32)


def test_compile_failure_falls_back(monkeypatch, tmp_path):
    "A failed load means the torch paths (one warning at most), same numbers."
    monkeypatch.setattr(native_build, "_lib", None)
    monkeypatch.setattr(native_build, "_warned", False)
    monkeypatch.setattr(native_build, "_compiler", lambda: (None, "no C compiler found"))
    monkeypatch.setenv("PYFASTOPT_CACHE", str(tmp_path))     # empty: nothing cached to load
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
        assert native.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None          # no second warning, no retry
        ps, opt = run("Lamb", True, torch.float64, "off")
    ref_ps, _ = run("Lamb", True, torch.float64, "per_param")
    for a, b in zip(ps, ref_ps):
        close(a, b, torch.float64)


def test_compile_atomic_concurrent(tmp_path):
    "Two compiles of the same library at once both succeed; the file is whole and loads."
    src = native.source_text()
    out = str(tmp_path / "k.so")
    errs = []

    def go():
        try:
            native._compile(native.find_compiler(), src, out)
        except Exception as e:  # noqa: BLE001
            errs.append(e)
    ts = [threading.Thread(target=go) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    assert ctypes.CDLL(out).pfo_abi_version() == native.ABI_VERSION
    assert sorted(os.listdir(tmp_path)) == ["k.so", "k.so.sha256"]     # no temporaries left


@pytest.mark.parametrize("name", ["Adam", "Lamb", "Larc", "RAdam"])
def test_state_dict_moves(name):
    "Checkpoint on one path, load on another, continue: the uninterrupted reference's numbers."
    ref_ps, _ = run(name, True, torch.float64, "per_param", steps=10)
    for a, b in [("native", "per_param"), ("per_param", "native"), ("off", "native"),
                 ("native", "off")]:
        ps1, o1 = run(name, True, torch.float64, a, steps=6)
        buf = io.BytesIO()
        torch.save(o1.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
        ps2 = [p.detach().clone() for p in ps1]
        o2 = CHAINS[name]([ps2[:6], ps2[6:]], True)
        o2.load_state_dict(sd)
        if b == "per_param":
            o2.impl = "per_param"
        g = torch.Generator().manual_seed(1)
        with native_off() if b == "off" else contextlib.nullcontext():
            for i in range(10):
                grads = grads_for(ps2, i, g, torch.float64)
                if i < 6:
                    continue
                for p, gr in zip(ps2, grads):
                    p.grad = gr
                o2.step()
        for x, y in zip(ps2, ref_ps):
            close(x, y, torch.float64)


def test_no_scratch_and_no_growth():
    "Native buckets keep no tensors besides the params' state; no flat scratch copies; the"
    " state does not grow over steps."
    ps = [torch.randn(100) for _ in range(50)] + [torch.randn(3000)]
    for name in CHAINS:
        opt = CHAINS[name]([p.clone() for p in ps], True)
        qs = opt.param_lists[0]
        for p in qs:
            p.grad = torch.randn_like(p)
        opt.step()
        opt.step()
        n1 = sum(len(s) for s in opt.state.values())
        for _ in range(4):
            opt.step()
        for b in opt._plan.buckets:
            assert b.flat is None
            assert isinstance(b.kernel, native.NativeKernel)
            assert not any(isinstance(v, torch.Tensor) for v in b.kernel_state.values())
        n2 = sum(len(s) for s in opt.state.values())
        assert n1 == n2, name


_PEAK_SCRIPT = r"""
import resource, sys, torch, pyfastopt as po
torch.set_num_threads(1)
ps = [torch.randn(16384) for _ in range(500)]        # 8M elements, 32 MB per param-sized set
for p in ps:
    p.grad = torch.randn(16384)
opt = getattr(po, sys.argv[1])(ps, lr=1e-3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(4):
    opt.step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
            if isinstance(t, torch.Tensor))
print((after - before) * 1024 - state)
"""


@pytest.mark.parametrize("name", ["Lamb", "QHAdam"])
def test_peak_memory_of_a_step(name):
    "The peak RSS over steps rises by the state (m, v) only: no list-sized temporaries or"
    " scratch copies (the torch-op chain adds MBs of them)."
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, name], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grew = int(r.stdout.strip().splitlines()[-1])
    assert grew <= 16384 * 4 + (2 << 20), grew     # one largest param (64 KB) + 2 MB slack


@pytest.mark.parametrize("name", ["SGD_mom", "Adam", "Lamb"])
def test_threads_send_large_params_to_torch_fused(name):
    "With several torch threads, params of >= NATIVE_MT_NUMEL elements of a chain torch has a"
    " fused kernel for go to that kernel (multi-threaded per tensor), small ones stay native;"
    " one thread: all native. Changing the thread count rebuilds the plan; numbers as per-param."
    from pyfastopt import kernels
    from pyfastopt.backend import NATIVE_MT_NUMEL

    def make():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(n, generator=g) for n in (NATIVE_MT_NUMEL, 100, NATIVE_MT_NUMEL + 7, 5)]

    old = torch.get_num_threads()
    try:
        ps_ref, ps = make(), make()
        ref, opt = CHAINS[name](ps_ref, True), CHAINS[name](ps, True)
        ref.impl = "per_param"
        g = torch.Generator().manual_seed(1)
        for i in range(6):
            torch.set_num_threads(2 if i < 3 else 1)
            for p, q in zip(ps, ps_ref):
                p.grad = torch.randn(p.shape, generator=g)
                q.grad = p.grad.clone()
            opt.step()
            ref.step()
            kinds = {b.params[0].numel() >= NATIVE_MT_NUMEL: type(b.kernel)
                     for b in opt._plan.buckets}
            if name == "Lamb" or i >= 3:          # no torch kernel, or one thread: all native
                assert all(issubclass(k, native.NativeKernel) for k in kinds.values()), kinds
            else:
                assert issubclass(kinds[False], native.NativeKernel), kinds
                assert issubclass(kinds[True], kernels.FusedKernel), kinds
        for a, b in zip(ps, ps_ref):
            close(a, b, torch.float32)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lookahead_sync_native_equals_torch_ops(dtype):
    "Lookahead's sync in one native pass gives the torch ops' numbers (fastai's formula)."
    def run(native_on):
        torch.manual_seed(0)
        ps = [torch.randn(s, dtype=dtype) for s in [(3, 4), (5,), (), (2, 3, 2, 2)]]
        opt = po.ranger(ps, lr=0.1, k=3)
        for i in range(7):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        return ps, opt
    with native_off():
        ref, ref_opt = run(False)
    got, opt = run(True)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, **tol)
    for sa, sb in zip(opt.slow_weights.concat(), ref_opt.slow_weights.concat()):
        assert torch.allclose(sa, sb, **tol)
    slow = [torch.randn(1000, dtype=dtype), torch.randn(3, 7, dtype=dtype)]
    fast = [torch.randn_like(t) for t in slow]
    want = [s + 0.3 * (f - s) for s, f in zip(slow, fast)]
    assert native.lookahead_sync(slow, fast, 0.3)
    for s, f, w in zip(slow, fast, want):
        torch.testing.assert_close(s, w, **tol)
        assert torch.equal(f, s)
    assert not native.lookahead_sync([torch.ones(4)[::2]], [torch.ones(2)], 0.5)  # not contiguous
