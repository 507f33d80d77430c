"""FSDP2 (`fully_shard`, DTensor params), 2 gloo processes on CPU: one optimizer step on 48
DTensor params (24 Linear(64, 64) layers), for Adam, Lamb, Larc, ranger, and torch's AdamW
(foreach), interleaved step by step, medians; ratios against pyfastopt's Adam in one run.
LAMB and LARC need per-tensor norms over all shards: pyfastopt batches them (one local
`_foreach_norm` and one exchange across the ranks per list), target <= 2x Adam's step (issue 7).

usage: python bench/bench_fsdp.py [--steps 40]
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyfastopt as po

OPTS = {
    "pyfastopt Adam": lambda ps: po.Adam(ps, lr=1e-3),
    "pyfastopt Lamb": lambda ps: po.Lamb(ps, lr=1e-3),
    "pyfastopt Larc": lambda ps: po.Larc(ps, lr=1e-3),
    "pyfastopt ranger": lambda ps: po.ranger(ps, lr=1e-3),
    "torch AdamW (foreach)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
}


def _worker(rank, init, steps):
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        runs = {}
        for name, make in OPTS.items():
            torch.manual_seed(0)
            m = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(24)])
            for layer in m:
                fully_shard(layer)
            fully_shard(m)
            runs[name] = (m, make(list(m.parameters())))
        x = torch.randn(8, 64)
        times = {k: [] for k in runs}
        for i in range(steps):
            for name, (m, opt) in runs.items():
                opt.zero_grad()
                m(x).pow(2).mean().backward()
                dist.barrier()
                t0 = time.perf_counter()
                opt.step()
                dist.barrier()
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
        if rank == 0:
            n = len(list(runs["pyfastopt Adam"][0].parameters()))
            print(f"FSDP2, 2 gloo ranks on CPU, {n} DTensor params, torch {torch.__version__}, "
                  f"median of {steps - 2} steps (step + barrier)")
            base = statistics.median(times["pyfastopt Adam"])
            for k, v in times.items():
                med = statistics.median(v)
                print(f"  {k:24s} {med * 1e3:7.2f} ms   x{med / base:5.2f} of pyfastopt Adam")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "init"), a.steps), nprocs=2, join=True)


if __name__ == "__main__":
    main()
