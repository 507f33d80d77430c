"""`load_state_dict` checks a state dict with the constructor's rules before anything changes
(issue 9 point 5, issue 8 points 3 and 4): hostile state dicts across optimizers leave the
optimizer exactly as it was; `param_groups` wins over `hypers`; non-param state round-trips."""
import copy
import io
import math

import pytest
import torch

from pyfastopt import SGD, Adam, Lamb, Larc, QHAdam, RAdam, StateDictError, ranger

# ---- optimizers under test: two groups, three params, stepped twice ------------------------------
MAKERS = {
    "SGD": lambda g: SGD(g, lr=[0.1, 0.05]),
    "SGD_mom": lambda g: SGD(g, lr=[0.1, 0.05], mom=0.9, wd=0.01),
    "Adam": lambda g: Adam(g, lr=[0.1, 0.05]),
    "RAdam": lambda g: RAdam(g, lr=[0.1, 0.05]),
    "QHAdam": lambda g: QHAdam(g, lr=[0.1, 0.05]),
    "Larc": lambda g: Larc(g, lr=[0.1, 0.05]),
    "Lamb": lambda g: Lamb(g, lr=[0.1, 0.05]),
    "ranger": lambda g: ranger(g, lr=[0.1, 0.05], k=2),
}
ADAM_FAMILY = {"Adam", "RAdam", "QHAdam", "Lamb", "ranger"}
WITH_GRAD_AVG = set(MAKERS) - {"SGD"}


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, 4, generator=gen) + 2, torch.randn(5, generator=gen) + 2],
            [torch.randn(2, 2, generator=gen) + 2]]


def _grads(seed):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)],
            [torch.randn(2, 2, generator=gen)]]


def _step(opt, groups, seed):
    for grp, gg in zip(groups, _grads(seed)):
        for p, g in zip(grp, gg):
            p.grad = g
    opt.step()


def _stepped(name, steps=2):
    groups = _params()
    opt = MAKERS[name](groups)
    for s in range(steps):
        _step(opt, groups, 100 + s)
    return opt, groups


def _snapshot(opt, groups):
    "Everything a load could change: params, hypers (deep copy), state (tensors cloned), Lookahead's."
    ps = [p for g in groups for p in g]
    state = {}
    for k, st in opt.state.items():
        key = ("param", next(i for i, p in enumerate(ps) if p is k)) if isinstance(k, torch.Tensor) \
            else ("other", k)
        state[key] = {n: (("tensor", v.clone(), v.dtype, v.device) if isinstance(v, torch.Tensor)
                          else (type(v), copy.deepcopy(v))) for n, v in st.items()}
    extra = None
    if hasattr(opt, "slow_weights"):
        extra = (opt.count, None if opt.slow_weights is None else
                 [[t.clone() for t in sl] for sl in opt.slow_weights])
    return ([p.clone() for p in ps], copy.deepcopy([dict(h) for h in opt.hypers]),
            [(type(h), {k: type(v) for k, v in h.items()}) for h in opt.hypers], state, extra)


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    assert a[1] == b[1] and a[2] == b[2]
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert a[3][k].keys() == b[3][k].keys()
        for n in a[3][k]:
            x, y = a[3][k][n], b[3][k][n]
            if x[0] == "tensor":
                assert y[0] == "tensor" and x[2:] == y[2:] and torch.equal(x[1], y[1])
            else:
                assert x[0] is y[0] and x[1] == y[1]
    if a[4] is not None:
        assert a[4][0] == b[4][0]
        assert (a[4][1] is None) == (b[4][1] is None)
        if a[4][1] is not None:
            for sa, sb in zip(a[4][1], b[4][1]):
                for x, y in zip(sa, sb):
                    assert torch.equal(x, y)


# ---- the hostile state dicts ---------------------------------------------------------------------
def _hyper(k, v):
    "Set hyper k to v in every group, in `hypers` and `param_groups` alike."
    def f(sd, name):
        for h in sd["hypers"] + sd["param_groups"]:
            h[k] = v
        return sd
    return f


def _hyper0(k, v):
    def f(sd, name):
        for h in (sd["hypers"][0], sd["param_groups"][0]):
            h[k] = v
        return sd
    return f


def _drop_hyper(k):
    def f(sd, name):
        for h in sd["hypers"] + sd["param_groups"]:
            h.pop(k)
        return sd
    return f


def _state0(k, v):
    def f(sd, name):
        sd["state"][0][k] = v() if callable(v) else v
        return sd
    return f


def _set(k, v):
    def f(sd, name):
        sd[k] = v
        return sd
    return f


def _drop(*ks):
    def f(sd, name):
        for k in ks:
            sd.pop(k)
        return sd
    return f


def _torch_sd(cls, **kw):
    def f(sd, name):
        groups = _params()
        t = cls([{"params": g} for g in groups], lr=0.1, **kw)
        for grp, gg in zip(groups, _grads(5)):
            for p, g in zip(grp, gg):
                p.grad = g
        t.step()
        return t.state_dict()
    return f


def _other_kind(sd, name):
    sd["kind"] = ["weight_decay", "sgd_step"] if name != "SGD" else \
        ["weight_decay", "average_grad", "momentum_step"]
    if name == "ranger":
        sd["kind"] = ["Lookahead"] + sd["kind"]
    return sd


def _ranger_inner_kind(sd, name):
    sd["kind"] = sd["kind"][1:]
    return sd


def _kindless_foreign_hypers(sd, name):
    sd.pop("kind")
    extra = "nu_1" if name == "Larc" else "trust_coeff"
    for h in sd["hypers"] + sd["param_groups"]:
        h[extra] = 0.5
    return sd


def _state_list_short(sd, name):
    sd["state"] = [sd["state"][0], sd["state"][1]]
    return sd


def _state_key(k):
    def f(sd, name):
        sd["state"][k] = {}
        return sd
    return f


def _groups(fn):
    def f(sd, name):
        fn(sd["param_groups"])
        return sd
    return f


def _meta_grad_avg_and_lr(sd, name):
    sd["state"][0]["grad_avg"] = torch.empty(3, 4, device="meta")
    for h in sd["hypers"] + sd["param_groups"]:
        h["lr"] = 0.5
    return sd


def _sparse():
    return torch.zeros(3, 4).to_sparse()


def _slow(fn):
    def f(sd, name):
        sd["slow_weights"] = fn(sd["slow_weights"])
        return sd
    return f


def _hyper_key_not_str(sd, name):
    for h in (sd["hypers"][0], sd["param_groups"][0]):
        h[1] = 0.1
    return sd


def _pg_lr_only(v):
    "A bad lr in param_groups only (hypers fine): param_groups wins, so it must be checked."
    def f(sd, name):
        sd["param_groups"][0]["lr"] = v
        return sd
    return f


ALL = set(MAKERS)
LARC = {"Larc"}
RANGER = {"ranger"}
NOT_SGD = WITH_GRAD_AVG
# (id, optimizers it applies to, mutation of a deep copy of a valid state dict, message regex)
CASES = [
    ("not_a_dict", ALL, lambda sd, n: [sd], r"must be a dict"),
    ("none", ALL, lambda sd, n: None, r"must be a dict"),
    ("no_state", ALL, _drop("state"), r"'state'"),
    ("state_is_str", ALL, _set("state", "abc"), r"\['state'\].*dict or a list"),
    ("state_is_int", ALL, _set("state", 5), r"\['state'\].*dict or a list"),
    ("state_list_too_short", ALL, _state_list_short, r"state for 2 params.*has 3"),
    ("state_key_out_of_range", ALL, _state_key(99), r"\[99\].*not the id of a param"),
    ("state_key_negative", ALL, _state_key(-1), r"\[-1\].*not the id of a param"),
    ("state_key_bool", ALL, lambda sd, n: sd.__setitem__("state", {True if k == 1 else k: v
                                                                   for k, v in sd["state"].items()})
     or sd, r"\[True\].*keyed by param ids"),
    ("state_key_float", ALL, _state_key(1.5), r"\[1.5\].*keyed by param ids"),
    ("initial_lr_nan", ALL, _hyper("initial_lr", math.nan), r"\['initial_lr'\].*must be"),
    ("param_state_is_list", ALL, lambda sd, n: sd["state"].__setitem__(0, [1, 2]) or sd,
     r"\['state'\]\[0\].*must be a dict"),
    ("param_state_int_key", ALL, _state0(5, 1.0), r"\['state'\]\[0\]\[5\].*strings"),
    ("kind_of_another_optimizer", ALL, _other_kind, r"different optimizer"),
    ("kind_is_a_string", ALL, _set("kind", "Adam"), r"kind|different optimizer"),
    ("kind_removed_foreign_hypers", ALL, _kindless_foreign_hypers, r"no 'kind'.*another optimizer"),
    ("torch_adam_state_dict", ALL, _torch_sd(torch.optim.Adam), r"torch\.optim.*from_torch_state_dict"),
    ("torch_sgd_state_dict", ALL, _torch_sd(torch.optim.SGD, momentum=0.9),
     r"torch\.optim.*from_torch_state_dict"),
    ("no_hypers_no_param_groups", ALL, _drop("hypers", "param_groups"), r"neither 'hypers' nor"),
    ("hypers_one_group_too_few", ALL, lambda sd, n: sd.__setitem__("hypers", sd["hypers"][:1]) or sd,
     r"\['hypers'\].*1 parameter groups.*has 2"),
    ("hypers_not_a_list", ALL, _set("hypers", {"lr": 0.1}), r"\['hypers'\].*list of dicts"),
    ("hypers_entry_not_dict", ALL, lambda sd, n: sd["hypers"].__setitem__(0, 5) or sd,
     r"\['hypers'\]\[0\].*must be a dict"),
    ("hyper_key_not_str", ALL, _hyper_key_not_str, r"\[0\]\[1\].*strings"),
    ("lr_nan", ALL, _hyper("lr", math.nan), r"\['lr'\].*lr must be"),
    ("lr_negative", ALL, _hyper("lr", -0.1), r"\['lr'\].*lr must be"),
    ("lr_inf", ALL, _hyper("lr", math.inf), r"\['lr'\].*lr must be"),
    ("lr_string", ALL, _hyper("lr", "0.1"), r"\['lr'\].*lr must be a number"),
    ("lr_bool", ALL, _hyper("lr", True), r"\['lr'\].*lr must be a number"),
    ("lr_none", ALL, _hyper("lr", None), r"\['lr'\].*lr must be a number"),
    ("lr_missing", ALL, _drop_hyper("lr"), r"lacks hyper-parameter\(s\) \['lr'\]"),
    ("lr_meta_tensor", ALL, _hyper("lr", torch.tensor(0.1, device="meta")), r"\['lr'\].*meta"),
    ("lr_two_values", ALL, _hyper("lr", torch.tensor([0.1, 0.2])), r"\['lr'\].*single number"),
    ("param_groups_lr_nan_hypers_fine", ALL, _pg_lr_only(math.nan),
     r"\['param_groups'\]\[0\]\['lr'\]"),
    ("param_groups_lr_negative_hypers_fine", ALL, _pg_lr_only(-1.0),
     r"\['param_groups'\]\[0\]\['lr'\]"),
    ("param_groups_one_group", ALL, _groups(lambda g: g.pop()), r"\['param_groups'\].*1 parameter"),
    ("param_groups_sizes", ALL, _groups(lambda g: g[0].__setitem__("params", [0])),
     r"groups have \[1, 1\] params.*\[2, 1\]"),
    ("param_groups_ids_not_int", ALL, _groups(lambda g: g[0].__setitem__("params", ["a", "b"])),
     r"param ids must be ints"),
    ("param_groups_ids_repeated", ALL, _groups(lambda g: g[0].__setitem__("params", [2, 2])),
     r"same param id more than once"),
    ("param_groups_not_a_list", ALL, _set("param_groups", "x"), r"\['param_groups'\].*list of dicts"),
    ("param_groups_without_params", ALL, _groups(lambda g: g[0].pop("params")), r"lacks 'params'"),
    ("hyper_shadows_state", ALL, _hyper0("grad_avg", 1.0), r"'grad_avg'.*not a hyper"),
    ("hyper_do_wd", ALL, _hyper0("do_wd", False), r"'do_wd'.*not a hyper"),
    ("wd_negative", ALL, _hyper("wd", -0.1), r"\['wd'\].*wd must be"),
    ("wd_nan", ALL, _hyper("wd", math.nan), r"\['wd'\].*wd must be"),
    ("mom_above_one", NOT_SGD, _hyper("mom", 1.5), r"\['mom'\].*mom must be"),
    ("mom_one_debiased", ADAM_FAMILY, _hyper("mom", 1.0), r"\['mom'\].*mom must be"),
    ("sqr_mom_one", ADAM_FAMILY, _hyper("sqr_mom", 1.0), r"\['sqr_mom'\].*sqr_mom must be"),
    ("eps_negative", ADAM_FAMILY | LARC, _hyper("eps", -1e-8), r"\['eps'\].*eps must be"),
    ("trust_coeff_nan", LARC, _hyper("trust_coeff", math.nan), r"trust_coeff must be"),
    ("grad_avg_int64", NOT_SGD, _state0("grad_avg", lambda: torch.zeros(3, 4, dtype=torch.int64)),
     r"\['grad_avg'\].*floating-point.*int64"),
    ("grad_avg_bool", NOT_SGD, _state0("grad_avg", lambda: torch.zeros(3, 4, dtype=torch.bool)),
     r"\['grad_avg'\].*floating-point.*bool"),
    ("grad_avg_complex", NOT_SGD, _state0("grad_avg", lambda: torch.zeros(3, 4, dtype=torch.complex64)),
     r"\['grad_avg'\].*floating-point.*complex64"),
    ("grad_avg_0d", NOT_SGD, _state0("grad_avg", lambda: torch.tensor(0.5)),
     r"\['grad_avg'\].*shape \(\).*\(3, 4\)"),
    ("grad_avg_wrong_shape", NOT_SGD, _state0("grad_avg", lambda: torch.zeros(4, 3)),
     r"\['grad_avg'\].*shape \(4, 3\)"),
    ("grad_avg_meta", NOT_SGD, _state0("grad_avg", lambda: torch.empty(3, 4, device="meta")),
     r"\['grad_avg'\].*meta"),
    ("grad_avg_float", NOT_SGD, _state0("grad_avg", 0.5), r"\['grad_avg'\].*must be a tensor"),
    ("grad_avg_list", NOT_SGD, _state0("grad_avg", [[0.0] * 4] * 3), r"\['grad_avg'\].*must be a tensor"),
    ("grad_avg_sparse", NOT_SGD, _state0("grad_avg", _sparse), r"\['grad_avg'\].*dense"),
    ("grad_avg_meta_with_lr_change", NOT_SGD, _meta_grad_avg_and_lr, r"meta"),
    ("sqr_avg_int64", ADAM_FAMILY, _state0("sqr_avg", lambda: torch.zeros(3, 4, dtype=torch.int64)),
     r"\['sqr_avg'\].*floating-point"),
    ("sqr_avg_wrong_shape", ADAM_FAMILY, _state0("sqr_avg", lambda: torch.zeros(12)),
     r"\['sqr_avg'\].*shape \(12,\)"),
    ("step_string", ADAM_FAMILY, _state0("step", "5"), r"\['step'\].*non-negative int"),
    ("step_negative", ADAM_FAMILY, _state0("step", -5), r"\['step'\].*non-negative int"),
    ("step_bool", ADAM_FAMILY, _state0("step", True), r"\['step'\].*non-negative int"),
    ("step_float", ADAM_FAMILY, _state0("step", 5.0), r"\['step'\].*non-negative int"),
    ("step_tensor", ADAM_FAMILY, _state0("step", lambda: torch.tensor(5)), r"\['step'\].*non-negative int"),
    ("step_none", ADAM_FAMILY, _state0("step", None), r"\['step'\].*non-negative int"),
    ("step_beyond_int64", ADAM_FAMILY, _state0("step", 2 ** 70), r"\['step'\].*non-negative int"),
    ("local_lr_nan", LARC, _state0("local_lr", math.nan), r"\['local_lr'\].*finite"),
    ("local_lr_string", LARC, _state0("local_lr", "0.1"), r"\['local_lr'\].*number or a 0-d"),
    ("local_lr_vector", LARC, _state0("local_lr", lambda: torch.ones(3)), r"\['local_lr'\].*0-d"),
    ("local_lr_negative", LARC, _state0("local_lr", lambda: torch.tensor(-0.1)), r"\['local_lr'\].*>= 0"),
    ("local_lr_meta", LARC, _state0("local_lr", lambda: torch.tensor(0.1, device="meta")),
     r"\['local_lr'\].*meta"),
    ("local_lr_int_tensor", LARC, _state0("local_lr", lambda: torch.tensor(1)), r"\['local_lr'\].*0-d floating"),
    ("do_wd_string", ALL, _state0("do_wd", "no"), r"\['do_wd'\].*True or False"),
    ("force_train_int", ALL, _state0("force_train", 1), r"\['force_train'\].*True or False"),
    ("state_key_of_torch", ALL, _state0("exp_avg", lambda: torch.zeros(3, 4)),
     r"\['exp_avg'\].*not state this optimizer keeps"),
    ("state_overrides_dampening", ADAM_FAMILY, _state0("dampening", False), r"\['dampening'\].*fixed"),
    ("grad_avg_in_sgd_without_momentum", {"SGD"}, _state0("grad_avg", lambda: torch.zeros(3, 4)),
     r"\['grad_avg'\].*not state this optimizer keeps"),
    ("local_lr_outside_larc", ALL - LARC, _state0("local_lr", 0.1), r"\['local_lr'\].*not state"),
    ("count_string", RANGER, _set("count", "3"), r"\['count'\].*non-negative int"),
    ("count_negative", RANGER, _set("count", -1), r"\['count'\].*non-negative int"),
    ("count_bool", RANGER, _set("count", True), r"\['count'\].*non-negative int"),
    ("slow_weights_wrong_shape", RANGER, _slow(lambda s: [[torch.zeros(4, 3), s[0][1]], s[1]]),
     r"slow_weights'\]\[0\]\[0\].*shape"),
    ("slow_weights_int64", RANGER, _slow(lambda s: [[s[0][0].long(), s[0][1]], s[1]]),
     r"slow_weights'\]\[0\]\[0\].*floating-point"),
    ("slow_weights_meta", RANGER, _slow(lambda s: [[torch.empty(3, 4, device="meta"), s[0][1]], s[1]]),
     r"slow_weights'\]\[0\]\[0\].*meta"),
    ("slow_weights_missing_group", RANGER, _slow(lambda s: s[:1]), r"slow_weights'\].*2 lists"),
    ("slow_weights_not_a_list", RANGER, _slow(lambda s: "x"), r"slow_weights'\].*2 lists"),
    ("slow_weights_missing_param", RANGER, _slow(lambda s: [s[0][:1], s[1]]),
     r"slow_weights'\]\[0\].*one tensor per param"),
    ("ranger_state_into_its_inner_kind", RANGER, _ranger_inner_kind, r"different optimizer"),
]
assert len({c[0] for c in CASES}) == len(CASES) >= 50
PARAMS = [pytest.param(name, case, id=f"{name}-{case[0]}") for case in CASES for name in MAKERS
          if name in case[1]]


@pytest.mark.parametrize("name,case", PARAMS)
def test_hostile_state_dict_refused_and_optimizer_unchanged(name, case):
    _, _, mutate, match = case
    src, _ = _stepped(name, steps=2)
    target, groups = _stepped(name, steps=3)          # a different state, so a load would show
    twin, twin_groups = _stepped(name, steps=3)
    sd = mutate(copy.deepcopy(src.state_dict()), name)
    before = _snapshot(target, groups)
    with pytest.raises(StateDictError, match=match):
        target.load_state_dict(sd)
    _assert_same(before, _snapshot(target, groups))
    # nothing hidden changed either: the next step is the twin's, bit for bit
    _step(target, groups, 7)
    _step(twin, twin_groups, 7)
    for a, b in zip([p for g in groups for p in g], [p for g in twin_groups for p in g]):
        assert torch.equal(a, b)


def test_refused_load_leaves_a_Lookahead_count_and_slow_weights():
    opt, groups = _stepped("ranger", steps=3)
    sd = copy.deepcopy(opt.state_dict())
    sd["count"] = 0
    sd["state"][0]["grad_avg"] = torch.zeros(3, 4, dtype=torch.int64)
    before = _snapshot(opt, groups)
    with pytest.raises(StateDictError):
        opt.load_state_dict(sd)
    _assert_same(before, _snapshot(opt, groups))
    assert opt.count == 3


def test_refusals_are_ValueErrors_and_TypeErrors_as_before():
    opt, _ = _stepped("Adam")
    with pytest.raises(ValueError):
        opt.load_state_dict({"state": {}, "hypers": [{}]})
    with pytest.raises(TypeError):
        opt.load_state_dict(None)


@pytest.mark.parametrize("name", list(MAKERS))
def test_valid_state_dicts_still_load_after_torch_save(name):
    "The checks accept what state_dict() writes (through torch.save/torch.load weights_only)."
    src, src_groups = _stepped(name, steps=3)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    target, groups = _stepped(name, steps=1)
    for dst, s in zip(groups, src_groups):
        for p, q in zip(dst, s):
            p.data.copy_(q)
    target.load_state_dict(sd)
    _step(src, src_groups, 9)
    _step(target, groups, 9)
    for a, b in zip([p for g in groups for p in g], [p for g in src_groups for p in g]):
        assert torch.equal(a, b)


def test_larc_local_lr_loads_as_number_and_as_tensor():
    opt, groups = _stepped("Larc")
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["local_lr"] = 0.1
    sd["state"][1]["local_lr"] = torch.tensor(0.002)
    opt.load_state_dict(sd)
    assert opt.state[groups[0][0]]["local_lr"] == 0.1
    assert torch.equal(opt.state[groups[0][1]]["local_lr"], torch.tensor(0.002))


def test_state_follows_the_param_dtype_and_meta_state_is_fine_for_meta_params():
    p = torch.ones(3, dtype=torch.float64)
    opt = SGD([p], lr=0.1, mom=0.9)
    opt.load_state_dict({"state": {0: {"grad_avg": torch.ones(3)}}, "hypers": [dict(opt.hypers[0])],
                         "kind": opt.kind()})
    assert opt.state[p]["grad_avg"].dtype == torch.float64
    m = torch.empty(3, device="meta")
    opt = SGD([m], lr=0.1, mom=0.9)
    opt.load_state_dict({"state": {0: {"grad_avg": torch.empty(3, device="meta")}},
                         "hypers": [dict(opt.hypers[0])], "kind": opt.kind()})
    assert opt.state[m]["grad_avg"].device.type == "meta"


# ---- issue 8.3: param_groups win over hypers -----------------------------------------------------
def test_edited_param_groups_lr_is_the_lr_after_loading():
    p = torch.ones(3)
    opt = SGD([p], lr=0.1)
    sd = copy.deepcopy(opt.state_dict())
    assert sd["hypers"][0]["lr"] == 0.1
    sd["param_groups"][0]["lr"] = 0.5
    opt.load_state_dict(sd)
    assert opt.hypers[0]["lr"] == 0.5 and opt.param_groups[0]["lr"] == 0.5
    p.grad = torch.tensor([1.0, 2.0, 4.0])
    opt.step()
    assert p.tolist() == [1 - 0.5, 1 - 1.0, 1 - 2.0]


def test_load_pre_hook_editing_param_groups_is_honoured():
    p = torch.ones(2)
    opt = Adam([p], lr=0.1)

    def hook(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.25
        sd["param_groups"][0]["eps"] = 1e-3
        return sd
    opt.register_load_state_dict_pre_hook(hook)
    opt.load_state_dict(opt.state_dict())
    assert opt.hypers[0]["lr"] == 0.25 and opt.hypers[0]["eps"] == 1e-3
    assert opt.hypers[0]["mom"] == 0.9          # what the hook left alone comes from the dict


def test_hypers_alone_and_param_groups_alone_load():
    p = torch.ones(2)
    opt = SGD([p], lr=0.1, mom=0.9)
    sd = copy.deepcopy(opt.state_dict())
    only_hypers = {k: v for k, v in sd.items() if k != "param_groups"}
    only_hypers["hypers"][0]["lr"] = 0.3
    opt.load_state_dict(only_hypers)
    assert opt.hypers[0]["lr"] == 0.3
    only_groups = {k: v for k, v in sd.items() if k != "hypers"}
    only_groups["param_groups"][0]["lr"] = 0.7
    opt.load_state_dict(only_groups)
    assert opt.hypers[0]["lr"] == 0.7


# ---- issue 8.4: non-param state ------------------------------------------------------------------
def test_non_param_state_round_trips_like_torch(tmp_path):
    p = torch.ones(3)
    p.grad = torch.ones(3)
    opt = SGD([p], lr=0.1, mom=0.9)
    opt.step()
    opt.state["bookkeeping"] = {"seen": 3, "ema": torch.tensor([0.5, 0.25])}
    sd = opt.state_dict()
    # torch keeps it the same way: under its own key in 'state'
    q = torch.ones(3)
    q.grad = torch.ones(3)
    tref = torch.optim.SGD([q], lr=0.1, momentum=0.9)
    tref.step()
    tref.state["bookkeeping"] = {"seen": 3, "ema": torch.tensor([0.5, 0.25])}
    tsd = tref.state_dict()
    assert set(sd["state"]) == set(tsd["state"]) == {0, "bookkeeping"}
    assert sd["state"]["bookkeeping"]["seen"] == tsd["state"]["bookkeeping"]["seen"] == 3
    torch.save(sd, tmp_path / "o.pt")
    back = torch.load(tmp_path / "o.pt", weights_only=True)
    p2 = torch.ones(3)
    opt2 = SGD([p2], lr=0.1, mom=0.9)
    opt2.load_state_dict(back)
    assert opt2.state["bookkeeping"]["seen"] == 3
    assert torch.equal(opt2.state["bookkeeping"]["ema"], torch.tensor([0.5, 0.25]))
    assert torch.equal(opt2.state[p2]["grad_avg"], torch.ones(3))
    # and it is still there for the next save, and stepping ignores it
    p2.grad = torch.ones(3)
    opt2.step()
    assert opt2.state_dict()["state"]["bookkeeping"]["seen"] == 3


def test_int_keyed_non_param_state_is_refused_at_save():
    p = torch.ones(3)
    opt = SGD([p], lr=0.1)
    opt.state[5] = {"x": 1}
    with pytest.raises(ValueError, match=r"non-param entry keyed 5"):
        opt.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_state_is_moved_to_a_cuda_param():
    p = torch.ones(3, device="cuda")
    opt = Adam([p], lr=0.1)
    opt.load_state_dict({"state": {0: {"grad_avg": torch.ones(3), "sqr_avg": torch.ones(3),
                                       "step": 2}},
                         "hypers": [dict(opt.hypers[0])], "kind": opt.kind()})
    assert opt.state[p]["grad_avg"].device == p.device
    assert opt.state[p]["sqr_avg"].device == p.device
