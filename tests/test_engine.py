"""The bucket engine and the contracts the R package relies on (issue 2, "What the R package will
need"). Expected values are worked out by hand from fastai's formulas (spec §3)."""
import copy
import pickle

import pytest
import torch

from pyfastopt import (SGD, Adam, L, Lookahead, Optimizer, average_grad, momentum_step, sgd_step,
                       tst_param, weight_decay)


def vals(ps):
    return [p.tolist() for p in ps]


def test_hypers_is_L_of_plain_dicts_and_replacing_it_takes_effect():
    ps = [tst_param(float(i)) for i in range(4)]
    opt = Optimizer([ps[:2], ps[2:]], sgd_step, lr=0.1)
    assert isinstance(opt.hypers, L)
    assert type(opt.hypers.items) is list and all(type(h) is dict for h in opt.hypers.items)
    # what R does for opt$hypers$items[[1]][[1]] = 0.01: new list of new dicts, then re-assign
    h = opt.hypers
    h.items = [{"lr": 0.01}, {"lr": 0.1}]
    opt.hypers = h
    opt.step()
    assert vals(ps) == pytest.approx([0.0, 1 - 0.01 * 0.1, 2 * 0.99, 3 * 0.99], rel=1e-6)
    opt.hypers = L([{"lr": 1.0}, {"lr": 0.0}])          # whole L replaced
    opt.step()
    assert ps[1].item() == pytest.approx(0.999 - 0.1, rel=1e-6)
    assert ps[3].item() == pytest.approx(2.97, rel=1e-6)
    assert opt.param_groups[0]["lr"] == 1.0


def test_hypers_replacement_with_wrong_length_is_refused():
    opt = SGD([tst_param(1.0)], lr=0.1)
    with pytest.raises(ValueError, match="hypers"):
        opt.hypers = L([{"lr": 1.0}, {"lr": 2.0}])
    assert opt.hypers[0]["lr"] == 0.1


def test_integral_floats_accepted_where_ints_are_expected():
    opt = SGD([[tst_param(1.0)], [tst_param(2.0)], [tst_param(3.0)]], lr=0.1)
    opt.freeze_to(1.0)
    assert [p.requires_grad for pl in opt.param_lists for p in pl] == [False, True, True]
    with pytest.raises(ValueError, match="n must be an integer"):
        opt.freeze_to(1.5)
    assert Lookahead(SGD([tst_param(1.0)], lr=0.1), k=6.0).k == 6
    assert len(opt.all_params(1.0)) == 1


def test_state_indexable_by_param_and_edits_reach_the_next_step():
    ps = [tst_param(1.0), tst_param(2.0)]
    opt = SGD(ps, lr=0.1, wd=0.1)
    opt.step()                                  # p = p*0.99 - 0.1*g
    opt.state[ps[0]]["do_wd"] = False           # an edit through state must be seen
    opt.step()
    assert ps[0].item() == pytest.approx(0.98 - 0.01, rel=1e-6)
    assert ps[1].item() == pytest.approx(1.96 * 0.99 - 0.02, rel=1e-6)


def test_grad_changes_are_picked_up():
    ps = [tst_param(1.0), tst_param(2.0)]
    opt = SGD(ps, lr=0.1)
    opt.step()                                  # 0.99, 1.98
    ps[0].grad = torch.tensor(1.0)              # a new grad object
    opt.step()
    assert vals(ps) == pytest.approx([0.89, 1.96], rel=1e-6)
    ps[1].grad = None                           # and a grad removed
    opt.step()
    assert vals(ps) == pytest.approx([0.79, 1.96], rel=1e-6)
    ps[1].grad = torch.tensor(1.0)
    opt.step()
    assert vals(ps) == pytest.approx([0.69, 1.86], rel=1e-6)


def test_group_changes_are_picked_up():
    a, b = tst_param(1.0), tst_param(2.0)
    opt = SGD([a], lr=0.1)
    opt.step()
    opt.add_param_group({"params": [b], "lr": 1.0})
    opt.step()
    assert vals([a, b]) == pytest.approx([0.98, 2 - 0.2], rel=1e-6)
    opt.param_groups[1]["params"] = [b, tst_param(5.0)]
    opt.step()
    assert b.item() == pytest.approx(1.6, rel=1e-6)


def test_state_moves_between_paths():
    def run(impls):
        torch.manual_seed(0)
        ps = [torch.randn(3, 2), torch.randn(4), torch.randn(())]
        opt = Adam(ps, lr=0.01)
        for impl in impls:
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.impl = impl
            opt.step()
        return ps, opt
    mixed, opt = run(["multi_tensor", "per_param", "multi_tensor", "per_param"])
    ref, ref_opt = run(["per_param"] * 4)
    for a, b in zip(mixed, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert opt.state[mixed[0]]["step"] == 4 and isinstance(opt.state[mixed[0]]["step"], int)


def test_multi_tensor_buckets_split_by_dtype_and_state():
    ps = [tst_param([1.0, 2.0]), tst_param(3.0).double(), tst_param(4.0)]
    ps[1].grad = torch.tensor(0.3, dtype=torch.float64)
    opt = Optimizer(ps, [weight_decay, average_grad, momentum_step], lr=0.1, wd=0.1, mom=0.9)
    opt.state[ps[2]]["do_wd"] = False
    opt.step()
    assert opt.state[ps[1]]["grad_avg"].dtype == torch.float64
    assert ps[2].item() == pytest.approx(4 - 0.1 * 0.4, rel=1e-6)
    assert ps[1].item() == pytest.approx(3 * 0.99 - 0.03, rel=1e-12)


def test_impl_multi_tensor_refuses_unmarked_steppers():
    def my_step(p, lr, **kwargs):
        p.data.add_(p.grad, alpha=-lr)
    p = tst_param(1.0)
    opt = Optimizer([p], my_step, lr=0.1)
    opt.step()                                   # auto: per-param path
    assert p.item() == pytest.approx(0.99, rel=1e-6)
    opt.impl = "multi_tensor"
    with pytest.raises(ValueError, match="multi_tensor"):
        opt.step()
    with pytest.raises(ValueError, match="impl"):
        opt.impl = "fast"


def test_copy_and_pickle():
    ps = [tst_param([1.0, 2.0])]
    opt = SGD(ps, lr=0.1, mom=0.9)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.hypers == opt.hypers
    deep = copy.deepcopy(opt)
    deep.step()
    assert ps[0].tolist() == pytest.approx([0.99, 1.98], rel=1e-6)   # the original is untouched


def test_param_groups_are_live_views():
    p = tst_param(1.0)
    opt = Adam([p], lr=0.1)
    g = opt.param_groups[0]
    assert list(g) == ["params", "wd", "sqr_mom", "lr", "mom", "eps"]
    g["lr"] = 0.5
    assert opt.hypers[0]["lr"] == 0.5
    opt.set_hyper("lr", 0.25)
    assert g["lr"] == 0.25 and g["params"] == [p]
    assert dict(g) == {"params": [p], "wd": 0.01, "sqr_mom": 0.99, "lr": 0.25, "mom": 0.9,
                       "eps": 1e-5}


def test_reading_state_keeps_the_buckets_unless_it_was_edited():
    ps = [tst_param([1.0, 2.0]), tst_param([3.0])]
    opt = Adam(ps, lr=0.1, wd=0.0)
    opt.step()
    plan = opt._plan
    assert opt.state[ps[0]]["step"] == 1            # current when read ...
    opt.step()
    assert opt._plan is plan                        # ... and no rebuild for a read alone
    assert opt.state[ps[1]]["step"] == 2
    st = opt.state[ps[0]]
    st["do_wd"] = False                             # an edit after a read: seen by the next step
    opt.step()
    assert opt._plan is not plan
    assert opt.state[ps[0]]["do_wd"] is False and opt.state[ps[0]]["step"] == 3
    assert opt.state[ps[1]]["step"] == 3


def test_replacing_a_state_dict_after_reading_is_seen():
    p = tst_param([1.0, 2.0], [0.1, 0.2])
    opt = SGD([p], lr=0.1, mom=0.9)
    opt.step()                                      # grad_avg = g, p = p - 0.1 g
    opt.state[p] = {"grad_avg": torch.tensor([10.0, 10.0])}
    opt.step()                                      # grad_avg = 9 + g
    assert p.tolist() == pytest.approx([1 - 0.01 - 0.1 * 9.1, 2 - 0.02 - 0.1 * 9.2], rel=1e-6)
    opt.state.pop(p)                                # state dropped: a fresh grad_avg
    opt.step()
    assert opt.state[p]["grad_avg"].tolist() == pytest.approx([0.1, 0.2], rel=1e-6)


def test_state_read_between_steps_costs_no_rebuild():
    ps = [torch.zeros(10) for _ in range(50)]
    for q in ps:
        q.grad = torch.ones(10)
    opt = Adam(ps, lr=0.1)
    opt.step()
    plan = opt._plan
    for i in range(5):
        assert opt.state[ps[i]]["step"] == i + 1
        opt.step()
    assert opt._plan is plan


@pytest.mark.parametrize("native_on", [True, False])
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, mom=0.9),
                                  lambda ps: Adam(ps, lr=0.1, decouple_wd=False),
                                  lambda ps: Lookahead(SGD(ps, lr=0.1), k=1)])
def test_a_step_between_forward_and_backward_is_refused_as_in_torch(native_on, make):
    "Every path bumps autograd's version counters, so a graph that saved a param refuses."
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    w.grad = torch.zeros(3)
    opt = make([w])
    loss = (w * w).sum()                    # saves w for the backward pass
    env = {} if native_on else {"PYFASTOPT_NATIVE": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
