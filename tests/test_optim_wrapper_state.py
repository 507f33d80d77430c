"""`OptimWrapper`'s `state`, `param_groups` and `state_dict` are the wrapped torch optimizer's, so
tools that read them (DCP's initialisation, checkpoint code) see the truth."""
import copy

import torch

import pyfastopt as po


def test_state_and_groups_are_the_wrapped_optimizers():
    p = torch.nn.Parameter(torch.ones(3))
    opt = po.OptimWrapper([p], torch.optim.Adam, lr=0.1)
    assert opt.state is opt.opt.state and len(opt.state) == 0
    p.grad = torch.full((3,), 0.5)
    opt.step()
    assert opt.state is opt.opt.state
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.full((3,), 0.05))  # (1-0.9)*0.5
    assert opt.param_groups is opt.opt.param_groups
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"] is opt.opt.state[p]["exp_avg"]
    opt.clear_state()
    assert len(opt.state) == 0 and len(opt.opt.state) == 0


def test_resume_through_state_equals_uninterrupted():
    # what a checkpoint tool does: read `state` to see whether the optimizer has been stepped,
    # save state_dict, load it into a fresh wrapper, carry on
    def make():
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 2)
        return m, po.OptimWrapper(m.parameters(), torch.optim.AdamW, lr=1e-2)

    x = torch.randn(5, 4)

    def step(m, o):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    m1, o1 = make()
    for _ in range(4):
        step(m1, o1)
    m2, o2 = make()
    for _ in range(2):
        step(m2, o2)
    sd, msd = o2.state_dict(), m2.state_dict()
    m3, o3 = make()
    m3.load_state_dict(msd)
    assert len(o3.state) == 0
    o3.load_state_dict(sd)
    assert len(o3.state) == 2 and all(s["step"] == 2 for s in o3.state.values())
    for _ in range(2):
        step(m3, o3)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)


def test_lookahead_over_optim_wrapper_resumes_bit_for_bit():
    # fastai's Lookahead wraps any fastai optimizer, OptimWrapper included: its state dict is the
    # torch optimizer's plus Lookahead's count and slow weights
    def run(split):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))

        def make():
            return po.Lookahead(po.OptimWrapper(list(m.parameters()), torch.optim.AdamW, lr=0.05),
                                k=3)
        o = make()
        for i in range(7):
            if i == split:
                sd = copy.deepcopy(o.state_dict())
                o = make()
                o.load_state_dict(sd)
                assert o.count == split
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
        return [p.detach().clone() for p in m.parameters()]
    want = run(None)
    for split in (2, 4):            # 4: after a sync (k=3), with moved slow weights
        assert all(torch.equal(a, b) for a, b in zip(run(split), want))
