"""Every differentiable op has a finite-difference gradient check, and keeps its input's dtype.

The op list is found by introspection: the public methods, properties and operators of
`Tensor` and the public functions of `minigrad.functional`. An op added there without a
case in CASES below makes `test_every_op_has_a_gradcheck_case` fail, so a new op cannot
land without a gradient check. Non-ops (`numpy`, `backward`, `shape`, ...) are listed, with
a reason, in NOT_OPS.

Each case also runs in float32 and float64 for the dtype rule: the output, every input's
`.grad`, and each gradient the op's own `backward` returns have the input's dtype.
"""
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import minigrad as mg
from minigrad import functional as F
from minigrad import gradcheck
from minigrad.tensor import Tensor

# Public Tensor attributes that are not differentiable ops, and why.
NOT_OPS = {
    "numpy": "returns a host array, leaves the graph",
    "item": "returns a Python number",
    "detach": "cuts the graph on purpose",
    "zero_grad": "clears .grad",
    "backward": "runs autograd",
    "shape": "metadata", "ndim": "metadata", "dtype": "metadata", "size": "metadata",
    "device": "metadata", "is_leaf": "metadata",
    "cuda": "moves to a GPU: its gradient is checked in tests/test_gpu_engine.py",
}
NOT_OP_DUNDERS = {"__init__", "__repr__", "__len__"}


def tensor_ops():
    names = set()
    for name, v in vars(Tensor).items():
        dunder = name.startswith("__") and name.endswith("__")
        if dunder and inspect.isfunction(v) and name not in NOT_OP_DUNDERS:
            names.add(name)  # operators: __add__, __matmul__, __getitem__, ...
        elif not name.startswith("_") and (inspect.isfunction(v) or isinstance(v, property)):
            names.add(name)
    return {n for n in names if n not in NOT_OPS}


def functional_ops():
    return {f"F.{name}" for name, v in vars(F).items()
            if inspect.isfunction(v) and v.__module__ == F.__name__ and not name.startswith("_")}


@dataclass
class Case:
    fn: Callable
    shapes: list
    low: float = -2.0
    high: float = 2.0
    kwargs: dict = field(default_factory=dict)  # for gradcheck (tolerances)

    def arrays(self, dtype, seed=0):
        rng = np.random.default_rng(seed)
        return [rng.uniform(self.low, self.high, s).astype(dtype) for s in self.shapes]


LABELS = np.array([0, 3, 1, 3])


def bn_train(x, w, b):
    c = x.shape[1]
    return F.batch_norm(x, np.zeros(c, x.dtype), np.ones(c, x.dtype), w, b, training=True)


def bn_eval(x, w, b):
    c = x.shape[1]
    mean = np.linspace(-0.5, 0.5, c).astype(x.dtype)
    var = np.linspace(0.5, 2.0, c).astype(x.dtype)
    return F.batch_norm(x, mean, var, w, b, training=False)


def dropout_seeded(x):
    mg.manual_seed(7)  # the same mask on every call, so finite differences see one function
    return F.dropout(x, 0.4, training=True)


CASES = {
    "__add__": Case(lambda a, b: a + b, [(3, 4), (4,)]),
    "__radd__": Case(lambda a: 2.5 + a, [(3, 4)]),
    "__sub__": Case(lambda a, b: a - b, [(2, 3, 4), (3, 1)]),
    "__rsub__": Case(lambda a: 2.5 - a, [(3, 4)]),
    "__mul__": Case(lambda a, b: a * b, [(1, 4), (5, 1)]),
    "__rmul__": Case(lambda a: 2.5 * a, [(3, 4)]),
    "__truediv__": Case(lambda a, b: a / b, [(3, 4), (4,)], low=0.5),
    "__rtruediv__": Case(lambda a: 2.5 / a, [(3, 4)], low=0.5),
    "__neg__": Case(lambda a: -a, [(3, 4)]),
    "__pow__": Case(lambda a, b: a ** b + a ** 3, [(3, 4), (4,)], low=0.5),
    "__rpow__": Case(lambda a: 2.0 ** a, [(3,)]),
    "__matmul__": Case(lambda a, b: a @ b, [(2, 3, 4), (4, 2)]),
    "__rmatmul__": Case(lambda a: np.linspace(-1, 1, 6).reshape(2, 3).astype(a.dtype) @ a,
                        [(3, 4)]),
    "__getitem__": Case(lambda a: a[np.array([0, 2, 2])] * a[0:3, None, 1], [(3, 4)]),
    "astype": Case(lambda a: a.astype(a.dtype) * a, [(3,)]),
    "to": Case(lambda a: a.to("cpu") * 2, [(3,)]),
    "cpu": Case(lambda a: a.cpu() * 2, [(3,)]),
    "exp": Case(lambda a: a.exp(), [(3, 4)]),
    "log": Case(lambda a: a.log(), [(3, 4)], low=0.2),
    "sqrt": Case(lambda a: a.sqrt(), [(3, 4)], low=0.2),
    "relu": Case(lambda a: a.relu(), [(3, 4)]),
    "tanh": Case(lambda a: a.tanh(), [(3, 4)], low=-3.0, high=3.0),
    "sigmoid": Case(lambda a: a.sigmoid(), [(3, 4)], low=-6.0, high=6.0),
    "softmax": Case(lambda a: a.softmax(axis=0), [(3, 4)]),
    "sum": Case(lambda a: a.sum(axis=(0, 2), keepdims=True), [(2, 3, 4)]),
    "mean": Case(lambda a: a.mean(axis=1), [(2, 3, 4)]),
    "max": Case(lambda a: a.max(axis=-1), [(2, 3, 4)]),
    "reshape": Case(lambda a: a.reshape(4, 6), [(2, 3, 4)]),
    "flatten": Case(lambda a: a.flatten(1), [(2, 3, 4)]),
    "transpose": Case(lambda a: a.transpose(2, 0, 1), [(2, 3, 4)]),
    "T": Case(lambda a: a.T, [(3, 4)]),
    "F.relu": Case(F.relu, [(3, 4)]),
    "F.tanh": Case(F.tanh, [(3, 4)]),
    "F.sigmoid": Case(F.sigmoid, [(3, 4)]),
    "F.softmax": Case(lambda a: F.softmax(a, axis=-1), [(3, 4)]),
    "F.log_softmax": Case(lambda a: F.log_softmax(a, axis=0), [(3, 4)]),
    "F.linear": Case(F.linear, [(5, 3), (4, 3), (4,)]),
    "F.cross_entropy": Case(lambda z: F.cross_entropy(z, LABELS), [(4, 5)]),
    "F.conv2d": Case(lambda x, w, b: F.conv2d(x, w, b, stride=(1, 2), padding=1),
                     [(2, 2, 5, 5), (3, 2, 3, 3), (3,)]),
    "F.max_pool2d": Case(lambda x: F.max_pool2d(x, 3, 2), [(2, 2, 7, 7)]),
    "F.avg_pool2d": Case(lambda x: F.avg_pool2d(x, 3, 2, padding=1), [(2, 2, 7, 6)]),
    "F.dropout": Case(dropout_seeded, [(4, 5)]),
    "F.batch_norm": Case(lambda x, w, b: bn_train(x, w, b) + bn_eval(x, w, b),
                         [(3, 2, 3, 2), (2,), (2,)]),
    "F.flatten": Case(lambda a: F.flatten(a, 2), [(2, 3, 2, 2)]),
}


def test_every_op_has_a_gradcheck_case():
    ops = tensor_ops() | functional_ops()
    missing = sorted(ops - set(CASES))
    assert not missing, (f"ops without a gradcheck case in {__file__}: {missing}; add one to "
                         "CASES (or, if it is not differentiable, to NOT_OPS with a reason)")
    stale = sorted(set(CASES) - ops)
    assert not stale, f"CASES names ops that do not exist: {stale}"


def test_the_op_list_sees_new_ops(monkeypatch):
    """The enumeration is live: a method added to Tensor shows up as an op needing a case."""
    monkeypatch.setattr(Tensor, "cube", lambda self: self * self * self, raising=False)
    assert "cube" in tensor_ops()
    assert {"__add__", "__matmul__", "softmax", "T", "F.conv2d", "F.batch_norm"} <= (
        tensor_ops() | functional_ops())


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck(name):
    case = CASES[name]
    assert gradcheck(case.fn, case.arrays(np.float64), **case.kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_has_the_input_dtype(name, dtype):
    case = CASES[name]
    xs = [mg.Tensor(a, requires_grad=True) for a in case.arrays(dtype)]
    out = case.fn(*xs)
    assert out.dtype == dtype, f"{name}: output {out.dtype} for {np.dtype(dtype)} inputs"
    g = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    if out._backward is not None:  # the op's own backward, before Tensor.backward's checks
        for parent, pg in zip(out._parents, out._backward(g), strict=True):
            if pg is not None:
                assert pg.dtype == parent.dtype, (
                    f"{name}: backward returns {pg.dtype} for a {parent.dtype} input")
                assert pg.shape == parent.shape
    out.backward(g)
    for i, x in enumerate(xs):
        assert x.grad is not None and x.grad.dtype == dtype, (
            f"{name}: input {i} grad {getattr(x.grad, 'dtype', None)}, expected "
            f"{np.dtype(dtype)}")
