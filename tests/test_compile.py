"""`torch.compile`: a compiled function that runs forward, backward and `opt.step()` works from its
first call and gives eager's numbers, and so does `torch.compile(opt.step)`. The step itself runs
eagerly inside the compiled region (`torch.compiler.disable`: a graph break)."""
import pytest
import torch

import pyfastopt as po

OPTS = {
    "Adam": lambda ps: po.Adam(ps, lr=1e-2, wd=0.01),
    "Larc": lambda ps: po.Larc(ps, lr=0.1),
    "Lamb": lambda ps: po.Lamb(ps, lr=1e-2),
    "ranger": lambda ps: po.ranger(ps, lr=1e-2, k=2),
}
STEPS = 3


def _run(make, how, backend="aot_eager"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = make(list(model.parameters()))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 8, generator=g), torch.randn(4, 2, generator=g)

    def train_step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if how == "train_step":
        f = torch.compile(train_step, backend=backend)
    elif how == "opt.step":
        step = torch.compile(opt.step, backend=backend)

        def f():
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            step()
    else:
        f = train_step
    for _ in range(STEPS):
        f()
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("how", ["train_step", "opt.step"])
@pytest.mark.parametrize("name", list(OPTS))
def test_compiled_equals_eager(name, how):
    # aot_eager traces and runs the same aten ops as eager: the numbers must be identical
    want = _run(OPTS[name], "eager")
    got = _run(OPTS[name], how)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_inductor_train_step():
    # inductor generates its own forward/backward kernels (other rounding): close, not identical
    want = _run(OPTS["Adam"], "eager")
    got = _run(OPTS["Adam"], "train_step", backend="inductor")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_grad_is_not_traced():
    # traced, zeroing the grads in place makes them mutated graph inputs, which costs more than
    # the eager `_foreach_zero_` (bench/bench_compile.py); the grads are still zeroed
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = po.Adam(list(model.parameters()), lr=1e-2)
    x = torch.randn(2, 4)

    @torch.compile(backend=recording)
    def zero_then_forward():
        opt.zero_grad()
        return model(x).sum()

    model(x).sum().backward()
    zero_then_forward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    traced = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert traced and not any("zero" in t for t in traced), traced
