"""Threads: one optimizer stepped from two threads at once serializes (its own lock, taken for the
whole step, closure included), so state and params end as after the same steps run one after the
other; two optimizers in two threads still step at the same time (no global lock); the lock is
neither pickled nor shared by copies."""
import contextlib
import copy
import pickle
import sys
import threading

import pytest
import torch

import pyfastopt as po
from helpers import native_off

STEPS = 200          # per thread
SHAPES = [(64, 32), (32,), (300,), (7, 5)]


def make_params(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]
    for p in ps:
        # fixed grads: the result of N steps does not depend on which thread ran which step
        p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
    return ps


@contextlib.contextmanager
def fast_switching():
    "Switch threads every few bytecodes, so that unguarded steps really interleave."
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(fns):
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)
    ts = [threading.Thread(target=guarded, args=(fn,)) for fn in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), "a thread did not finish (deadlock?)"
    assert not errors, errors


def stepper(opt, n):
    def go():
        for _ in range(n):
            opt.step()
    return go


PATHS = {
    "native": lambda o: contextlib.nullcontext(),
    "torch_ops": lambda o: native_off(),
    "per_param": lambda o: setattr(o, "impl", "per_param") or contextlib.nullcontext(),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("make", [
    lambda ps: po.Adam(ps, lr=1e-2, wd=0.01),
    lambda ps: po.Lamb(ps, lr=1e-2, wd=0.01),
    lambda ps: po.SGD(ps, lr=1e-2, mom=0.9),
], ids=["Adam", "Lamb", "SGD_mom"])
def test_one_optimizer_two_threads_equals_sequential(make, path):
    ps_seq = make_params()
    opt_seq = make(ps_seq)
    with PATHS[path](opt_seq):
        stepper(opt_seq, 2 * STEPS)()
    ps = make_params()
    opt = make(ps)
    with PATHS[path](opt), fast_switching():
        run_threads([stepper(opt, STEPS), stepper(opt, STEPS)])
    for p, q in zip(ps, ps_seq):
        st, st_seq = opt.state[p], opt_seq.state[q]
        assert set(st) == set(st_seq)
        if "step" in st:
            assert st["step"] == 2 * STEPS
        for k, v in st_seq.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(st[k], v), k
        assert torch.equal(p, q)


def test_lookahead_two_threads_equals_sequential():
    "Lookahead's own counter and slow weights are stepped under its lock too."
    def make(ps):
        return po.Lookahead(po.Adam(ps, lr=1e-2), k=5, alpha=0.5)
    ps_seq = make_params()
    opt_seq = make(ps_seq)
    stepper(opt_seq, 2 * 60)()
    ps = make_params()
    opt = make(ps)
    with fast_switching():
        run_threads([stepper(opt, 60), stepper(opt, 60)])
    assert opt.count == 120
    assert opt.state[ps[0]]["step"] == 120
    for p, q in zip(ps, ps_seq):
        assert torch.equal(p, q)
    for s, s_seq in zip(opt.slow_weights, opt_seq.slow_weights):
        for a, b in zip(s, s_seq):
            assert torch.equal(a, b)


def test_optim_wrapper_two_threads_equals_sequential():
    "The wrapper guards the torch optimizer's step, which has no lock of its own."
    n = STEPS // 2
    ps_seq = make_params()
    opt_seq = po.OptimWrapper(ps_seq, torch.optim.Adam, lr=1e-2)
    stepper(opt_seq, 2 * n)()
    ps = make_params()
    opt = po.OptimWrapper(ps, torch.optim.Adam, lr=1e-2)
    with fast_switching():
        run_threads([stepper(opt, n), stepper(opt, n)])
    assert int(opt.opt.state[ps[0]]["step"]) == 2 * n
    for p, q in zip(ps, ps_seq):
        assert torch.equal(p, q)


def test_closures_do_not_interleave():
    "The closure runs under the lock too: one thread's forward/backward is not mixed into the"
    " other's step."
    p = torch.zeros(3, requires_grad=True)
    opt = po.SGD([p], lr=1.0)
    inside = []

    def closure():
        inside.append(1)
        assert len(inside) == 1, "two closures of one optimizer ran at once"
        p.grad = torch.ones(3)
        for _ in range(200):           # give the other thread every chance to enter
            pass
        inside.pop()
        return 0.0

    def go():
        for _ in range(100):
            opt.step(closure)
    with fast_switching():
        run_threads([go, go])
    assert torch.equal(p.detach(), torch.full((3,), -200.0))


def test_two_optimizers_step_concurrently():
    "While thread A is inside opt_a.step (its closure waits), thread B steps opt_b to the end:"
    " there is no lock shared between optimizers."
    pa, pb = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt_a, opt_b = po.Adam([pa], lr=0.1), po.Adam([pb], lr=0.1)
    pb.grad = torch.ones(2)
    b_done = threading.Event()
    seen = {}

    def closure_a():
        pa.grad = torch.ones(2)
        seen["b_finished_meanwhile"] = b_done.wait(60)     # liveness, not speed
        return 0.0

    def thread_b():
        for _ in range(5):
            opt_b.step()
        b_done.set()
    run_threads([lambda: opt_a.step(closure_a), thread_b])
    assert seen["b_finished_meanwhile"]
    assert opt_b.state[pb]["step"] == 5 and opt_a.state[pa]["step"] == 1


def test_lock_not_pickled_nor_shared_by_copies():
    ps = make_params()
    opt = po.Adam(ps, lr=1e-2)
    la = po.Lookahead(po.Adam(make_params(), lr=1e-2))
    for o in (opt, la):
        o.step()                       # the lock exists now
        for clone in (pickle.loads(pickle.dumps(o)), copy.deepcopy(o), copy.copy(o)):
            clone.step()
            assert clone.__dict__.get("_step_lock") is not o.__dict__["_step_lock"]
    deep = copy.deepcopy(opt)
    deep.step()
    assert deep.state[deep.param_lists[0][0]]["step"] == 2
    assert opt.state[ps[0]]["step"] == 1
