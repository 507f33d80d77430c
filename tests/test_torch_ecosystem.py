"""pyfastopt optimizers inside torch's machinery: torch-style param-group dicts, AMP's GradScaler,
DistributedDataParallel and ZeroRedundancyOptimizer (2 CPU processes over gloo)."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyfastopt import SGD, Adam, Lamb, OptimWrapper, ranger

STEPS = 3


def test_torch_style_group_dicts():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = Adam([{"params": a, "lr": 1e-3}, {"params": [b], "wd": 0.0, "note": "head"}], lr=1e-2)
    assert opt.hypers[0] == {"wd": 0.01, "sqr_mom": 0.99, "lr": 1e-3, "mom": 0.9, "eps": 1e-5}
    assert list(opt.hypers[1]) == ["wd", "sqr_mom", "lr", "mom", "eps", "note"]
    assert opt.hypers[1]["wd"] == 0.0 and opt.hypers[1]["lr"] == 1e-2
    with pytest.raises(ValueError, match="lr"):
        Adam([{"params": a, "lr": -1.0}], lr=1e-2)
    with pytest.raises(TypeError, match="params"):
        Adam([{"params": a}, b], lr=1e-2)


def test_grad_scaler_unscales_and_skips_inf_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    ref = torch.nn.Linear(4, 2)
    ref.load_state_dict(model.state_dict())
    opt, ref_opt = Adam(model.parameters(), lr=1e-2), Adam(ref.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    x = torch.randn(8, 4)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
        ref_opt.zero_grad()
        ref(x).pow(2).mean().backward()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)   # scaled by 2**8: exact unscale
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(x).sum() * float("inf")).backward()
    scaler.step(opt)                                             # inf grads: the step is skipped
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.state[model.weight]["step"] == 2


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _worker(rank, world, init_file, out_dir, kind):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        if kind == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer
            opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=Lamb, lr=1e-2)
        else:
            opt = Adam(ddp.parameters(), lr=1e-2)
        x, y = _data()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        for _ in range(STEPS):
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(xs), ys).backward()
            opt.step()
        torch.save([p.detach() for p in model.parameters()], os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()          # both ranks done before gloo's threads are torn down
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["ddp", "zero"])
@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="no torch.distributed")
def test_distributed_data_parallel_matches_one_process(tmp_path, kind):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), kind), nprocs=2, join=True)
    model = _model()
    opt = (Lamb if kind == "zero" else Adam)(model.parameters(), lr=1e-2)
    x, y = _data()
    for _ in range(STEPS):            # equal shards + mean loss: DDP's averaged grad = full batch
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for got0, got1, want in zip(*ranks, model.parameters()):
        torch.testing.assert_close(got0, got1, rtol=0, atol=0)
        torch.testing.assert_close(got0, want.detach(), rtol=1e-5, atol=1e-6)


def test_sgd_momentum_under_autocast_bfloat16_params():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = SGD([p], lr=0.5, mom=0.9)
    for _ in range(2):
        p.grad = torch.full_like(p, 0.25)
        opt.step()
    # grad_avg: 0.25 then 0.25*1.9 = 0.475; p = 1 - 0.125 - 0.2375 = 0.6375 (bf16-rounded)
    assert opt.state[p]["grad_avg"].dtype == torch.float32     # the half rule (half.py)
    assert p.float().tolist() == pytest.approx([0.6375] * 4, abs=4e-3)


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.1), lambda ps: ranger(ps, lr=0.1),
                                  lambda ps: OptimWrapper(ps, torch.optim.SGD, lr=0.1)])
def test_torch_step_and_state_dict_hooks_run(make):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = make([p])
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("step_pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("step_post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: calls.append("load_pre") or {k: v for k, v in sd.items() if k != "extra"})
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    opt.step()
    sd = opt.state_dict()
    assert sd["extra"] == 1                      # a post hook may replace the dict
    opt.load_state_dict(sd)                      # the pre hook drops what the loader would refuse
    assert calls == ["step_pre", "step_post", "sd_pre", "load_pre", "load_post"]
