"""CPU benchmark of one optimizer step: pyfastopt (default path: the native kernels when a C
compiler is available; with `flatten_params()`; with the native kernels off, i.e. the torch-op
paths), its per-parameter reference path, and torch.optim's for-loop / foreach / fused where
torch has the optimizer. Interleaved rounds, medians; ratios matter, not absolute times (noisy
machine). The native kernels' cold compile and the first step are timed too.

Cases: (a) the 161 ResNet-50 parameter shapes (25.6M), (b) 2,000 x 1,000, (c) one 4M tensor.
The memory-bandwidth floor is measured in the same run (in-place stream `a += s*b`) and applied
to each optimizer's minimal bytes/param (performance-notes §3).

usage: python bench/bench_cpu.py [--threads 1 2] [--rounds 5] [--only adam,sgd] [--cases a,b,c]
"""
import argparse
import gc
import os
import platform
import statistics
import tempfile
import time

import torch

import pyfastopt as po
from pyfastopt import native


def resnet50_shapes():
    s, inpl = [(64, 3, 7, 7), (64,), (64,)], 64
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for b in range(blocks):
            s += [(width, inpl, 1, 1), (width,), (width,), (width, width, 3, 3), (width,),
                  (width,), (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                s += [(4 * width, inpl, 1, 1), (4 * width,), (4 * width,)]
            inpl = 4 * width
    return s + [(1000, 2048), (1000,)]


CASES = {"a": ("(a) ResNet-50 161 t", resnet50_shapes()),
         "b": ("(b) 2000 x 1k", [(1000,)] * 2000),
         "c": ("(c) 1 x 4M", [(4_000_000,)])}

LR = 1e-3
# name: (pyfastopt factory, bytes/param floor, {torch variant: constructor}, what torch stands in)
T = torch.optim


def _torch(cls, **kw):
    return lambda ps, **extra: cls(ps, lr=LR, **kw, **extra)


OPTS = {
    "SGD-mom": (lambda ps: po.SGD(ps, lr=LR, mom=0.9), 20,
                {"loop": (_torch(T.SGD, momentum=0.9), dict(foreach=False)),
                 "foreach": (_torch(T.SGD, momentum=0.9), dict(foreach=True)),
                 "fused": (_torch(T.SGD, momentum=0.9), dict(fused=True))}, "SGD"),
    "RMSProp": (lambda ps: po.RMSProp(ps, lr=LR), 20,
                {"loop": (_torch(T.RMSprop, alpha=0.99), dict(foreach=False)),
                 "foreach": (_torch(T.RMSprop, alpha=0.99), dict(foreach=True))}, "RMSprop"),
    "Adam": (lambda ps: po.Adam(ps, lr=LR, wd=0.), 28,
             {"loop": (_torch(T.Adam), dict(foreach=False)),
              "foreach": (_torch(T.Adam), dict(foreach=True)),
              "fused": (_torch(T.Adam), dict(fused=True))}, "Adam"),
    "RAdam": (lambda ps: po.RAdam(ps, lr=LR), 28,
              {"loop": (_torch(T.RAdam), dict(foreach=False)),
               "foreach": (_torch(T.RAdam), dict(foreach=True))}, "RAdam"),
    "QHAdam": (lambda ps: po.QHAdam(ps, lr=LR), 28,
               {"fused": (_torch(T.Adam), dict(fused=True))}, "Adam (nearest)"),
    "Larc": (lambda ps: po.Larc(ps, lr=LR), 28,
             {"fused": (_torch(T.SGD, momentum=0.9), dict(fused=True))}, "SGD-mom (nearest)"),
    "Lamb": (lambda ps: po.Lamb(ps, lr=LR), 40,
             {"fused": (_torch(T.Adam), dict(fused=True))}, "Adam (nearest)"),
    "Lion": (lambda ps: po.Lion(ps, lr=LR), 20,
             {"fused": (_torch(T.SGD, momentum=0.9), dict(fused=True))}, "SGD-mom (nearest)"),
    "ranger": (lambda ps: po.ranger(ps, lr=LR), 28 + 16 / 6,
               {"foreach": (_torch(T.RAdam), dict(foreach=True))}, "RAdam (nearest)"),
}


def make_params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(sh, generator=g) * 0.02) for sh in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return ps


def stream_bw():
    "In-place `a += s*b` on 2 x 200 MB: 12 bytes per element."
    a, b = torch.randn(50_000_000), torch.randn(50_000_000)
    ts = []
    for _ in range(6):
        t0 = time.perf_counter()
        a.add_(b, alpha=1e-9)
        ts.append(time.perf_counter() - t0)
    return 12 * a.numel() / statistics.median(ts[1:]) / 1e9


def bench(variants, rounds, k):
    times = {n: [] for n in variants}
    first = {}
    for n, f in variants.items():
        t0 = time.perf_counter()
        f()
        first[n] = time.perf_counter() - t0
        f()
    for _ in range(rounds):
        for n, f in variants.items():
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            times[n].append((time.perf_counter() - t0) / k)
    return {n: statistics.median(t) for n, t in times.items()}, first


def compile_cost():
    "Seconds for a cold compile of the native kernels (into a fresh dir) and for loading them."
    cc = native.find_compiler()
    if cc is None:
        return None, None
    src = native.source_text()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        native._compile(cc, src, os.path.join(d, "k.so"))
        cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    ok = native.load() is not None
    return cold, (time.perf_counter() - t0 if ok else None)


class _NativeOff:
    """A step with PYFASTOPT_NATIVE=0 (the torch-op paths). Set around every step: a plan is
    rebuilt when the native setting it was built under changes."""
    def __init__(self, opt):
        self.opt = opt

    def __call__(self):
        old = os.environ.get("PYFASTOPT_NATIVE")
        os.environ["PYFASTOPT_NATIVE"] = "0"
        try:
            self.opt.step()
        finally:
            if old is None:
                del os.environ["PYFASTOPT_NATIVE"]
            else:
                os.environ["PYFASTOPT_NATIVE"] = old


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="")
    ap.add_argument("--cases", default="a,b,c")
    args = ap.parse_args()
    only = [o for o in args.only.split(",") if o] or list(OPTS)
    print(f"# machine: {cpu_name()}, {torch.get_num_threads()} threads available by default; "
          f"torch {torch.__version__}; {torch.backends.cpu.get_cpu_capability()}; "
          f"python {platform.python_version()}")
    cold, load = compile_cost()
    if cold is None:
        print("# native kernels: no C compiler, the torch-op paths run")
    else:
        print(f"# native kernels: cold compile {cold:.2f} s (once per machine, cached), "
              f"load from cache {1e3 * load:.1f} ms" if load is not None else
              f"# native kernels: compile {cold:.2f} s but load failed")
    for th in args.threads:
        torch.set_num_threads(th)
        bw = stream_bw()
        print(f"\n## {th} thread(s): stream a+=s*b {bw:.1f} GB/s\n")
        print("| case | optimizer | torch baseline | pyfastopt ms | 1st step ms (pyfastopt / torch) "
              "| flat-views ms | native off ms | per-param ms | torch loop / foreach / fused ms "
              "| x vs torch (default / best) | per-param / pyfastopt | % of floor |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        firsts, savings = [], []
        for ck in args.cases.split(","):
            cname, shapes = CASES[ck]
            n = sum(torch.Size(s).numel() for s in shapes)
            k = 2 if ck != "b" else 4
            for name in only:
                fac, bpp, tvars, stand_in = OPTS[name]
                ps = make_params(shapes)
                variants = {"pyfastopt": fac(ps).step}
                if ck == "b":
                    ps2 = make_params(shapes, seed=1)
                    o2 = fac(ps2)
                    o2.flatten_params()
                    variants["flat-views"] = o2.step
                ps4 = make_params(shapes, seed=3)
                variants["native off"] = _NativeOff(fac(ps4))
                ps3 = make_params(shapes, seed=2)
                o3 = fac(ps3)
                o3.impl = "per_param"
                variants["per-param"] = o3.step
                for tn, (ctor, kw) in tvars.items():
                    variants[f"torch {tn}"] = ctor(ps, **kw).step
                res, first = bench(variants, args.rounds, k)
                base_key = "torch fused" if "torch fused" in res else "torch foreach"
                base = res[base_key]
                best = min(res["pyfastopt"], res.get("flat-views", float("inf")))
                floor = bpp * n / (bw * 1e9)
                tor = " / ".join(f"{res[f'torch {v}'] * 1e3:.2f}" if f"torch {v}" in res else "–"
                                 for v in ("loop", "foreach", "fused"))
                fv = f"{res['flat-views'] * 1e3:.2f}" if "flat-views" in res else "–"
                print(f"| {cname} | {name} | {base_key[6:]} {stand_in} | "
                      f"{res['pyfastopt'] * 1e3:.2f} | {first['pyfastopt'] * 1e3:.1f} / "
                      f"{first[base_key] * 1e3:.1f} | {fv} | "
                      f"{res['native off'] * 1e3:.2f} | {res['per-param'] * 1e3:.2f} | {tor} | "
                      f"{base / res['pyfastopt']:.2f}x / {base / best:.2f}x | "
                      f"{res['per-param'] / best:.1f}x | {100 * floor / best:.0f}% |", flush=True)
                firsts.append(first["pyfastopt"] / first[base_key])
                savings.append((base - res["pyfastopt"], f"{cname} {name}"))
                del variants, ps, ps3, o3, ps4
                gc.collect()
        if firsts:
            print(f"\n# first step: pyfastopt's (plan build, state allocation) is "
                  f"{min(firsts):.1f}-{max(firsts):.1f}x torch's first step (state allocation)")
        pos = [(sv, n) for sv, n in savings if sv > 0]
        if cold is not None and pos:
            sv, n = min(pos)
            print(f"# cold compile ({cold:.2f} s, once per machine) = the time saved vs torch in "
                  f"{cold / max(sv for sv, _ in pos):,.0f} steps of the largest saving, "
                  f"{cold / sv:,.0f} steps of the smallest ({n})")
    print("\nx vs torch = torch baseline time / pyfastopt time, default path / best of default "
          "and flat-views; "
          "% of floor = bytes/param x params / stream bandwidth / best pyfastopt time; "
          "1st step = the first call (plan build, state allocation; the compile is above).")


if __name__ == "__main__":
    main()
