"""FSDP2 (`torch.distributed.fsdp.fully_shard`: the params become DTensors sharded over 2 gloo
processes on CPU): every optimizer, Lookahead and ranger included, steps them with its default
settings and ends where a single process training the unsharded model ends (1e-5)."""
import os
import sys

import pytest
import torch
import torch.distributed as dist

import pyfastopt as po
from pyfastopt import distributed
from dist_helpers import run_ranks, train_steps

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                                reason="no torch.distributed")

STEPS = 7                       # ranger's Lookahead (k=6) syncs once
OPTS = {
    "SGD": lambda ps: po.SGD(ps, lr=0.05),
    "SGD_mom_l2": lambda ps: po.SGD(ps, lr=0.05, mom=0.9, wd=0.01, decouple_wd=False),
    "RMSProp": lambda ps: po.RMSProp(ps, lr=0.01, mom=0.9, wd=0.01),
    "Adam": lambda ps: po.Adam(ps, lr=0.01, wd=0.01),
    "RAdam": lambda ps: po.RAdam(ps, lr=0.01, wd=0.01),
    "QHAdam": lambda ps: po.QHAdam(ps, lr=0.01),
    "Larc": lambda ps: po.Larc(ps, lr=0.1, wd=0.01),
    "Larc_noclip": lambda ps: po.Larc(ps, lr=0.1, clip=False),
    "Lamb": lambda ps: po.Lamb(ps, lr=0.01, wd=0.01),
    "Lion": lambda ps: po.Lion(ps, lr=1e-3),
    "ranger": lambda ps: po.ranger(ps, lr=0.01),
    "Lookahead_SGD": lambda ps: po.Lookahead(po.SGD(ps, lr=0.05, mom=0.9), k=3),
}
# grads laid out otherwise than their params (Replicate): the step goes through DTensor's ops
REPLICATED_GRADS = {"Adam_replicated_grads": OPTS["Adam"], "Lamb_replicated_grads": OPTS["Lamb"]}
# norms summed across ranks by all_reduce (as beyond `GATHER_MAX_RANKS` ranks) not all_gather
ALL_REDUCE = {"Lamb_all_reduce": OPTS["Lamb"], "Larc_all_reduce": OPTS["Larc"]}
# bfloat16 params: stepped on float32 shadows (half.py), on the shards too
BF16 = {"Adam_bf16": OPTS["Adam"], "Lamb_bf16": OPTS["Lamb"], "ranger_bf16": OPTS["ranger"]}
VARIANTS = {**REPLICATED_GRADS, **ALL_REDUCE, **BF16}


def _inner(opt):
    return opt.opt if isinstance(opt, po.Lookahead) else opt


def _replicate_grads(model):
    from torch.distributed.tensor import Replicate
    for p in model.parameters():
        p.grad = p.grad.redistribute(placements=[Replicate()])


def _model():
    torch.manual_seed(0)
    # 10 params; odd sizes so that some shards are uneven
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 6),
                               torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 7, generator=g), torch.randn(8, 3, generator=g)


def _worker(rank, world, init_file, out_dir):
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        x, y = _data()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        out, on_shards, gather_max = {}, {}, distributed.GATHER_MAX_RANKS
        for name, make in {**OPTS, **VARIANTS}.items():
            distributed.GATHER_MAX_RANKS = 1 if name in ALL_REDUCE else gather_max
            model = _model().to(torch.bfloat16 if name in BF16 else torch.float32)
            for m in model:
                if isinstance(m, torch.nn.Linear):
                    fully_shard(m)
            fully_shard(model)
            assert all(type(p).__name__ == "DTensor" for p in model.parameters())
            opt = make(list(model.parameters()))
            if name in REPLICATED_GRADS:
                for _ in range(STEPS):
                    opt.zero_grad(set_to_none=True)     # FSDP2 accumulates into a kept grad
                    torch.nn.functional.mse_loss(model(xs), ys).backward()
                    _replicate_grads(model)
                    opt.step()
            elif name in BF16:
                train_steps(model, opt, xs.bfloat16(), ys.bfloat16(), STEPS)
                st = _inner(opt).state[next(model.parameters())]
                out[name + " state"] = sorted((k, type(v).__name__, str(v.dtype))
                                              for k, v in st.items() if torch.is_tensor(v))
            else:
                train_steps(model, opt, xs, ys, STEPS)
            out[name] = [p.full_tensor().detach() for p in model.parameters()]
            # did each bucket's last step run on the local shards (shards.py)?
            batch_state = [b.shards.enter(b.batch, b.state) if b.shards else None
                           for b in _inner(opt)._plan.buckets]
            on_shards[name] = [x is not None for x in batch_state]
        out["on_shards"] = on_shards
        model = _model()
        for m in model:
            if isinstance(m, torch.nn.Linear):
                fully_shard(m)
        out["shard_math"] = _shard_math(model)
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "fsdp.pt"))
        dist.barrier()          # both ranks done before gloo is torn down
    finally:
        dist.destroy_process_group()


def _shard_math(model):
    """Norms, RMSs and element counts of ShardLists of the (unevenly) sharded params against the
    whole tensors'."""
    from pyfastopt.tensor_list import ShardList, norms, rmss
    ps = list(model.parameters())
    specs = [p._spec for p in ps]
    shards = ShardList([p._local_tensor for p in ps], specs)
    doubled = ShardList([2 * p._local_tensor for p in ps], specs)
    with torch.no_grad():
        got = [shards.norm(), *norms(shards, doubled), *rmss(shards, doubled), shards.numel()]
    full = [p.full_tensor().detach().double() for p in ps]
    want = [[f.norm() for f in full], [f.norm() for f in full], [2 * f.norm() for f in full],
            [f.pow(2).mean().sqrt() for f in full], [2 * f.pow(2).mean().sqrt() for f in full],
            [f.numel() for f in full]]
    return [list(g) for g in got], want, [p._local_tensor.numel() for p in ps]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    run_ranks(_worker, d, "FSDP")
    return torch.load(d / "fsdp.pt")


@pytest.mark.parametrize("name", [*OPTS, *VARIANTS])
def test_fsdp2_matches_one_process(fsdp_results, name):
    model = _model()
    assert len(list(model.parameters())) >= 8
    x, y = _data()
    if name in BF16:
        model, x, y = model.bfloat16(), x.bfloat16(), y.bfloat16()
    opt = {**OPTS, **VARIANTS}[name](list(model.parameters()))
    train_steps(model, opt, x, y, STEPS)     # equal shards + mean loss: FSDP's averaged grad = full batch
    # bfloat16: FSDP averages the grads in bfloat16, one process computes them whole: apart by
    # a rounding or two of bfloat16 (2**-8 relative), which the steps carry on
    tol = dict(rtol=2e-2, atol=2e-2) if name in BF16 else dict(rtol=1e-5, atol=1e-6)
    for got, want in zip(fsdp_results[name], model.parameters()):
        torch.testing.assert_close(got, want.detach(), **tol)


def test_bf16_state_is_float32_dtensors(fsdp_results):
    # the half rule's float32 state, laid out as the params (DCP saves DTensors)
    for name in BF16:
        st = fsdp_results[name + " state"]
        assert st and all(t == "DTensor" and d == "torch.float32" for _, t, d in st), (name, st)


def test_steps_run_on_local_shards(fsdp_results):
    # every bucket of every optimizer steps on the shards, unless the grads are laid out otherwise
    for name, flags in fsdp_results["on_shards"].items():
        assert flags, name
        assert all(flags) if name not in REPLICATED_GRADS else not any(flags), (name, flags)


def test_shard_lists_answer_for_whole_tensors(fsdp_results):
    got, want, local_numel = fsdp_results["shard_math"]
    assert got[-1] == want[-1] != local_numel           # uneven shards: global counts
    for g, w in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(torch.stack(list(g)).double(), torch.stack(w),
                                   rtol=1e-6, atol=1e-7)
