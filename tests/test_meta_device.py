"""The device path's no-sync promise, checked without a GPU: every optimizer (wrappers too) steps
params on the `meta` device, where any host sync (`.item()`, `bool(t)`, Python `min` or `if` on a
tensor, `nonzero`, `.tolist()`) raises. Also: the state lives on the param's device, and Larc's
`clip_lr` takes the device branch (`torch.clamp`) there rather than CPU's Python `min`."""
import pytest
import torch

import pyfastopt as po
from pyfastopt import kernels

FACTORIES = {
    "SGD": lambda ps: po.SGD(ps, lr=0.1, wd=0.01),
    "SGD_mom": lambda ps: po.SGD(ps, lr=0.1, mom=0.9, wd=0.01),
    "SGD_mom_l2": lambda ps: po.SGD(ps, lr=0.1, mom=0.9, wd=0.01, decouple_wd=False),
    "RMSProp": lambda ps: po.RMSProp(ps, lr=0.01, wd=0.01),
    "RMSProp_mom": lambda ps: po.RMSProp(ps, lr=0.01, mom=0.9),
    "Adam": lambda ps: po.Adam(ps, lr=0.01),
    "Adam_l2": lambda ps: po.Adam(ps, lr=0.01, decouple_wd=False),
    "RAdam": lambda ps: po.RAdam(ps, lr=0.01, wd=0.01),
    "RAdam_beta": lambda ps: po.RAdam(ps, lr=0.01, beta=2.),
    "QHAdam": lambda ps: po.QHAdam(ps, lr=0.01, wd=0.01),
    "Larc": lambda ps: po.Larc(ps, lr=0.1, wd=0.01),
    "Larc_noclip": lambda ps: po.Larc(ps, lr=0.1, clip=False, mom=0.),
    "Lamb": lambda ps: po.Lamb(ps, lr=0.01, wd=0.01),
    "Lion": lambda ps: po.Lion(ps, lr=0.01),
    "ranger": lambda ps: po.ranger(ps, lr=0.01, k=2),
    "Lookahead_SGD": lambda ps: po.Lookahead(po.SGD(ps, lr=0.1, mom=0.9), k=2),
}
SHAPES = [(3, 4), (5,), (2, 2, 3), (1,), (6,)] * 3      # 15 params: flat buckets are possible
MODES = ("auto", "per_param", "chain")


def meta_params(dtype):
    return [torch.nn.Parameter(torch.empty(s, device="meta", dtype=dtype)) for s in SHAPES]


def inner(opt):
    return opt.opt if isinstance(opt, (po.Lookahead,)) else opt


def test_meta_refuses_host_syncs():
    "What makes this file a test: each of these would be a host sync on a GPU, and raises here."
    t = torch.empty(3, device="meta")
    for sync in (lambda: t.sum().item(), lambda: bool(t.sum()), lambda: min(0.1, t.sum()),
                 lambda: t.nonzero(), lambda: t.tolist(), lambda: float(t.sum()),
                 lambda: 1 if t.sum() > 0 else 0):
        with pytest.raises((RuntimeError, NotImplementedError)):
            sync()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])   # bfloat16: float16's path
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_optimizer_steps_on_meta(name, mode, dtype):
    ps = meta_params(dtype)
    opt = FACTORIES[name]([ps[:8], ps[8:]])
    o = inner(opt)
    if mode == "per_param":
        o.impl = "per_param"
    elif mode == "chain":
        o.fused = False
    o.state[ps[1]]["do_wd"] = False
    for k in range(3):
        for j, p in enumerate(ps):
            p.grad = None if (j + k) % 5 == 0 else torch.empty_like(p)
        opt.step()
    opt.zero_grad()
    sd = opt.state_dict()
    assert sd["state"]
    state = inner(opt).state
    n = 0
    for p in ps:
        for key, v in state[p].items():
            if isinstance(v, torch.Tensor):
                assert v.device.type == "meta", key
                n += 1
    assert n > 0 or name == "SGD"
    if name == "Larc":           # the device branch of clip_lr: a tensor, never Python's min
        assert all(isinstance(state[p]["local_lr"], torch.Tensor) for p in ps)


@pytest.mark.parametrize("name", ["Adam", "Adam_l2", "RAdam", "ranger"])
def test_torch_fused_adapters_on_meta(name, monkeypatch):
    "torch's fused Adam kernels have meta implementations: run pyfastopt's adapters on them too."
    monkeypatch.setattr(kernels, "FUSED_DEVICES", (*kernels.FUSED_DEVICES, "meta"))
    ps = meta_params(torch.float32)
    opt = FACTORIES[name](ps)
    inner(opt).flatten = False
    for _ in range(3):
        for p in ps:
            p.grad = torch.empty_like(p)
        opt.step()
    assert {b.backend for b in inner(opt)._plan.buckets} == {"fused"}
    assert inner(opt).state[ps[0]]["step"] == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optim_wrapper_steps_on_meta(dtype):
    "fastai's OptimWrapper over torch's SGD: the wrapper adds no sync to torch's step."
    ps = meta_params(dtype)
    opt = po.OptimWrapper(ps, torch.optim.SGD, lr=0.1, momentum=0.9)
    opt.set_hyper("mom", 0.8)
    for _ in range(3):
        for p in ps:
            p.grad = torch.empty_like(p)
        opt.step()
    opt.zero_grad()
    assert opt.state_dict()["state"]
    assert all(opt.opt.state[p]["momentum_buffer"].device.type == "meta" for p in ps)
