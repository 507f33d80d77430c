"""fastai's steppers: small functions that each do one part of an optimizer step.

Each is called as `cb(p, **{**state, **hyper})` and may return a dict that is merged into the
param's state (spec §2.5, §3). Each stepper's math is written once: `p` is a parameter tensor, or
a `ParamBatch` standing for a whole bucket of parameters, in which case `p.data`, `p.grad` and the
state tensors are `TensorList`s and every tensor method below is one `torch._foreach_*` call.
Steppers marked with `@multi_tensor` promise exactly that; the optimizer runs a chain on whole
buckets only when all its steppers carry the mark.

Each built-in stepper declares `state_keys`, the per-param state it keeps (what
`load_state_dict` accepts for a chain of them). A stepper may declare `hyper_bounds`: {hyper name: (low, high, high_inclusive)} checked when the
hyper is set, so e.g. Adam's `mom` must be < 1 because its debiasing divides by `1 - mom`.
"""
import math

from .tensor_list import clip_lr, norms, rmss, softplus, trust_ratio, zeros_like

__all__ = ["sgd_step", "weight_decay", "l2_reg", "average_grad", "average_sqr_grad",
           "momentum_step", "rms_prop_step", "step_stat", "debias", "adam_step", "radam_step",
           "qhadam_step", "larc_layer_lr", "larc_step", "lamb_step", "lion_step", "radam_rectifier",
           "multi_tensor"]

_BELOW_ONE = (0.0, 1.0, False)          # [0, 1): the formula divides by 1 - value


def multi_tensor(f):
    "Mark `f` as written for a tensor or a `ParamBatch` alike (see the module docstring)."
    f.multi_tensor = True
    return f


@multi_tensor
def sgd_step(p, lr, **kwargs):
    "Vanilla SGD: `p -= lr * grad`."
    p.data.add_(p.grad.data, alpha=-lr)


sgd_step.state_keys = ()


@multi_tensor
def weight_decay(p, lr, wd, do_wd=True, **kwargs):
    "True (decoupled) weight decay: `p *= 1 - lr * wd`."
    if do_wd and wd != 0:
        p.data.mul_(1 - lr * wd)


weight_decay.defaults = dict(wd=0.)
weight_decay.state_keys = ()


@multi_tensor
def l2_reg(p, lr, wd, do_wd=True, **kwargs):
    "L2 regularization: `grad += wd * p` (the gradient is changed in place, as in fastai)."
    if do_wd and wd != 0:
        p.grad.data.add_(p.data, alpha=wd)


l2_reg.defaults = dict(wd=0.)
l2_reg.state_keys = ()


@multi_tensor
def average_grad(p, mom, dampening=False, grad_avg=None, **kwargs):
    "Moving average of the gradients: `grad_avg = mom * grad_avg + (1 - mom if dampening else 1) * grad`."
    if grad_avg is None:
        grad_avg = zeros_like(p.grad.data)
    damp = 1 - mom if dampening else 1.
    grad_avg.mul_(mom).add_(p.grad.data, alpha=damp)
    return {"grad_avg": grad_avg}


average_grad.defaults = dict(mom=0.9)
average_grad.state_keys = ("grad_avg",)


@multi_tensor
def average_sqr_grad(p, sqr_mom, dampening=True, sqr_avg=None, **kwargs):
    "Moving average of the squared gradients (dampened by default, unlike `average_grad`)."
    if sqr_avg is None:
        sqr_avg = zeros_like(p.grad.data)
    damp = 1 - sqr_mom if dampening else 1.
    sqr_avg.mul_(sqr_mom).addcmul_(p.grad.data, p.grad.data, value=damp)
    return {"sqr_avg": sqr_avg}


average_sqr_grad.defaults = dict(sqr_mom=0.99)
average_sqr_grad.state_keys = ("sqr_avg",)


@multi_tensor
def momentum_step(p, lr, grad_avg, **kwargs):
    "Step along the averaged gradient: `p -= lr * grad_avg`."
    p.data.add_(grad_avg, alpha=-lr)


momentum_step.state_keys = ()


@multi_tensor
def rms_prop_step(p, lr, sqr_avg, eps, grad_avg=None, **kwargs):
    "RMSProp step: `p -= lr * x / (sqrt(sqr_avg) + eps)`, x the averaged gradient if any, else the gradient."
    denom = sqr_avg.sqrt().add_(eps)
    p.data.addcdiv_((grad_avg if grad_avg is not None else p.grad.data), denom, value=-lr)


rms_prop_step.defaults = dict(eps=1e-8)
rms_prop_step.state_keys = ()


@multi_tensor
def step_stat(p, step=0, **kwargs):
    "Count the steps taken (a Python int in the state)."
    return {"step": step + 1}


step_stat.state_keys = ("step",)


def debias(mom, damp, step):
    "The debiasing term of a moving average: `damp * (1 - mom**step) / (1 - mom)`."
    return damp * (1 - mom ** step) / (1 - mom)


@multi_tensor
def adam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, **kwargs):
    "Adam step: `p -= lr / debias1 * grad_avg / (sqrt(sqr_avg / debias2) + eps)`."
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    p.data.addcdiv_(grad_avg, (sqr_avg / debias2).sqrt_().add_(eps), value=-lr / debias1)
    return p


adam_step._defaults = dict(eps=1e-5)
adam_step.state_keys = ()
adam_step.hyper_bounds = dict(mom=_BELOW_ONE, sqr_mom=_BELOW_ONE)


def radam_rectifier(sqr_mom, step):
    "RAdam's variance rectification term at `step`, or None while it is undefined (r <= 5)."
    r_inf = 2 / (1 - sqr_mom) - 1
    r = r_inf - 2 * step * sqr_mom ** step / (1 - sqr_mom ** step)
    if not r > 5:
        return None
    return math.sqrt(((r - 4) * (r - 2) * r_inf) / ((r_inf - 4) * (r_inf - 2) * r))


@multi_tensor
def radam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, beta, **kwargs):
    "RAdam step: Adam with the variance rectification term once it is defined (r > 5), else momentum SGD."
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    v = radam_rectifier(sqr_mom, step)
    if v is not None:
        denom = (sqr_avg / debias2).sqrt_()
        if eps:
            denom.add_(eps)
        if beta:
            denom = softplus(denom, beta)
        p.data.addcdiv_(grad_avg, denom, value=-lr * v / debias1)
    else:
        p.data.add_(grad_avg, alpha=-lr / debias1)
    return p


radam_step._defaults = dict(eps=1e-5)
radam_step.state_keys = ()
adam_step.state_keys = ()
radam_step.hyper_bounds = dict(mom=_BELOW_ONE, sqr_mom=_BELOW_ONE)


@multi_tensor
def qhadam_step(p, lr, mom, sqr_mom, sqr_avg, nu_1, nu_2, step, grad_avg, eps, **kwargs):
    "QHAdam step: quasi-hyperbolic mixes of the gradient and its averages."
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    g = p.grad.data
    num = (g * (1 - nu_1)).add_(grad_avg / debias1, alpha=nu_1)
    den = (g * g).mul_(1 - nu_2).add_(sqr_avg / debias2, alpha=nu_2).sqrt_().add_(eps)
    p.data.addcdiv_(num, den, value=-lr)
    return p


qhadam_step._defaults = dict(eps=1e-8)
qhadam_step.state_keys = ()
qhadam_step.hyper_bounds = dict(mom=_BELOW_ONE, sqr_mom=_BELOW_ONE)


@multi_tensor
def larc_layer_lr(p, lr, trust_coeff, wd, eps, clip=True, **kwargs):
    "LARC's per-layer learning rate `lr * tc * |p| / (|g| + |p| * wd + eps)`, at most `lr` if `clip`."
    p_norm, g_norm = norms(p.data, p.grad.data)
    local_lr = p_norm * (lr * trust_coeff) / (g_norm + p_norm * wd + eps)
    return {"local_lr": clip_lr(lr, local_lr) if clip else local_lr}


larc_layer_lr.defaults = dict(trust_coeff=0.02, wd=0., eps=1e-8)
larc_layer_lr.state_keys = ("local_lr",)


@multi_tensor
def larc_step(p, local_lr, grad_avg=None, **kwargs):
    "Step with LARC's per-layer learning rate: `p -= local_lr * x`."
    x = p.grad.data if grad_avg is None else grad_avg
    p.data.add_(x * local_lr, alpha=-1)


larc_step.state_keys = ()


@multi_tensor
def lamb_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, **kwargs):
    "LAMB step: the Adam update scaled by the trust ratio `rms(p) / rms(update)` (at most 10)."
    debias1 = debias(mom, 1 - mom, step)
    debias2 = debias(sqr_mom, 1 - sqr_mom, step)
    update = (grad_avg / debias1).div_((sqr_avg / debias2).sqrt_().add_(eps))
    r1, r2 = rmss(p.data, update)
    q = trust_ratio(r1, r2, 10)
    p.data.add_(update.mul_(q), alpha=-lr)     # `update` is this step's own: scaled in place


lamb_step._defaults = dict(eps=1e-6, wd=0.)
lamb_step.state_keys = ()
lamb_step.hyper_bounds = dict(mom=_BELOW_ONE, sqr_mom=_BELOW_ONE)


@multi_tensor
def lion_step(p, lr, mom, sqr_mom, grad_avg=None, **kwargs):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): step by the sign
    of an interpolation of the momentum and the gradient, then update the momentum with another
    coefficient: `p -= lr * sign(mom * grad_avg + (1 - mom) * grad)`, then
    `grad_avg = sqr_mom * grad_avg + (1 - sqr_mom) * grad` (`mom`, `sqr_mom`: the paper's beta1,
    beta2). Weight decay is the chain's first stepper."""
    if grad_avg is None:
        grad_avg = zeros_like(p.grad.data)
    update = grad_avg.mul(mom).add_(p.grad.data, alpha=1 - mom)
    p.data.add_(update.sign_(), alpha=-lr)
    grad_avg.mul_(sqr_mom).add_(p.grad.data, alpha=1 - sqr_mom)
    return {"grad_avg": grad_avg}


lion_step.state_keys = ("grad_avg",)
