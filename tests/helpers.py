"""Shared test helpers for the pyfastopt suite.

Everything here is written from the specification (/work/shared/reference/fastai-optimizer-spec.md),
never from pyfastopt's code:

* the notebook's own ``tst_param`` / ``tst_params`` (spec §6: ``tensor([val]).float()``, so a
  scalar gives shape [1] and a list gives shape [1, n]);
* ``test_close`` with the notebook's semantics (``|a-b| < eps`` element-wise, default eps 1e-5);
* an independent float64 reference optimizer that follows §2.5 (per param, callbacks in order,
  grad-None params skipped, state switch ``do_wd``) and the §3 stepper formulas exactly, plus
  §4.1 Lookahead.
"""
import contextlib
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# notebook helpers (spec §6)
# ----------------------------------------------------------------------------------------------
def nb_tensor(x):
    "fastai's `tensor` for what the notebook needs: lists / numbers, float64 -> float32."
    t = torch.tensor(x)
    if t.dtype == torch.float64:
        t = t.float()
    return t


def tst_param(val, grad=None):
    "The notebook's helper: value `tensor([val]).float()`, grad `tensor([val/10 if grad is None else grad]).float()`."
    res = torch.tensor([val]).float()
    res.grad = torch.tensor([val / 10 if grad is None else grad]).float()
    return res


def tst_params():
    "values 0,1,2,3 (shape [1]) with grads 0, .1, .2, .3"
    from pyfastopt import L
    return L.range(4).map(tst_param)


def noop(x=None, *args, **kwargs):
    "fastcore's noop"
    return x


def test_close(a, b, eps=1e-5):
    "fastcore test_close: |a-b| < eps element-wise (broadcasting like the notebook)"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a = torch.as_tensor(a, dtype=torch.float64) if not isinstance(a, torch.Tensor) else a.double()
        b = torch.as_tensor(b, dtype=torch.float64) if not isinstance(b, torch.Tensor) else b.double()
        assert bool(((a - b).abs() < eps).all()), f"{a} != {b} (eps {eps})"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            test_close(x, y, eps)
    else:
        assert abs(a - b) < eps, f"{a} != {b} (eps {eps})"


test_close.__test__ = False  # not a pytest test


def assert_observed(got, expected, rtol=1e-6, atol=2.5e-7):
    """Compare a float32 result with the value the spec reports as observed from real fastai
    (printed to ~8 significant digits): 1e-6 relative, plus ~2 ulp of 1.0 absolute for
    values that are (near) zero."""
    got = torch.as_tensor(got).detach().double().cpu()
    exp = torch.as_tensor(expected, dtype=torch.float64)
    got = got.reshape(exp.shape) if got.numel() == exp.numel() else got
    torch.testing.assert_close(got, exp, rtol=rtol, atol=atol)


def close32(got, ref, rtol=1e-6, atol=1e-7):
    "float32 (or other) result vs a float64 reference"
    torch.testing.assert_close(got.detach().double().cpu(), ref.detach().double().cpu(), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# float64 reference of the spec formulas (§3) — one function per fastai callback
# Each callback takes (p, g, st, h): p the float64 param (mutated in place), g the float64 grad
# (mutated in place by l2_reg), st the per-param state dict, h the group's hyper dict.
# ----------------------------------------------------------------------------------------------
def debias64(mom, damp, step):
    return damp * (1 - mom ** step) / (1 - mom)


def r_weight_decay(p, g, st, h):
    if st.get('do_wd', True) and h['wd'] != 0:
        p.mul_(1 - h['lr'] * h['wd'])


def r_l2_reg(p, g, st, h):
    if st.get('do_wd', True) and h['wd'] != 0:
        g.add_(h['wd'] * p)


def r_average_grad(dampening=False):
    def average_grad(p, g, st, h):
        m = st.get('grad_avg')
        if m is None:
            m = torch.zeros_like(g)
        d = 1 - h['mom'] if dampening else 1.
        st['grad_avg'] = m * h['mom'] + d * g
    return average_grad


def r_average_sqr_grad(dampening=True):
    def average_sqr_grad(p, g, st, h):
        v = st.get('sqr_avg')
        if v is None:
            v = torch.zeros_like(g)
        d = 1 - h['sqr_mom'] if dampening else 1.
        st['sqr_avg'] = v * h['sqr_mom'] + d * g * g
    return average_sqr_grad


def r_sgd_step(p, g, st, h):
    p.sub_(h['lr'] * g)


def r_momentum_step(p, g, st, h):
    p.sub_(h['lr'] * st['grad_avg'])


def r_rms_prop_step(p, g, st, h):
    x = st['grad_avg'] if st.get('grad_avg') is not None else g
    p.sub_(h['lr'] * x / (st['sqr_avg'].sqrt() + h['eps']))


def r_step_stat(p, g, st, h):
    st['step'] = st.get('step', 0) + 1


def r_adam_step(p, g, st, h):
    mom, sqr_mom, step = h['mom'], h['sqr_mom'], st['step']
    d1 = debias64(mom, 1 - mom, step)
    d2 = debias64(sqr_mom, 1 - sqr_mom, step)
    p.sub_((h['lr'] / d1) * st['grad_avg'] / ((st['sqr_avg'] / d2).sqrt() + h['eps']))


def radam_r(sqr_mom, step):
    r_inf = 2 / (1 - sqr_mom) - 1
    return r_inf, r_inf - 2 * step * sqr_mom ** step / (1 - sqr_mom ** step)


def r_radam_step(p, g, st, h):
    mom, sqr_mom, step, eps, beta = h['mom'], h['sqr_mom'], st['step'], h['eps'], h['beta']
    d1 = debias64(mom, 1 - mom, step)
    d2 = debias64(sqr_mom, 1 - sqr_mom, step)
    r_inf, r = radam_r(sqr_mom, step)
    m, v = st['grad_avg'], st['sqr_avg']
    if r > 5:
        vr = math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))
        den = (v / d2).sqrt()
        if eps:
            den = den + eps
        if beta:
            den = torch.log1p(torch.exp(beta * den)) / beta
        p.sub_((h['lr'] * vr / d1) * m / den)
    else:
        p.sub_((h['lr'] / d1) * m)


def r_qhadam_step(p, g, st, h):
    mom, sqr_mom, step = h['mom'], h['sqr_mom'], st['step']
    nu_1, nu_2 = h['nu_1'], h['nu_2']
    d1 = debias64(mom, 1 - mom, step)
    d2 = debias64(sqr_mom, 1 - sqr_mom, step)
    num = (1 - nu_1) * g + nu_1 * st['grad_avg'] / d1
    den = ((1 - nu_2) * g * g + nu_2 * st['sqr_avg'] / d2).sqrt() + h['eps']
    p.sub_(h['lr'] * num / den)


def r_larc_layer_lr(clip=True):
    def larc_layer_lr(p, g, st, h):
        lr = h['lr']
        pn, gn = p.norm().item(), g.norm().item()
        ll = lr * h['trust_coeff'] * pn / (gn + pn * h['wd'] + h['eps'])
        st['local_lr'] = (lr if not ll < lr else ll) if clip else ll
    return larc_layer_lr


def r_larc_step(p, g, st, h):
    x = st['grad_avg'] if st.get('grad_avg') is not None else g
    p.sub_(st['local_lr'] * x)


def r_lamb_step(p, g, st, h):
    mom, sqr_mom, step = h['mom'], h['sqr_mom'], st['step']
    d1 = debias64(mom, 1 - mom, step)
    d2 = debias64(sqr_mom, 1 - sqr_mom, step)
    r1 = p.pow(2).mean().sqrt().item()
    u = (st['grad_avg'] / d1) / ((st['sqr_avg'] / d2).sqrt() + h['eps'])
    r2 = u.pow(2).mean().sqrt().item()
    q = 1 if r1 == 0 or r2 == 0 else min(r1 / r2, 10)
    p.sub_(h['lr'] * q * u)


def r_lion_step(p, g, st, h):
    "Lion: p -= lr * sign(mom * m + (1 - mom) * g), then m = sqr_mom * m + (1 - sqr_mom) * g"
    m = st.get('grad_avg')
    if m is None:
        m = torch.zeros_like(g)
    p.sub_(h['lr'] * torch.sign(h['mom'] * m + (1 - h['mom']) * g))
    st['grad_avg'] = h['sqr_mom'] * m + (1 - h['sqr_mom']) * g


# ----------------------------------------------------------------------------------------------
# reference factories (spec §4 table): callbacks and the full hyper dict of one group
# ----------------------------------------------------------------------------------------------
def ref_factory(kind, lr, decouple_wd=True, **kw):
    """Return (cbs, hypers) for one param group of factory `kind` with the given keyword
    arguments, defaults as in spec §4."""
    wdcb = r_weight_decay if decouple_wd else r_l2_reg
    if kind == 'SGD':
        h = dict(lr=lr, mom=0., wd=0.)
        h.update(kw)
        cbs = [wdcb] + ([r_average_grad(False), r_momentum_step] if h['mom'] != 0 else [r_sgd_step])
    elif kind == 'RMSProp':
        h = dict(lr=lr, mom=0., sqr_mom=0.99, eps=1e-8, wd=0.)
        h.update(kw)
        cbs = [wdcb] + ([r_average_sqr_grad(True)] if h['mom'] == 0
                        else [r_average_grad(False), r_average_sqr_grad(True)]) + [r_rms_prop_step]
    elif kind == 'Adam':
        h = dict(lr=lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
        h.update(kw)
        cbs = [wdcb, r_average_grad(True), r_average_sqr_grad(True), r_step_stat, r_adam_step]
    elif kind == 'RAdam':
        h = dict(lr=lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0., beta=0.)
        h.update(kw)
        cbs = [wdcb, r_average_grad(True), r_average_sqr_grad(True), r_step_stat, r_radam_step]
    elif kind == 'QHAdam':
        h = dict(lr=lr, mom=0.999, sqr_mom=0.999, nu_1=0.7, nu_2=1.0, eps=1e-8, wd=0.)
        h.update(kw)
        cbs = [wdcb, r_average_grad(True), r_average_sqr_grad(True), r_step_stat, r_qhadam_step]
    elif kind == 'Larc':
        h = dict(lr=lr, mom=0.9, trust_coeff=0.02, eps=1e-8, wd=0.)
        clip = kw.pop('clip', True)
        h.update(kw)
        cbs = [wdcb] + ([r_average_grad(False)] if h['mom'] != 0 else []) + [r_larc_layer_lr(clip), r_larc_step]
    elif kind == 'Lamb':
        h = dict(lr=lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.)
        h.update(kw)
        cbs = [wdcb, r_average_grad(True), r_average_sqr_grad(True), r_step_stat, r_lamb_step]
    elif kind == 'Lion':
        h = dict(lr=lr, mom=0.9, sqr_mom=0.99, wd=0.1)
        h.update(kw)
        cbs = [wdcb, r_lion_step]
    else:
        raise ValueError(kind)
    return cbs, h


class RefOptimizer:
    """float64 reference following spec §2.5 (and §4.1 for Lookahead).

    groups: list of lists of tensors (copied to float64); cbs: list of reference callbacks;
    hypers: one dict per group; states: optional initial per-param state dicts (same nesting)."""

    def __init__(self, groups, cbs, hypers, states=None, lookahead=None, dtype=torch.float64):
        self.groups = [[p.detach().to(dtype).clone() for p in g] for g in groups]
        self.cbs = cbs
        self.hypers = hypers
        self.state = [[dict(s) for s in sg] for sg in states] if states else [[{} for _ in g] for g in groups]
        self.lookahead = lookahead
        self.count, self.slow = 0, None
        self.dtype = dtype

    def step(self, grads):
        "grads: same nesting as groups, tensors or None"
        if self.lookahead is not None and self.slow is None:
            self.slow = [[p.clone() for p in g] for g in self.groups]
        for gi, grp in enumerate(self.groups):
            for pi, p in enumerate(grp):
                gr = grads[gi][pi]
                if gr is None:
                    continue
                gr = gr.detach().to(self.dtype).clone()
                st = self.state[gi][pi]
                for cb in self.cbs:
                    cb(p, gr, st, self.hypers[gi])
        if self.lookahead is not None:
            k, alpha = self.lookahead
            self.count += 1
            if self.count % k == 0:
                for sg, fg in zip(self.slow, self.groups):
                    for s, f in zip(sg, fg):
                        s.add_(alpha * (f - s))
                        f.copy_(s)

    def flat(self):
        return [p for g in self.groups for p in g]


# ----------------------------------------------------------------------------------------------
# a deterministic mixed-shape problem: 2 groups, shapes 0-d / 1-D / 2-D / 4-D, one None grad
# ----------------------------------------------------------------------------------------------
SHAPES = [[(), (5,)], [(3, 4), (2, 3, 2, 2), (3,)]]
NONE_GRAD = (1, 2)        # group 1, param 2 never gets a grad
NO_WD = (0, 1)            # group 0, param 1 has state do_wd=False
SMALL_GRAD = (1, 1)       # group 1, param 1 gets grads scaled by 1e-3 (exercises Larc clipping)


def make_problem(n_steps=10, seed=0, dtype=torch.float32, device='cpu'):
    "Returns (init_groups, grads) where grads[k] has the groups' nesting (None for NONE_GRAD)."
    gen = torch.Generator().manual_seed(seed)
    init = []
    for g in SHAPES:
        grp = []
        for shp in g:
            mag = 1 + torch.rand(shp, generator=gen, dtype=torch.float64)
            sign = torch.where(torch.rand(shp, generator=gen, dtype=torch.float64) < 0.5, -1., 1.)
            grp.append((mag * sign).to(dtype).to(device))
        init.append(grp)
    grads = []
    for _ in range(n_steps):
        gs = []
        for gi, g in enumerate(SHAPES):
            row = []
            for pi, shp in enumerate(g):
                if (gi, pi) == NONE_GRAD:
                    row.append(None)
                    continue
                x = torch.randn(shp, generator=gen, dtype=torch.float64)
                if (gi, pi) == SMALL_GRAD:
                    x = x * 1e-3
                row.append(x.to(dtype).to(device))
            gs.append(row)
        grads.append(gs)
    return init, grads


def clone_groups(groups):
    return [[p.clone() for p in g] for g in groups]


def set_grads(groups, grads):
    for grp, gg in zip(groups, grads):
        for p, g in zip(grp, gg):
            p.grad = None if g is None else g.clone()


# ----------------------------------------------------------------------------------------------
# comparing two runs (not spec material)
# ----------------------------------------------------------------------------------------------
def close_scaled(a, b, dtype):
    """Equal within 1e-6 (float32) or 1e-12 (float64) relative to each value, with the same
    fraction of the tensor's largest magnitude as absolute slack (for entries near zero)."""
    a, b = torch.as_tensor(a, dtype=dtype), torch.as_tensor(b, dtype=dtype)
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    scale = float(b.abs().max()) if b.numel() else 0.
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * scale + 1e-30)


def same_state(s1, ps1, s2, ps2, close, strict_types=True, close_float=None):
    """The state dicts of params `ps1` in `s1` and of `ps2` in `s2` hold the same keys in the same
    order, values of the same type, tensors of the same dtype and shape and `close(a, b)`,
    floats `close_float` (default `close`) as float64 tensors, anything else equal. Without
    `strict_types`: values of which one is a tensor are compared with `close` as tensors of the
    param's dtype and device, any others must be equal."""
    for p1, p2 in zip(ps1, ps2):
        a, b = s1[p1], s2[p2]
        assert list(a) == list(b)
        for k in a:
            if not strict_types:
                if isinstance(a[k], torch.Tensor) or isinstance(b[k], torch.Tensor):
                    close(torch.as_tensor(a[k], dtype=p1.dtype, device=p1.device),
                          torch.as_tensor(b[k], dtype=p1.dtype, device=p1.device))
                else:
                    assert a[k] == b[k], k
                continue
            assert type(a[k]) is type(b[k]), (k, type(a[k]), type(b[k]))
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
                close(a[k].cpu(), b[k].cpu())
            elif isinstance(a[k], float):
                (close_float or close)(torch.tensor(a[k], dtype=torch.float64),
                                       torch.tensor(b[k], dtype=torch.float64))
            else:
                assert a[k] == b[k], k


# ----------------------------------------------------------------------------------------------
# switching pyfastopt's paths (not spec material)
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def native_off():
    "pyfastopt's native kernels disabled (PYFASTOPT_NATIVE=0): the torch paths run."
    old = os.environ.get("PYFASTOPT_NATIVE")
    os.environ["PYFASTOPT_NATIVE"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYFASTOPT_NATIVE"]
        else:
            os.environ["PYFASTOPT_NATIVE"] = old
