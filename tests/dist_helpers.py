"""What the tests that spawn 2 gloo processes share: launching the ranks with a deadline, and the
few training steps each compares."""
import time

import pytest
import torch
import torch.multiprocessing as mp


def run_ranks(worker, out_dir, what, world=2, timeout=300):
    """Run `worker(rank, world, init_file, out_dir)` in `world` spawned processes; fail the test,
    killing them, if they have not finished within `timeout` seconds (a worker's error raises)."""
    ctx = mp.start_processes(worker, args=(world, str(out_dir / "init"), str(out_dir)),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {what} workers did not finish in {timeout} s")


def train_steps(model, opt, x, y, n):
    "`n` steps of MSE regression of `model(x)` on `y`."
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
