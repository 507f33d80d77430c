"""`zero_grad(set_to_none=True)` — the default of torch, Accelerate and the transformers Trainer —
gives every param a new grad tensor each step. This benchmark times one Adam step on 500 params of
1,000 elements, each step preceded by new grads (as a backward after `set_to_none` makes them),
against the same loop with the grads kept in place (`zero_grad()`), and against torch's fused
AdamW (which also gets new grads each step). Interleaved rounds, medians, ratios in one run.

Target (issue 7): set_to_none within 1.2x of grads kept, and ahead of torch's fused AdamW.

usage: python bench/bench_set_to_none.py [--rounds 7] [--steps 50] [--threads 1]
"""
import argparse
import statistics
import time

import torch

import pyfastopt as po

N, SIZE, LR = 500, 1000, 1e-3


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(SIZE, generator=g) * 0.02) for _ in range(N)]
    grads = [torch.randn(SIZE, generator=g) * 1e-3 for _ in range(N)]
    return ps, grads


def run(kind, steps):
    "Seconds per step, the grads set (or refilled) outside the timed step, as a backward would."
    ps, grads = make()
    if kind == "torch fused AdamW":
        opt = torch.optim.AdamW(ps, lr=LR, weight_decay=0.01, fused=True)
    else:
        opt = po.Adam(ps, lr=LR, wd=0.01)
    new = kind != "pyfastopt, grads kept"
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()                                   # warm: state and plan built
    total = 0.0
    for _ in range(steps):
        if new:
            opt.zero_grad(set_to_none=True)
            for p, g in zip(ps, grads):
                p.grad = g.clone()               # fresh tensors, as autograd's are
        else:
            opt.zero_grad()
            torch._foreach_add_([p.grad for p in ps], grads)
        t0 = time.perf_counter()
        opt.step()
        total += time.perf_counter() - t0
    return total / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kinds = ["pyfastopt, grads kept", "pyfastopt, set_to_none", "torch fused AdamW"]
    times = {k: [] for k in kinds}
    for _ in range(a.rounds):
        for k in kinds:
            times[k].append(run(k, a.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"Adam, {N} x {SIZE:,} params, torch {torch.__version__}, {a.threads} thread(s), "
          f"native kernels: {po.native.available()}; median of {a.rounds} rounds x {a.steps} steps")
    base = med["pyfastopt, grads kept"]
    for k in kinds:
        print(f"  {k:24s} {med[k] * 1e3:7.3f} ms/step   x{med[k] / base:5.2f} of grads kept")
    print(f"  set_to_none / grads kept:        {med['pyfastopt, set_to_none'] / base:.2f} "
          "(target <= 1.2)")
    print(f"  set_to_none / torch fused AdamW: "
          f"{med['pyfastopt, set_to_none'] / med['torch fused AdamW']:.2f} (target < 1)")


if __name__ == "__main__":
    main()
