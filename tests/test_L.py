"""fastcore `L` semantics (spec §5), as re-implemented by pyfastopt."""
import collections.abc
import operator
from functools import partial

import numpy as np
import pytest
import torch

from pyfastopt import L


# ----------------------------------------------------------------------------------------------
# §5.1 construction
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    ((), []),
    ((None,), []),
    ((1,), [1]),
    ((1, 2, 3), [1, 2, 3]),
    (("abc",), ['abc']),
    (((1, 2),), [1, 2]),
    ((range(3),), [0, 1, 2]),
    (({"a": 1},), [{'a': 1}]),
    (({1, 2},), [1, 2]),
    (([1, 2],), [1, 2]),
    ((b"ab",), [b"ab"]),
])
def test_construction_table(args, expected):
    l = L(*args)
    assert list(l) == expected
    assert type(l.items) is list


def test_construction_generator_consumed():
    gen = (i * 2 for i in range(3))
    l = L(gen)
    assert list(l) == [0, 2, 4]
    assert list(gen) == []
    assert list(l) == [0, 2, 4]


def test_construction_arrays_not_iterated():
    a = np.array([1, 2])
    l = L(a)
    assert len(l) == 1 and l[0] is a
    assert repr(l) == '[array([1, 2])]'
    assert L(a, use_list=None).items is a
    t = torch.tensor([1., 2.])
    l = L(t)
    assert len(l) == 1 and l[0] is t
    assert repr(l) == '[tensor([1., 2.])]'
    l = L(t, use_list=True)
    assert len(l) == 2
    assert [x.item() for x in l] == [1., 2.]
    assert all(x.dim() == 0 for x in l)
    assert repr(l) == '[tensor(1.), tensor(2.)]'
    # numpy scalar counts as an array too
    s = np.float64(0.5)
    assert list(L(s)) == [s]


def test_construction_0d_tensor_use_list_none():
    l = L(torch.tensor(0.5), use_list=None)
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(l)


def test_L_of_L_is_same_object():
    x = L(1, 2)
    assert L(x) is x
    y = L(x, use_list=True)
    assert y is not x
    assert list(y) == [1, 2]


def test_L_of_list_aliases_list():
    a = [1, 2, 3]
    l = L(a)
    assert l.items is a
    a.append(4)
    assert list(l) == [1, 2, 3, 4]


def test_not_list_subclass_unhashable_sequence():
    assert not isinstance(L(), list)
    assert isinstance(L(), collections.abc.Sequence)
    with pytest.raises(TypeError):
        hash(L(1, 2))


# ----------------------------------------------------------------------------------------------
# §5.2 indexing
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def t():
    return L([10, 20, 30, 40, 50])


def test_getitem_int(t):
    assert t[1] == 20
    assert t[-1] == 50
    with pytest.raises(IndexError):
        t[10]


def test_getitem_slice(t):
    r = t[1:3]
    assert isinstance(r, L)
    assert list(r) == [20, 30]


def test_getitem_list_tuple_L(t):
    for idx in ([0, 2], (0, 2), L(0, 2)):
        r = t[idx]
        assert isinstance(r, L)
        assert list(r) == [10, 30]
    assert list(t[[]]) == []


def test_getitem_bool_mask(t):
    r = t[[True, False, True, False, True]]
    assert isinstance(r, L)
    assert list(r) == [10, 30, 50]
    assert list(t[np.array([True, False, True, False, True])]) == [10, 30, 50]


def test_getitem_0d_indexers(t):
    assert t[np.int64(1)] == 20
    assert t[torch.tensor(1)] == 20
    assert t[torch.tensor(-1)] == 50


def test_setitem_int_slice():
    u = L([1, 2, 3, 4])
    u[0] = 9
    u[1:3] = [7, 7]
    assert list(u) == [9, 7, 7, 4]


def test_setitem_index_list_broadcast_and_values():
    u = L([1, 2, 3, 4])
    u[[0, 2]] = 0
    assert list(u) == [0, 2, 0, 4]
    u = L([1, 2, 3, 4])
    u[[0, 2]] = [5, 6]
    assert list(u) == [5, 2, 6, 4]


def test_setitem_bool_mask_quirk():
    "A boolean mask is NOT converted by __setitem__: True/False are used as indices 1/0."
    u = L([1, 2, 3, 4])
    u[[True, False, False, True]] = 0
    assert list(u) == [0, 0, 3, 4]


# ----------------------------------------------------------------------------------------------
# §5.3 operators and protocol
# ----------------------------------------------------------------------------------------------
def test_len_iter_contains():
    l = L(1, 2, 3)
    assert len(l) == 3
    assert list(iter(l)) == [1, 2, 3]
    assert 2 in l and 5 not in l


def test_contains_tensors():
    assert torch.tensor([1.]) in L(torch.tensor([2.]), torch.tensor([1.]))
    with pytest.raises(RuntimeError, match="ambiguous"):
        torch.tensor([1., 2.]) in L(torch.tensor([2., 3.]), torch.tensor([1., 2.]))


def test_eq():
    assert L([1, 2]) == [1, 2]
    assert L([1, 2]) == (1, 2)
    assert L([1, 2]) == L(1, 2)
    assert L([1, 2]) == np.array([1, 2])
    assert not (L([1, 2]) == [1, 2, 3])
    assert not (L([1, 2]) == None)  # noqa: E711
    assert not (L(["ab"]) == "ab")
    assert not (L(['a']) == {'a': 1})
    assert not (L([1]) == 1)
    assert not (L([print]) == print)
    assert L([1, 2]) != [2, 1]


def test_add_radd():
    r = L(1, 2) + 3
    assert isinstance(r, L) and list(r) == [1, 2, 3]
    assert list(L(1, 2) + (3, 4)) == [1, 2, 3, 4]
    assert list(L(1, 2) + [3, 4]) == [1, 2, 3, 4]
    r = [0] + L(1, 2)
    assert isinstance(r, L) and list(r) == [0, 1, 2]


def test_iadd_rebinds():
    a = L(1, 2)
    b = a
    a += [3]
    assert list(a) == [1, 2, 3]
    assert a is not b
    assert list(b) == [1, 2]


def test_mul():
    r = L([0.1]) * 3
    assert isinstance(r, L) and list(r) == [0.1, 0.1, 0.1]
    a = L(np.array([0.1]), use_list=None) * 2
    assert len(a) == 1
    assert a[0] == pytest.approx(0.2)


def test_invert_reversed():
    assert list(~L(True, False)) == [False, True]
    r = reversed(L(1, 2, 3))
    assert list(r) == [3, 2, 1]


def test_getattr_delegates_to_items():
    l = L(1, 2)
    l.append(3)
    assert list(l) == [1, 2, 3]
    assert l.count(2) == 1


# ----------------------------------------------------------------------------------------------
# §5.4 repr
# ----------------------------------------------------------------------------------------------
def test_repr_is_list_repr():
    l = L([1, 2, 3, 4])
    assert repr(l) == '[1, 2, 3, 4]'
    assert str(l) == '[1, 2, 3, 4]'
    assert f'{l}' == '[1, 2, 3, 4]'
    assert repr(L()) == '[]'
    assert repr(L(range(300))) == repr(list(range(300)))
    assert repr(L([{'a': 0.1}])) == "[{'a': 0.1}]"


# ----------------------------------------------------------------------------------------------
# §5.5 methods
# ----------------------------------------------------------------------------------------------
def test_map():
    r = L(1, 2).map(operator.add, 10)
    assert isinstance(r, L) and list(r) == [11, 12]
    assert list(L(1, 2, 3).map('x{}')) == ['x1', 'x2', 'x3']
    assert list(L('a', 'b').map({'a': 1, 'b': 2})) == [1, 2]
    assert list(L(1, 2, 3).map(lambda o: o * 2)) == [2, 4, 6]
    assert list(L(2, 3).map(partial(pow, exp=2))) == [4, 9]


def test_map_kwargs():
    def f(x, a=0, b=0): return x + a * 10 + b * 100
    assert list(L(1, 2).map(f, b=1)) == [101, 102]


def test_filter():
    assert list(L(1, 2, 3, 4).filter(lambda o: o % 2 == 0)) == [2, 4]
    assert list(L(1, 2, 3, 4).filter(lambda o: o % 2 == 0, negate=True)) == [1, 3]
    r = L(0, 1, None, 2, '', 3).filter()
    assert isinstance(r, L) and list(r) == [1, 2, 3]


def test_zip_zipwith():
    assert list(L([1, 2], [3, 4]).zip()) == [(1, 3), (2, 4)]
    assert list(L([1, 2, 3], [4, 5]).zip()) == [(1, 4), (2, 5)]
    r = L(1, 2).zipwith([3, 4])
    assert isinstance(r, L) and list(r) == [(1, 3), (2, 4)]


def test_concat():
    assert list(L([1, 2], [3], [4, 5]).concat()) == [1, 2, 3, 4, 5]
    assert list(L([1, 2], 3, (4, 5)).concat()) == [1, 2, 3, 4, 5]


def test_itemgot():
    assert list(L((1, 'a'), (2, 'b')).itemgot(0)) == [1, 2]
    assert list(L([(1, 2)], [(3, 4)]).itemgot(0, 1)) == [2, 4]
    assert list(L({'a': 1}, {'a': 2}).itemgot('a')) == [1, 2]


def test_attrgot():
    def f_with_defaults(x): return x
    f_with_defaults.defaults = {'x': 1}
    r = L(f_with_defaults, partial(f_with_defaults), print).attrgot('defaults')
    assert isinstance(r, L)
    assert list(r) == [{'x': 1}, None, None]
    assert list(L({'a': 1}, {'b': 2}).attrgot('a')) == [1, None]
    assert list(L({'a': 1}, {'b': 2}).attrgot('a', 0)) == [1, 0]
    assert list(L(f_with_defaults, print).attrgot('defaults', 'none')) == [{'x': 1}, 'none']

    class O:
        pass
    o = O()
    o.inner = O()
    o.inner.v = 5
    assert list(L(o).attrgot('inner.v')) == [5]


def test_sorted():
    assert list(L((1, 'b'), (2, 'a')).sorted(1)) == [(2, 'a'), (1, 'b')]
    assert list(L(3, 1, 2).sorted()) == [1, 2, 3]
    assert list(L(3, 1, 2).sorted(reverse=True)) == [3, 2, 1]
    assert list(L('bb', 'a', 'ccc').sorted(len)) == ['a', 'bb', 'ccc']

    class O:
        def __init__(self, v): self.v = v
    objs = [O(3), O(1), O(2)]
    assert [o.v for o in L(objs).sorted('v')] == [1, 2, 3]


def test_unique():
    r = L(3, 1, 3, 2, 1).unique()
    assert isinstance(r, L) and list(r) == [3, 1, 2]
    assert list(L(3, 1, 3, 2, 1).unique(sort=True)) == [1, 2, 3]


def test_range():
    assert isinstance(L.range(4), L)
    assert list(L.range(4)) == [0, 1, 2, 3]
    assert list(L.range(1, 4)) == [1, 2, 3]
    assert list(L.range(0, 10, 3)) == [0, 3, 6, 9]
    assert list(L.range([7, 8, 9])) == [0, 1, 2]


def test_split():
    r = L.split('a b  c')
    assert isinstance(r, L) and list(r) == ['a', 'b', 'c']
    assert list(L.split('a,b,,c', ',')) == ['a', 'b', '', 'c']
    assert list(L.split('a,b,c', ',', 1)) == ['a', 'b,c']


def test_enumerate():
    assert list(L('a', 'b').enumerate()) == [(0, 'a'), (1, 'b')]


def test_sum_product_reduce():
    assert L(1, 2, 3).sum() == 6
    assert L(1, 2, 3, 4).product() == 24
    assert L(1, 2, 3).reduce(operator.add) == 6


def test_copy():
    c = L(1, 2)
    d = c.copy()
    assert isinstance(d, L) and d is not c and d.items is not c.items and list(d) == [1, 2]


def test_argwhere_first():
    assert list(L(True, False, True).argwhere(lambda o: o)) == [0, 2]
    assert L(5, 6, 7).first(lambda o: o > 5) == 6
