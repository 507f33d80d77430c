"""A `torch.compile`d training step (forward, backward, `opt.step()`) with pyfastopt's Adam, whose
step runs eagerly inside the compiled region (a graph break), against the same step compiled with
torch's AdamW (traced into the graph), and both eager. An MLP of 8 Linear(256, 256) layers (16
params), batch 64, CPU. Interleaved rounds, medians, ratios in one run.

Target (issue 7): compiled with pyfastopt not slower than compiled with torch's AdamW.

usage: python bench/bench_compile.py [--rounds 5] [--steps 30] [--threads 1]
"""
import argparse
import statistics
import time

import torch

import pyfastopt as po


def make(kind, compiled):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(8)
                                  for m in (torch.nn.Linear(256, 256), torch.nn.Tanh())])
    ps = list(model.parameters())
    opt = po.Adam(ps, lr=1e-3, wd=0.01) if kind == "pyfastopt Adam" else \
        torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)
    x, y = torch.randn(64, 256), torch.randn(64, 256)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    f = torch.compile(step) if compiled else step
    for _ in range(3):          # compile and warm up
        f()
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases = [(k, c) for c in (True, False) for k in ("pyfastopt Adam", "torch AdamW")]
    fns = {case: make(*case) for case in cases}
    times = {case: [] for case in cases}
    for _ in range(a.rounds):
        for case, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                f()
            times[case].append((time.perf_counter() - t0) / a.steps)
    med = {c: statistics.median(v) for c, v in times.items()}
    print(f"training step (forward + backward + step), MLP 8 x Linear(256, 256), batch 64, "
          f"torch {torch.__version__}, {a.threads} thread(s); median of {a.rounds} x {a.steps}")
    for (k, c), t in med.items():
        print(f"  {k:16s} {'compiled' if c else 'eager':9s} {t * 1e3:7.2f} ms")
    r = med[("pyfastopt Adam", True)] / med[("torch AdamW", True)]
    print(f"  compiled: pyfastopt Adam / torch AdamW = {r:.2f} (target <= 1)")


if __name__ == "__main__":
    main()
