"""Tensor: an array, its gradient, and the node that made it.

Every differentiable op below is written as micrograd writes them: the forward math, then,
right beside it, a local `backward(g)` that maps the gradient of the op's output to the
gradients of its inputs (one per input, in order; `None` where an input needs none).

    c = a * b                      forward:  c = a * b
                                   backward: (g * b, g * a)

`Tensor.backward()` walks the graph in reverse topological order (computed iteratively, so a
10,000-op chain does not hit Python's recursion limit), sums the gradients that reach each
node, and stores them in `.grad` of the leaves that require a gradient. Gradients of leaves
accumulate across calls until `zero_grad()`/`.grad = None`, as in PyTorch.

Arrays are numpy (CPU) or cupy (GPU); `xp` is whichever module owns the data, so each op is
written once for both. float32 is the default dtype; float64 is kept when given.

Two rules every op keeps (and `Tensor.backward` checks):
- a gradient has its input's shape and dtype (float32 in, float32 gradient out);
- `backward(g)` returns exactly one entry per input (a short tuple is an error, not a
  silently dropped gradient).
"""
from __future__ import annotations

import operator
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

import numpy as np

from .backend import device_of, get_array_module, normalize_device, to_device

# --------------------------------------------------------------------------- grad mode

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextmanager
def no_grad() -> Iterator[None]:
    """Within this block ops record no graph (per thread, so Hogwild workers are unaffected)."""
    prev = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = prev


# --------------------------------------------------------------------------- helpers

def _as_array(data, dtype=None):
    """Python data -> float32 array; arrays keep their dtype (float64 stays float64)."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray) or get_array_module(data) is not np:
        return data if dtype is None else data.astype(dtype, copy=False)
    arr = np.asarray(data)
    if dtype is not None:
        return arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and arr.dtype != np.float32 and not isinstance(data, np.generic):
        arr = arr.astype(np.float32)  # Python floats/lists default to float32
    elif arr.dtype.kind in "iu" and arr.ndim == 0:
        arr = arr.astype(np.float32)  # a bare Python int used as a value
    return arr


def _unbroadcast(g, shape):
    """Sum a broadcast gradient back down to `shape` (the input's shape)."""
    if g.shape == shape:
        return g
    ndiff = g.ndim - len(shape)
    if ndiff > 0:
        g = g.sum(axis=tuple(range(ndiff)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim for a in axis))


def _expand_reduced(g, shape, axes, keepdims):
    """Reshape a reduction's gradient so that it broadcasts against the input shape."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return g


def _broadcast_error(op, a, b):
    """The error for operands whose shapes do not broadcast, naming the op and both shapes."""
    return ValueError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together "
                      "(trailing axes must be equal, or one of them 1)")


def _elementwise(op, fn, a, b):
    """fn(a.data, b.data) for a broadcasting binary op; a shape mismatch names the op."""
    try:
        return fn(a.data, b.data)
    except ValueError:
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise _broadcast_error(op, a, b) from None
        raise


def _check_same_device(op, a, b):
    da, db = device_of(a.data), device_of(b.data)
    if da != db:
        raise RuntimeError(f"{op}: tensors are on different devices: {da} {a.shape} and "
                           f"{db} {b.shape}; move one with .to({da!r}) or .to({db!r})")


# --------------------------------------------------------------------------- Tensor

Operand = Union["Tensor", float, int, np.ndarray]  # what a binary op accepts


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op", "__weakref__")
    __array_priority__ = 100  # so numpy scalars/arrays defer to Tensor's reflected ops

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = ""

    # -- construction of graph nodes -------------------------------------------------
    @staticmethod
    def _make(data, parents, backward, op):
        """A new node; records the graph only if grad mode is on and a parent needs grad."""
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._op = op
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    def _lift(self, other, op):
        if isinstance(other, Tensor):
            _check_same_device(op, self, other)
            return other
        xp = get_array_module(self.data)
        arr = xp.asarray(other, dtype=self.data.dtype) if np.isscalar(other) else other
        return Tensor(arr)

    # -- properties ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        g = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else ", device='cuda'"
        return f"Tensor({self.data!r}{dev}{g})"

    def numpy(self) -> np.ndarray:
        return to_device(self.data, "cpu")

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    def to(self, device: str) -> Tensor:
        """A copy on 'cpu' or 'cuda' (self when already there); gradients flow back."""
        device = normalize_device(device)
        if device == self.device:
            return self
        src = self.device

        def backward(g):
            return (to_device(g, src),)

        return Tensor._make(to_device(self.data, device), (self,), backward, "to")

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def astype(self, dtype: Any) -> Tensor:
        src = self.data.dtype

        def backward(g):
            return (g.astype(src),)

        return Tensor._make(self.data.astype(dtype), (self,), backward, "astype")

    # -- arithmetic --------------------------------------------------------------------
    def __add__(self, other: Operand) -> Tensor:
        other = self._lift(other, "add")
        a, b = self, other

        def backward(g):
            return _unbroadcast(g, a.shape), _unbroadcast(g, b.shape)

        return Tensor._make(_elementwise("add", operator.add, a, b), (a, b), backward, "add")

    def __radd__(self, other: Operand) -> Tensor:
        return self._lift(other, "add") + self

    def __sub__(self, other: Operand) -> Tensor:
        other = self._lift(other, "sub")
        a, b = self, other

        def backward(g):
            return _unbroadcast(g, a.shape), _unbroadcast(-g, b.shape)

        return Tensor._make(_elementwise("sub", operator.sub, a, b), (a, b), backward, "sub")

    def __rsub__(self, other: Operand) -> Tensor:
        return self._lift(other, "sub") - self

    def __mul__(self, other: Operand) -> Tensor:
        other = self._lift(other, "mul")
        a, b = self, other

        def backward(g):
            return (_unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                    _unbroadcast(g * a.data, b.shape) if b.requires_grad else None)

        return Tensor._make(_elementwise("mul", operator.mul, a, b), (a, b), backward, "mul")

    def __rmul__(self, other: Operand) -> Tensor:
        return self._lift(other, "mul") * self

    def __truediv__(self, other: Operand) -> Tensor:
        other = self._lift(other, "div")
        a, b = self, other

        def backward(g):
            return (_unbroadcast(g / b.data, a.shape) if a.requires_grad else None,
                    _unbroadcast(-g * a.data / (b.data * b.data), b.shape)
                    if b.requires_grad else None)

        return Tensor._make(_elementwise("div", operator.truediv, a, b), (a, b), backward,
                            "div")

    def __rtruediv__(self, other: Operand) -> Tensor:
        return self._lift(other, "div") / self

    def __neg__(self) -> Tensor:
        def backward(g):
            return (-g,)

        return Tensor._make(-self.data, (self,), backward, "neg")

    def __pow__(self, p: Tensor | float) -> Tensor:
        a = self
        if not np.isscalar(p):  # an array exponent is an elementwise, broadcasting operand
            p = self._lift(p, "pow")
        if isinstance(p, Tensor):
            _check_same_device("pow", a, p)
            xp = get_array_module(a.data)
            out_data = _elementwise("pow", operator.pow, a, p)

            def backward(g):
                ga = gp = None
                if a.requires_grad:
                    ga = _unbroadcast(g * p.data * a.data ** (p.data - 1), a.shape)
                if p.requires_grad:
                    gp = _unbroadcast(g * out_data * xp.log(a.data), p.shape)
                return ga, gp

            return Tensor._make(out_data, (a, p), backward, "pow")

        if isinstance(p, np.generic):
            p = p.item()  # a Python number keeps a float32 tensor float32 (NumPy's NEP 50)

        def backward(g):
            return (g * p * a.data ** (p - 1),)

        return Tensor._make(a.data ** p, (a,), backward, "pow")

    def __rpow__(self, base: Operand) -> Tensor:
        return self._lift(base, "pow") ** self

    def __matmul__(self, other: Operand) -> Tensor:
        other = self._lift(other, "matmul")
        a, b = self, other
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                             "(the last axis of the first must equal the second-to-last "
                             "axis of the second)")
        out_data = a.data @ b.data

        def backward(g):
            # A 1-D operand is a matrix with one row (a) or one column (b); g gets the axis
            # the product dropped back. b's column first: for vector @ vector g is a scalar,
            # and g[..., None] turns it into the (1,) row that a's step then lifts to (1, 1).
            A = a.data if a.ndim > 1 else a.data[None, :]
            B = b.data if b.ndim > 1 else b.data[:, None]
            G = g
            if b.ndim == 1:
                G = G[..., None]
            if a.ndim == 1:
                G = G[..., None, :]
            ga = gb = None
            if a.requires_grad:
                ga = _unbroadcast(G @ B.swapaxes(-1, -2), A.shape).reshape(a.shape)
            if b.requires_grad:
                gb = _unbroadcast(A.swapaxes(-1, -2) @ G, B.shape).reshape(b.shape)
            return ga, gb

        return Tensor._make(out_data, (a, b), backward, "matmul")

    def __rmatmul__(self, other: Operand) -> Tensor:
        return self._lift(other, "matmul") @ self

    # -- elementwise functions ---------------------------------------------------------
    def exp(self) -> Tensor:
        out_data = get_array_module(self.data).exp(self.data)

        def backward(g):
            return (g * out_data,)

        return Tensor._make(out_data, (self,), backward, "exp")

    def log(self) -> Tensor:
        a = self

        def backward(g):
            return (g / a.data,)

        return Tensor._make(get_array_module(a.data).log(a.data), (a,), backward, "log")

    def sqrt(self) -> Tensor:
        out_data = get_array_module(self.data).sqrt(self.data)

        def backward(g):
            return (g * 0.5 / out_data,)

        return Tensor._make(out_data, (self,), backward, "sqrt")

    def relu(self) -> Tensor:
        a = self
        out_data = get_array_module(a.data).maximum(a.data, 0)

        def backward(g):
            return (g * (a.data > 0),)

        return Tensor._make(out_data, (a,), backward, "relu")

    def tanh(self) -> Tensor:
        out_data = get_array_module(self.data).tanh(self.data)

        def backward(g):  # d tanh(x) = 1 - tanh(x)^2
            return (g * (1 - out_data * out_data),)

        return Tensor._make(out_data, (self,), backward, "tanh")

    def sigmoid(self) -> Tensor:
        """1 / (1 + exp(-x)), computed without overflow for large |x|."""
        xp = get_array_module(self.data)
        x = self.data
        e = xp.exp(-xp.abs(x))  # in (0, 1]: never overflows
        out_data = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

        def backward(g):  # d sigmoid(x) = s * (1 - s)
            return (g * out_data * (1 - out_data),)

        return Tensor._make(out_data, (self,), backward, "sigmoid")

    def softmax(self, axis: int = -1) -> Tensor:
        """exp(x) / sum(exp(x)) along `axis`, with the maximum subtracted first."""
        xp = get_array_module(self.data)
        e = xp.exp(self.data - self.data.max(axis=axis, keepdims=True))
        out_data = e / e.sum(axis=axis, keepdims=True)

        def backward(g):  # J^T g for J = diag(s) - s s^T:  s * (g - sum(g * s))
            return (out_data * (g - (g * out_data).sum(axis=axis, keepdims=True)),)

        return Tensor._make(out_data, (self,), backward, "softmax")

    # -- reductions --------------------------------------------------------------------
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        shape = self.shape
        axes = _norm_axes(axis, self.ndim)
        xp = get_array_module(self.data)

        def backward(g):
            return (xp.broadcast_to(_expand_reduced(g, shape, axes, keepdims), shape),)

        return Tensor._make(self.data.sum(axis=axes, keepdims=keepdims), (self,), backward,
                            "sum")

    def mean(self, axis: int | tuple[int, ...] | None = None,
             keepdims: bool = False) -> Tensor:
        shape = self.shape
        axes = _norm_axes(axis, self.ndim)
        count = int(np.prod([shape[i] for i in axes])) if axes else 1
        xp = get_array_module(self.data)

        def backward(g):
            g = _expand_reduced(g, shape, axes, keepdims) / count
            return (xp.broadcast_to(g, shape),)

        return Tensor._make(self.data.mean(axis=axes, keepdims=keepdims), (self,), backward,
                            "mean")

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        """Maximum over axes; the gradient is shared equally among tied maxima."""
        a = self
        axes = _norm_axes(axis, a.ndim)
        m = a.data.max(axis=axes, keepdims=True)
        out_data = m if keepdims else m.reshape([n for i, n in enumerate(a.shape)
                                                 if i not in axes])

        def backward(g):
            # the tie count is an integer array: cast it, or g / count would be float64
            mask = (a.data == m).astype(g.dtype)
            count = mask.sum(axis=axes, keepdims=True)
            return (mask * (_expand_reduced(g, a.shape, axes, keepdims) / count),)

        return Tensor._make(out_data, (a,), backward, "max")

    # -- shape ---------------------------------------------------------------------------
    def reshape(self, *shape: int | tuple[int, ...]) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        src = self.shape
        try:
            out_data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {src} "
                             f"({self.size} elements) into {shape}") from None

        def backward(g):
            return (g.reshape(src),)

        return Tensor._make(out_data, (self,), backward, "reshape")

    def flatten(self, start_dim: int = 1) -> Tensor:
        return self.reshape(self.shape[:start_dim] + (-1,))

    def transpose(self, *axes: int | tuple[int, ...]) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            axes = tuple(reversed(range(self.ndim)))
        inv = tuple(np.argsort(axes))

        def backward(g):
            return (g.transpose(inv),)

        return Tensor._make(self.data.transpose(axes), (self,), backward, "transpose")

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __getitem__(self, idx: Any) -> Tensor:
        a = self
        if isinstance(idx, Tensor):
            idx = idx.data
        elif isinstance(idx, tuple):
            idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx)
        out_data = a.data[idx]
        parts = idx if isinstance(idx, tuple) else (idx,)
        advanced = any(not isinstance(i, (int, slice, type(None), type(Ellipsis)))
                       for i in parts)
        xp = get_array_module(a.data)

        def backward(g):
            gx = xp.zeros(a.shape, dtype=g.dtype)
            if advanced:  # repeated indices must add up
                if xp is np:
                    np.add.at(gx, idx, g)
                else:
                    xp.add.at(gx, idx, g)
            else:
                gx[idx] = g
            return (gx,)

        return Tensor._make(out_data, (a,), backward, "getitem")

    # -- autograd ------------------------------------------------------------------------
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph "
                               f"(shape {self.shape}); was it made under no_grad()?")
        xp = get_array_module(self.data)
        grad_given = grad
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward: grad can be implicitly created only for a "
                                   f"scalar output, but this tensor has shape {self.shape}; "
                                   "pass backward(grad) with a gradient of that shape")
            grad = xp.ones_like(self.data)
        else:
            grad = _as_array(grad, self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: gradient shape {grad.shape} does not match the "
                                 f"tensor's shape {self.shape}")

        order = _topological_order(self)
        grads = {id(self): grad}
        # Arrays already stored as some leaf's .grad (or handed in by the caller): a second
        # leaf must not get the same array, or an in-place update of one gradient (weight
        # decay, clipping) would silently change the other, as `a + b` would otherwise do.
        handed_out = set() if grad_given is None else {id(grad)}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:  # a leaf: accumulate
                if node.grad is not None:
                    node.grad = node.grad + g
                    continue
                if id(g) in handed_out or not _owns_memory(g):
                    g = g.copy()  # e.g. a read-only broadcast view from sum's backward
                handed_out.add(id(g))
                node.grad = g
                continue
            pgs = node._backward(g)
            if not isinstance(pgs, (tuple, list)) or len(pgs) != len(node._parents):
                got = len(pgs) if isinstance(pgs, (tuple, list)) else type(pgs).__name__
                raise RuntimeError(f"backward of {node._op}: returned {got} gradients "
                                   f"for {len(node._parents)} inputs (output shape "
                                   f"{node.shape}); return one per input, None for none")
            for parent, pg in zip(node._parents, pgs, strict=True):
                if pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:
                    raise RuntimeError(f"backward of {node._op}: gradient of shape {pg.shape} "
                                       f"for an input of shape {parent.shape}")
                if pg.dtype != parent.data.dtype:  # mixed-dtype ops: the input's dtype
                    pg = pg.astype(parent.data.dtype)
                key = id(parent)
                prev = grads.get(key)
                grads[key] = pg if prev is None else prev + pg


def _owns_memory(a) -> bool:
    """True when `a` is a writeable array with its own buffer (not a view of another)."""
    flags = getattr(a, "flags", None)
    writeable = True if flags is None else bool(getattr(flags, "writeable", True))
    return writeable and getattr(a, "base", None) is None


def _topological_order(root):
    """Nodes reachable from root, parents before children; iterative DFS."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p.requires_grad and id(p) not in visited:
                stack.append((p, False))
    return order


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad by default)."""
    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None,
           device: str = "cpu") -> Tensor:
    t = Tensor(data, requires_grad=requires_grad, dtype=dtype)
    if normalize_device(device) != "cpu":
        t.data = to_device(t.data, device)
    return t
