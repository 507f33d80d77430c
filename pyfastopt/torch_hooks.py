"""torch's global optimizer step hooks, once per step for wrappers.

`torch.optim.Optimizer` wraps every optimizer class's `step` (`_patch_step_function`,
`profile_hook_step`) so that a call runs torch's global step hooks
(`torch.optim.optimizer.register_optimizer_step_pre_hook` / `_post_hook`) and the instance's
own hooks around it. A wrapper (`Lookahead`, `ranger`, `OptimWrapper`) is such an optimizer and
steps another one: calling the inner `step()` would run the global hooks a second time within
one step. `step_inner` steps the inner optimizer with its own (instance) hooks only.
"""
import torch

__all__ = ["step_inner"]


def step_inner(opt, closure=None):
    "Run `opt.step(closure)` from inside a wrapper's (hooked) step: `opt`'s own hooks, no global ones."
    step = type(opt).step
    raw = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    if raw is None:                                  # not a hooked torch step
        return opt.step() if closure is None else opt.step(closure)
    args, kwargs = ((opt,), {}) if closure is None else ((opt, closure), {})
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(opt).__name__}.step"):
        for hook in list(opt._optimizer_step_pre_hooks.values()):
            res = hook(opt, args, kwargs)
            if res is not None:
                if not (isinstance(res, tuple) and len(res) == 2):
                    raise RuntimeError(f"{hook} must return None or a tuple of (new_args, "
                                       f"new_kwargs), but got {res}.")
                args, kwargs = res
        out = raw(*args, **kwargs)
        opt._optimizer_step_code()
        for hook in list(opt._optimizer_step_post_hooks.values()):
            hook(opt, args, kwargs)
    return out
