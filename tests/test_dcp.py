"""torch's distributed checkpointing (DCP), one process: `get_optimizer_state_dict` /
`set_optimizer_state_dict` (also flattened) and `dcp.save` / `dcp.load` for every optimizer,
ranger and OptimWrapper; the resumed run equals the uninterrupted one bit for bit."""
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

import pyfastopt as po

OPTS = {
    "SGD_mom": lambda ps: po.SGD(ps, lr=0.05, mom=0.9, wd=0.01),
    "RMSProp": lambda ps: po.RMSProp(ps, lr=0.01, mom=0.9),
    "Adam": lambda ps: po.Adam(ps, lr=0.01, wd=0.01),
    "RAdam": lambda ps: po.RAdam(ps, lr=0.01),
    "QHAdam": lambda ps: po.QHAdam(ps, lr=0.01),
    "Larc": lambda ps: po.Larc(ps, lr=0.1),
    "Lamb": lambda ps: po.Lamb(ps, lr=0.01),
    "Lion": lambda ps: po.Lion(ps, lr=1e-3),
    "ranger": lambda ps: po.ranger(ps, lr=0.01, k=3),
    "Lookahead_SGD": lambda ps: po.Lookahead(po.SGD(ps, lr=0.05, mom=0.9), k=3, alpha=0.6),
    "OptimWrapper": lambda ps: po.OptimWrapper(ps, torch.optim.AdamW, lr=0.01),
}
BEFORE, AFTER = 2, 3
CASES = [(n, flat, disk) for n in OPTS for flat in (False, True) for disk in (False, True)]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5),
                               torch.nn.Tanh(), torch.nn.Linear(5, 2))


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))


def _steps(m, o, n):
    for _ in range(n):
        o.zero_grad()
        m(X).pow(2).mean().backward()
        o.step()


@pytest.mark.parametrize("name,flat,disk", CASES)
def test_dcp_resume_equals_uninterrupted(name, flat, disk, tmp_path):
    make, opts = OPTS[name], StateDictOptions(flatten_optimizer_state_dict=flat)
    m1 = _model()
    o1 = make(list(m1.parameters()))
    _steps(m1, o1, BEFORE + AFTER)
    m2 = _model()
    o2 = make(list(m2.parameters()))
    _steps(m2, o2, BEFORE)
    sd = get_optimizer_state_dict(m2, o2, options=opts)
    m3 = _model()
    m3.load_state_dict(m2.state_dict())
    o3 = make(list(m3.parameters()))
    if disk:
        dcp.save({"optim": sd}, checkpoint_id=str(tmp_path))
        target = {"optim": get_optimizer_state_dict(m3, o3, options=opts)}
        dcp.load(target, checkpoint_id=str(tmp_path))
        sd = target["optim"]
    set_optimizer_state_dict(m3, o3, sd, options=opts)
    _steps(m3, o3, AFTER)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)


def test_state_dict_keyed_by_names_loads():
    # torch's convention: state keyed through param_groups[g]['params'], whatever the keys are
    m = _model()
    o = po.Adam(list(m.parameters()), lr=0.01)
    _steps(m, o, 1)
    sd = o.state_dict()
    names = [n for n, _ in m.named_parameters()]
    named = {**sd, "state": {names[i]: v for i, v in sd["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                              for g in sd["param_groups"]]}
    o2 = po.Adam(list(_model().parameters()), lr=0.01)
    o2.load_state_dict(named)
    for p, q in zip(o.param_lists[0], o2.param_lists[0]):
        assert torch.equal(o.state[p]["grad_avg"], o2.state[q]["grad_avg"])
        assert o2.state[q]["step"] == 1


def test_larc_local_lr_is_a_tensor_in_the_state_dict_only():
    p = torch.nn.Parameter(torch.ones(3))
    opt = po.Larc([p], lr=1e-4)               # tiny lr: local_lr is clipped to lr
    p.grad = torch.full((3,), 1e-3)
    opt.step()
    assert opt.state[p]["local_lr"] == 1e-4 and isinstance(opt.state[p]["local_lr"], float)
    v = opt.state_dict()["state"][0]["local_lr"]
    assert isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype == p.dtype
    assert v.item() == pytest.approx(1e-4)
    assert isinstance(opt.state[p]["local_lr"], float)      # opt.state as fastai shows it
