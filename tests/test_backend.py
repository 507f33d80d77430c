"""The backend policy as pure functions (`backend.choose_impl`, `backend.choose_path`), and the
recipe lookup (`recipe.recipe_for`, `recipe.flat_safe_steppers`): every rule, from plain facts."""
from functools import partial

import pytest
import torch

import pyfastopt as po
from optim_db import FASTAI_ROWS, ROWS
from pyfastopt import backend
from pyfastopt import steppers as S
from pyfastopt.backend import (BUCKETS, CHAIN, FLAT_MAX_NUMEL, FUSED, NATIVE, NATIVE_MT_NUMEL,
                               PER_PARAM, ChainFacts, Knobs, ParamFacts, choose_impl, choose_path)
from pyfastopt.engine import stepper_func
from pyfastopt.flat import flat_safe
from pyfastopt.recipe import DECAY_STEPPERS, flat_safe_steppers, recipe_for, recipes

# a CPU float32 param a native kernel can take, and a chain with every kind of kernel
PLAIN = ParamFacts("cpu", torch.float32, 100, plain=True, grad_like=True, dense=True)
ALL_KERNELS = ChainFacts(native=True, fused=True, flat_safe=True)
ON = Knobs(kernels=True, flatten=True, native=True, threads=1)


def facts(**kw):
    return PLAIN._replace(**kw)


# ---- choose_impl -------------------------------------------------------------------------------
@pytest.mark.parametrize("marked", [True, False])
def test_per_param_by_impl(marked):
    impl, reason = choose_impl("per_param", marked)
    assert impl == PER_PARAM and reason


def test_buckets_when_every_stepper_is_marked():
    for impl in ("auto", "multi_tensor"):
        got, reason = choose_impl(impl, True)
        assert got == BUCKETS and reason


def test_per_param_when_a_stepper_is_not_marked():
    got, reason = choose_impl("auto", False)
    assert got == PER_PARAM and "multi_tensor" in reason


def test_multi_tensor_with_unmarked_steppers_is_an_error():
    with pytest.raises(ValueError, match="multi_tensor"):
        choose_impl("multi_tensor", False)


# ---- choose_path: native -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_for_plain_dense_cpu_float(dtype):
    path = choose_path(facts(dtype=dtype), ALL_KERNELS, ON)
    assert path.kernel == NATIVE and path.flat is False and path.reason


@pytest.mark.parametrize("change", [
    dict(device_type="cuda"),
    dict(device_type="meta"), dict(plain=False), dict(grad_like=False), dict(dense=False)])
def test_native_only_for_cpu_float32_float64_plain_dense_grad_like(change):
    path = choose_path(facts(**change), ALL_KERNELS, ON)
    assert path.kernel != NATIVE and path.reason
    # the chain has a fused kernel: that is what such params get instead
    assert path.kernel == FUSED


@pytest.mark.parametrize("knobs,chain", [
    (ON._replace(kernels=False), ALL_KERNELS),
    (ON._replace(native=False), ALL_KERNELS),
    (ON, ALL_KERNELS._replace(native=False))])
def test_native_needs_the_knobs_and_a_native_kernel(knobs, chain):
    assert choose_path(PLAIN, chain, knobs).kernel != NATIVE


def test_large_params_with_threads_go_to_the_fused_kernel():
    big = facts(numel=NATIVE_MT_NUMEL)
    path = choose_path(big, ALL_KERNELS, ON._replace(threads=2))
    assert path.kernel == FUSED and path.flat is False and path.reason
    # one thread, a smaller param, or no fused kernel for the chain: native
    assert choose_path(big, ALL_KERNELS, ON).kernel == NATIVE
    assert choose_path(facts(numel=NATIVE_MT_NUMEL - 1), ALL_KERNELS,
                       ON._replace(threads=2)).kernel == NATIVE
    assert choose_path(big, ALL_KERNELS._replace(fused=False),
                       ON._replace(threads=8)).kernel == NATIVE


# ---- choose_path: fused and chain --------------------------------------------------------------
def test_fused_where_the_chain_has_one_else_chain():
    cuda = facts(device_type="cuda")
    assert choose_path(cuda, ALL_KERNELS, ON).kernel == FUSED
    path = choose_path(cuda, ALL_KERNELS._replace(fused=False), ON)
    assert path.kernel == CHAIN and path.reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_half_params_take_their_float32_shadows_path_never_flat(dtype, device_type):
    "The half rule: a half param steps on a float32 copy, along the path that copy would take."
    half = choose_path(facts(dtype=dtype, device_type=device_type), ALL_KERNELS, ON)
    shadow = choose_path(facts(dtype=torch.float32, device_type=device_type), ALL_KERNELS, ON)
    assert half.kernel == shadow.kernel and half.upcast and not shadow.upcast
    assert half.flat is False and "half" in half.reason
    assert choose_path(facts(dtype=dtype), FLAT_CHAIN, NO_NATIVE).flat is False


def test_fused_kernels_only_get_the_dtypes_they_compute_right():
    untrusted = ALL_KERNELS._replace(fused_dtypes=(torch.float64,))
    path = choose_path(facts(device_type="cuda"), untrusted, ON)
    assert path.kernel == CHAIN and "not trusted" in path.reason


def test_kernels_off_means_chain():
    off = ON._replace(kernels=False)
    for p in (PLAIN, facts(dtype=torch.float16), facts(device_type="cuda")):
        path = choose_path(p, ALL_KERNELS, off)
        assert path.kernel == CHAIN and "fused" in path.reason


def test_tensor_subclasses_are_never_native_nor_flat():
    sub = facts(plain=False, dense=False)
    for chain in (ALL_KERNELS, ALL_KERNELS._replace(fused=False)):
        for knobs in (ON, ON._replace(kernels=False)):
            path = choose_path(sub, chain, knobs)
            assert path.kernel != NATIVE and path.flat is False
    assert "subclass" in choose_path(sub, ALL_KERNELS._replace(fused=False), ON).reason


# ---- choose_path: flat -------------------------------------------------------------------------
NO_NATIVE = ON._replace(native=False)
FLAT_CHAIN = ChainFacts(native=False, fused=False, flat_safe=True)


def test_flat_when_flatten_on_flat_safe_grad_like_and_small():
    for numel in (1, FLAT_MAX_NUMEL):
        path = choose_path(facts(numel=numel), FLAT_CHAIN, NO_NATIVE)
        assert path.kernel == CHAIN and path.flat is True and path.reason
    # a fused kernel may take a flat bucket too
    assert choose_path(facts(device_type="cuda"), ALL_KERNELS, ON).flat is True


@pytest.mark.parametrize("knobs,chain,param", [
    (NO_NATIVE._replace(flatten=False), FLAT_CHAIN, PLAIN),
    (NO_NATIVE, FLAT_CHAIN._replace(flat_safe=False), PLAIN),
    (NO_NATIVE, FLAT_CHAIN, facts(grad_like=False)),
    (NO_NATIVE, FLAT_CHAIN, facts(numel=FLAT_MAX_NUMEL + 1)),
    (NO_NATIVE, FLAT_CHAIN, facts(plain=False))])
def test_not_flat_otherwise(knobs, chain, param):
    path = choose_path(param, chain, knobs)
    assert path.flat is False and path.reason


def test_native_params_are_not_flat():
    assert choose_path(PLAIN, ALL_KERNELS, ON).flat is False


def test_reasons_are_never_empty():
    for p in (PLAIN, facts(dtype=torch.float16), facts(plain=False, dense=False),
              facts(numel=NATIVE_MT_NUMEL), facts(device_type="cuda")):
        for chain in (ALL_KERNELS, FLAT_CHAIN, ChainFacts()):
            for knobs in (ON, NO_NATIVE, ON._replace(kernels=False), ON._replace(threads=4),
                          ON._replace(flatten=False)):
                path = choose_path(p, chain, knobs)
                assert path.kernel in (NATIVE, FUSED, CHAIN)
                assert isinstance(path.reason, str) and path.reason.strip()


def test_the_constants():
    assert backend.NATIVE_DTYPES == (torch.float32, torch.float64)
    assert NATIVE_MT_NUMEL > 0 and FLAT_MAX_NUMEL > 0


# ---- recipe_for --------------------------------------------------------------------------------
@pytest.mark.parametrize("row", FASTAI_ROWS, ids=lambda r: r.name)
def test_every_factory_chain_maps_to_its_recipe(row):
    opt = row.make([torch.zeros(3)])
    match = recipe_for(list(opt.cbs))
    assert match is not None and match.recipe.name == row.recipe
    assert match.decoupled is row.decoupled
    assert flat_safe([stepper_func(cb) for cb in opt.cbs]) is row.flat_safe


@pytest.mark.parametrize("row", FASTAI_ROWS, ids=lambda r: r.name)
def test_every_factory_chain_has_its_options(row):
    match = recipe_for(list(row.make([torch.zeros(3)]).cbs))
    assert match.options == row.options


def test_every_registered_recipe_is_in_the_table():
    assert {r.name for r in recipes()} == {r.recipe for r in ROWS if r.recipe is not None}


def test_adam_with_an_undampened_square_is_adam_with_option():
    cbs = [S.l2_reg, partial(S.average_grad, dampening=True),
           partial(S.average_sqr_grad, dampening=False), S.step_stat, S.adam_step]
    m = recipe_for(cbs)
    assert m.recipe.name == "adam" and m.options == dict(damp2=False) and m.decoupled is False


def test_partials_with_frozen_hypers_or_positional_args_are_not_matched():
    assert recipe_for([S.weight_decay, partial(S.sgd_step, lr=0.1)]) is None
    assert recipe_for([partial(S.weight_decay, wd=0.1), S.sgd_step]) is None
    assert recipe_for([S.weight_decay, partial(S.average_grad, 0.9), S.momentum_step]) is None
    assert recipe_for([S.weight_decay, partial(S.lion_step, mom=0.5)]) is None


def test_outer_partial_keywords_override_inner_ones():
    inner_true = partial(S.average_grad, dampening=True)
    adam = [S.weight_decay, None, S.average_sqr_grad, S.step_stat, S.adam_step]
    # the outer dampening=True wins: Adam's chain
    adam[1] = partial(partial(S.average_grad, dampening=False), dampening=True)
    assert recipe_for(adam).recipe.name == "adam"
    # the outer dampening=False wins: not Adam's (an undampened average_grad)
    adam[1] = partial(inner_true, dampening=False)
    assert recipe_for(adam) is None
    sgd = [S.weight_decay, partial(inner_true, dampening=False), S.momentum_step]
    assert recipe_for(sgd).recipe.name == "sgd"


def test_unknown_keyword_is_not_matched():
    assert recipe_for([S.weight_decay, partial(S.average_grad, nesterov=True),
                       S.momentum_step]) is None


def test_chains_that_differ_are_not_matched():
    assert recipe_for([]) is None
    assert recipe_for([S.weight_decay]) is None
    assert recipe_for([S.sgd_step]) is None                        # no decay stepper first
    assert recipe_for([S.weight_decay, S.sgd_step, S.sgd_step]) is None
    assert recipe_for([S.weight_decay, S.average_grad, S.average_sqr_grad, S.step_stat,
                       S.adam_step]) is None                      # undampened average_grad
    assert recipe_for([S.weight_decay, S.l2_reg, S.sgd_step]) is None
    assert recipe_for([S.weight_decay, lambda p, **kw: None]) is None


def test_flat_safe_steppers():
    safe = flat_safe_steppers()
    assert set(DECAY_STEPPERS) <= safe
    built_in = {S.sgd_step, S.average_grad, S.average_sqr_grad, S.momentum_step, S.rms_prop_step,
                S.step_stat, S.adam_step, S.radam_step, S.qhadam_step, S.larc_layer_lr,
                S.larc_step, S.lamb_step, S.lion_step}
    # every built-in recipe is flat-safe (the table says so of every fastai row)
    assert all(r.flat_safe for r in FASTAI_ROWS)
    assert built_in | set(DECAY_STEPPERS) == safe

    def user_stepper(p, **kw):
        pass
    assert user_stepper not in safe and po.tst_param not in safe
