"""`Lookahead.state`: the wrapped optimizer's state, whose param entries also show Lookahead's own
part (`lookahead_slow`, `lookahead_count`) once the slow weights exist, as torch's tools read and
write per-param state (DCP's flattened layout, ZeroRedundancyOptimizer's load). Writes go where
each key lives; the wrapped optimizer's dicts never hold Lookahead's keys."""
import copy
import pickle

import pytest
import torch

import pyfastopt as po
from pyfastopt.checkpoint import StateDictError

LR, MOM, ALPHA = 0.1, 0.9, 0.5


def _params():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    q = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64))
    return p, q


def _grads(p, q, i):
    p.grad = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64) * (i + 1)
    q.grad = torch.tensor([[0.3, 0.1], [-0.4, 0.2]], dtype=torch.float64) / (i + 1)


def _la(k=3, mom=MOM):
    p, q = _params()
    return p, q, po.Lookahead(po.SGD([p, q], lr=LR, mom=mom), k=k, alpha=ALPHA)


def _steps(p, q, opt, n, start=0):
    for i in range(start, start + n):
        _grads(p, q, i)
        opt.step()


def test_view_before_and_after_the_slow_weights_exist():
    p, q, opt = _la()
    assert not opt.state and len(opt.state) == 0 and p not in opt.state  # torch: `if optim.state`
    _steps(p, q, opt, 2)
    inner = opt.opt.state
    assert opt.state and len(opt.state) == len(inner) == 2
    assert list(opt.state) == list(inner) and p in opt.state and q in opt.state
    for i, x in enumerate((p, q)):
        e = opt.state[x]
        assert isinstance(e, dict)
        assert e["lookahead_slow"] is opt.slow_weights[0][i]           # the live tensor
        assert e["lookahead_count"] == opt.count == 2
        assert e["grad_avg"] is inner[x]["grad_avg"]
        assert set(e) == {"grad_avg", "lookahead_slow", "lookahead_count"}
        assert "lookahead_slow" not in inner[x] and "lookahead_count" not in inner[x]
    assert opt.state.get(torch.zeros(1)) is None                      # no entry made by get
    assert dict(opt.state.items())[q]["lookahead_slow"] is opt.slow_weights[0][1]


def test_no_slow_weights_gives_the_wrapped_dict_itself():
    p, q, opt = _la()
    p.grad = torch.ones_like(p)
    opt.opt.step()                                   # the inner optimizer alone: no slow weights
    assert opt.state[p] is opt.opt.state[p]


def test_writes_go_to_the_wrapped_dict_and_the_next_step_uses_them():
    p, q, opt = _la(k=10)
    _steps(p, q, opt, 1)
    t = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    opt.state[p]["grad_avg"] = t
    assert opt.opt.state[p]["grad_avg"] is t
    before = p.detach().clone()
    _grads(p, q, 1)
    opt.step()
    # SGD with momentum (fastai): grad_avg = mom * grad_avg + grad; p -= lr * grad_avg
    exp_avg = MOM * torch.ones(3, dtype=torch.float64) + p.grad
    torch.testing.assert_close(opt.opt.state[p]["grad_avg"], exp_avg, rtol=0, atol=1e-15)
    torch.testing.assert_close(p.detach(), before - LR * exp_avg, rtol=0, atol=1e-15)
    e = opt.state[p]
    del e["grad_avg"]
    assert "grad_avg" not in opt.opt.state[p] and "grad_avg" not in e


def test_slow_weight_set_through_the_view_is_used_by_the_next_sync():
    p, q, opt = _la(k=2, mom=0.0)
    _steps(p, q, opt, 1)
    new = torch.tensor([0.0, 5.0, -1.0], dtype=torch.float64)
    kept = new.clone()
    opt.state[p]["lookahead_slow"] = new
    slow = opt.slow_weights[0][0]
    assert torch.equal(slow, new) and slow is not new            # stored as a copy
    assert opt.state[p]["lookahead_slow"] is slow
    fast_before = p.detach().clone()
    _grads(p, q, 1)
    grad = p.grad.clone()
    opt.step()                                       # count 2: the sync
    # fastai's formula, computed here: fast = p - lr * g; slow += alpha * (fast - slow); fast = slow
    fast = fast_before - LR * grad
    exp = kept + ALPHA * (fast - kept)
    torch.testing.assert_close(opt.slow_weights[0][0], exp, rtol=0, atol=1e-15)
    torch.testing.assert_close(p.detach(), exp, rtol=0, atol=1e-15)
    assert torch.equal(new, kept)                    # the caller's tensor is left alone


def test_count_set_through_the_view_moves_the_sync():
    p, q, opt = _la(k=3, mom=0.0)
    _steps(p, q, opt, 1)
    opt.state[q]["lookahead_count"] = 2
    assert opt.count == 2 and opt.state[p]["lookahead_count"] == 2
    slow = opt.slow_weights[0][0].clone()
    _grads(p, q, 1)
    grad = p.grad.clone()
    fast = p.detach() - LR * grad
    opt.step()                                       # count 3: the sync, one step early
    exp = slow + ALPHA * (fast - slow)
    torch.testing.assert_close(p.detach(), exp, rtol=0, atol=1e-15)
    assert opt.count == 3


@pytest.mark.parametrize("key,value,err,match", [
    ("lookahead_slow", torch.zeros(2, dtype=torch.float64), StateDictError, "has shape"),
    ("lookahead_slow", torch.zeros(3, dtype=torch.int64), StateDictError, "floating-point"),
    ("lookahead_slow", [1.0, 2.0, 3.0], StateDictError, "must be a tensor"),
    ("lookahead_count", -1, StateDictError, "non-negative"),
    ("lookahead_count", 2.5, ValueError, "integer"),
    ("lookahead_count", "3", TypeError, "integer"),
    ("lookahead_count", True, TypeError, "integer"),
])
def test_bad_values_raise_naming_the_key_and_change_nothing(key, value, err, match):
    p, q, opt = _la()
    _steps(p, q, opt, 2)
    inner = opt.opt.state[p]
    items, slow, sw = dict(inner), opt.slow_weights[0][0], opt.slow_weights
    slow_val = slow.clone()

    def unchanged():
        assert opt.count == 2 and opt.slow_weights is sw and opt.slow_weights[0][0] is slow
        assert torch.equal(slow, slow_val)
        assert opt.opt.state[p] is inner and inner.keys() == items.keys()
        assert all(inner[k] is v for k, v in items.items())

    with pytest.raises(err, match=key):
        opt.state[p][key] = value
    unchanged()
    with pytest.raises(err, match=match):
        opt.state[p][key] = value
    unchanged()
    t = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(err, match=key):                  # the whole entry: nothing written
        opt.state[p] = {"grad_avg": t, key: value}
    unchanged()
    with pytest.raises(err, match=key):                  # update: checked before any write
        opt.state[p].update({"grad_avg": t, key: value})
    unchanged()
    with pytest.raises(err, match=key):                  # the whole state
        opt.state = {p: {"grad_avg": t, key: value}, q: {}}
    unchanged()


def test_setting_an_entry_splits_lookaheads_keys_out():
    p, q, opt = _la()
    _steps(p, q, opt, 1)
    avg = torch.full((3,), 0.5, dtype=torch.float64)
    slow = torch.tensor([9.0, 8.0, 7.0], dtype=torch.float64)
    given = {"grad_avg": avg, "lookahead_slow": slow, "lookahead_count": 5}
    opt.state[p] = given
    assert set(opt.opt.state[p]) == {"grad_avg"} and opt.opt.state[p]["grad_avg"] is avg
    assert opt.count == 5 and torch.equal(opt.slow_weights[0][0], slow)
    assert set(given) == {"grad_avg", "lookahead_slow", "lookahead_count"}   # caller's dict kept
    plain = {"grad_avg": avg}
    opt.state[q] = plain                 # no Lookahead keys: stored as given, Lookahead unchanged
    assert opt.opt.state[q] is plain and opt.count == 5
    with pytest.raises(StateDictError, match="lookahead_count.*not a param"):
        opt.state["bookkeeping"] = {"lookahead_count": 1}
    assert "bookkeeping" not in opt.state and opt.count == 5


def test_setting_a_slow_weight_before_the_first_step_makes_the_others_from_the_params():
    # as ZeroRedundancyOptimizer's load_state_dict does: `optim.state[param] = entry`, then
    # each 0-d tensor rewritten through `optim.state[param][name] = ...`
    p, q, opt = _la()
    slow = torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64)
    opt.state[p] = {"lookahead_slow": slow, "lookahead_count": 1, "step": torch.tensor(1.0)}
    for name, v in opt.state[p].items():
        if torch.is_tensor(v) and v.dim() == 0:
            opt.state[p][name] = v.cpu()
    assert torch.equal(opt.slow_weights[0][0], slow)
    assert torch.equal(opt.slow_weights[0][1], q) and opt.slow_weights[0][1] is not q
    assert opt.count == 1 and set(opt.opt.state[p]) == {"step"}


def test_setting_the_whole_state():
    p, q, opt = _la()
    _steps(p, q, opt, 1)
    s_p, s_q = torch.zeros(3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    opt.state = {p: {"grad_avg": torch.ones(3, dtype=torch.float64), "lookahead_slow": s_p,
                     "lookahead_count": 4},
                 q: {"grad_avg": torch.ones(2, 2, dtype=torch.float64), "lookahead_slow": s_q}}
    assert opt.count == 4
    assert torch.equal(opt.slow_weights[0][0], s_p) and torch.equal(opt.slow_weights[0][1], s_q)
    assert all(set(d) == {"grad_avg"} for d in opt.opt.state.values())
    plain = {p: {}, q: {}}
    opt.state = plain                    # no Lookahead keys: forwarded, slow weights kept
    assert dict(opt.opt.state) == plain and opt.count == 4
    assert torch.equal(opt.slow_weights[0][0], s_p)


def test_deleting_lookaheads_keys_restarts_them():
    p, q, opt = _la()
    _steps(p, q, opt, 2)
    e = opt.state[p]
    del e["lookahead_count"]
    assert opt.count == 0 and "lookahead_count" not in e
    del e["lookahead_slow"]
    assert torch.equal(opt.slow_weights[0][0], p) and opt.slow_weights[0][0] is not p
    assert opt.state[p]["lookahead_slow"] is opt.slow_weights[0][0]     # shown again
    del opt.state[q]                     # the whole entry: the wrapped one only
    assert q not in opt.state and q not in opt.opt.state and len(opt.slow_weights[0]) == 2


def test_copies_and_pickles_are_plain_dicts():
    p, q, opt = _la()
    _steps(p, q, opt, 1)
    e = copy.deepcopy(opt.state[p])
    assert type(e) is dict and torch.equal(e["lookahead_slow"], opt.slow_weights[0][0])
    assert e["lookahead_slow"] is not opt.slow_weights[0][0]
    assert type(copy.copy(opt.state)) is dict
    assert type(pickle.loads(pickle.dumps(opt.state[p]))) is dict


def test_clear_state_and_fastai_attributes():
    p, q, opt = _la()
    _steps(p, q, opt, 2)
    assert opt.count == 2 and len(opt.slow_weights[0]) == 2           # fastai's attributes
    opt.clear_state()
    assert opt.count == 0 and opt.slow_weights is None
    assert "lookahead_slow" not in opt.state[p] and dict(opt.state[p]) == {}


def test_flattened_dcp_loads_a_checkpoint_without_lookahead():
    # DCP's flattened layout asks for every key `opt.state[p]` shows; one the checkpoint lacks
    # comes back as an empty dict, which is taken as missing
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    o = po.RAdam(list(m.parameters()), lr=0.01)
    m(torch.randn(4, 3)).pow(2).mean().backward()
    o.step()
    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    sd = get_optimizer_state_dict(m, o, options=opts)
    m.zero_grad(set_to_none=True)        # else DCP does not make the new optimizer's state first
    la = po.ranger(list(m.parameters()), lr=0.01)
    set_optimizer_state_dict(m, la, sd, options=opts)
    w = next(m.parameters())
    assert la.count == 0 and la.slow_weights is None
    assert torch.equal(la.opt.state[w]["grad_avg"], o.state[w]["grad_avg"])
