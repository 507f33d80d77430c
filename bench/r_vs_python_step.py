"""R loop of opt$step() vs Python loop of opt.step(), same optimizers, same parameters.

Steppers passed from R reach Python as the Python functions themselves, so an R step costs the
Python step plus one reticulate call. This bench measures both loops (best of --repeats, one
torch thread, process CPU time so that other load on the machine counts less), prints the ratio per configuration and exits 1 if an R loop costs more than
--max-ratio (default 3) times the Python loop. The last configuration, R closures used as
steppers (Python calls back into R per parameter per step), is shown for contrast and not
checked. Then R steppers: an R momentum stepper pair marked multi_tensor() on 100 params against
the built-in SGD(mom = 0.9), both stepped from R; exits 1 above --max-stepper-ratio (default 10).

    RETICULATE_PYTHON is set to this interpreter; needs R and the R package (installed into
    out/Rlib by scripts/r-install.sh when --r-lib is not given).

    python bench/r_vs_python_step.py [--steps 5000] [--repeats 3] [--max-ratio 3]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import pyfastopt as P

ROOT = Path(__file__).resolve().parent.parent


def make_params(sizes):
    torch.manual_seed(0)
    ps = []
    for s in sizes:
        p = torch.randn(int(s))
        p.grad = torch.randn(int(s)) * 0.01
        ps.append(p)
    return ps


CONFIGS = [
    ("steppers-from-R: Optimizer(list(weight_decay, sgd_step)), 4 scalars", [1] * 4,
     lambda p: P.Optimizer(p, [P.weight_decay, P.sgd_step], lr=0.1, wd=0.01)),
    ("Adam, 4 x 1000", [1000] * 4, lambda p: P.Adam(p, lr=1e-3)),
    ("Adam, MLP 784-256-10 (4 tensors, 203k)", [784 * 256, 256, 256 * 10, 10], lambda p: P.Adam(p, lr=1e-3)),
    ("ranger (Lookahead+RAdam), 8 x 1000", [1000] * 8, lambda p: P.ranger(p, lr=1e-3)),
]


def python_times(n, reps):
    out = {}
    for name, sizes, make in CONFIGS:
        opt = make(make_params(sizes))
        for _ in range(20):
            opt.step()
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()     # CPU time, as the R side measures (see bench_r_step.R)
            for _ in range(n):
                opt.step()
            best = min(best, time.process_time() - t)
        out[name] = 1e6 * best / n
    return out


def r_times(n, reps, r_lib):
    env = dict(os.environ, RETICULATE_PYTHON=sys.executable, PYFASTOPT_REQUIRE_PYTHON="1",
               R_LIBS=str(r_lib))
    for k in ("PYTHONHOME", "PYTHONPATH"):
        env.pop(k, None)
    res = subprocess.run(["Rscript", str(ROOT / "bench" / "bench_r_step.R"), str(n), str(reps)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        sys.exit(f"R bench failed:\n{res.stdout}\n{res.stderr}")
    rows = [json.loads(l[2:]) for l in res.stdout.splitlines() if l.startswith("R:")]
    return {r["name"]: r["us_per_step"] for r in rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-ratio", type=float, default=3.0)
    ap.add_argument("--max-stepper-ratio", type=float, default=10.0)
    ap.add_argument("--r-lib", default=None, help="R library holding the pyfastopt R package")
    args = ap.parse_args()
    torch.set_num_threads(1)
    r_lib = args.r_lib
    if r_lib is None:
        r_lib = ROOT / "out" / "Rlib"
        subprocess.run(["bash", str(ROOT / "scripts" / "r-install.sh"), str(r_lib)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    py = python_times(args.steps, args.repeats)
    r = r_times(args.steps, args.repeats, r_lib)
    print(f"{'configuration':<66} {'Python us':>10} {'R us':>10} {'R/Python':>9}")
    bad = []
    for name, _, _ in CONFIGS:
        ratio = r[name] / py[name]
        print(f"{name:<66} {py[name]:>10.1f} {r[name]:>10.1f} {ratio:>9.2f}")
        if ratio > args.max_ratio:
            bad.append(name)
    slow = [k for k in r if k.startswith("SLOW PATH") and "4 scalars" in k]
    for name in slow:
        base = py[CONFIGS[0][0]]
        print(f"{name:<66} {base:>10.1f} {r[name]:>10.1f} {r[name] / base:>9.2f}  (contrast, not checked)")
    builtin = r["STEPPERS: built-in SGD(mom = 0.9), 100 scalars"]
    print(f"\n{'R steppers, from R':<66} {'built-in us':>11} {'R us':>10} {'ratio':>8}")
    for name in ("STEPPERS: R momentum pair, multi_tensor, 100 scalars",
                 "SLOW PATH: R momentum pair, per param, 100 scalars"):
        ratio = r[name] / builtin
        checked = name.startswith("STEPPERS")
        print(f"{name:<66} {builtin:>11.1f} {r[name]:>10.1f} {ratio:>8.2f}"
              + ("" if checked else "  (contrast, not checked)"))
        if checked and ratio > args.max_stepper_ratio:
            bad.append(name)
    if bad:
        print(f"FAIL: over the limits (R/Python {args.max_ratio}x, R steppers "
              f"{args.max_stepper_ratio}x): {bad}")
        return 1
    print(f"OK: every R loop of opt$step() costs at most {args.max_ratio}x the Python loop of opt.step(), "
          f"and the multi_tensor R steppers at most {args.max_stepper_ratio}x the built-in step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
