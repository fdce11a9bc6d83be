"""Finite-difference gradient checking in float64."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .tensor import Tensor


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Any], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, raise_exception: bool = True) -> bool:
    """Compare autograd's gradients of sum(fn(*inputs) * r) with central differences.

    `inputs` are Tensors or arrays; they are copied to float64 (the check is meaningless in
    float32). A random projection r turns a non-scalar output into a scalar. Returns True, or
    raises AssertionError naming the input and the worst element.
    """
    xs = [Tensor(np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64),
                 requires_grad=True) for x in inputs]
    out = fn(*xs)
    rng = np.random.default_rng(0)
    r = rng.standard_normal(out.shape)

    def scalar(*args):
        return float(np.sum(np.asarray(fn(*args).data, dtype=np.float64) * r))

    (out * Tensor(r)).sum().backward()
    for i, x in enumerate(xs):
        analytic = np.zeros_like(x.data) if x.grad is None else x.grad
        numeric = np.zeros_like(x.data)
        flat = x.data.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            fp = scalar(*[Tensor(a.data) for a in xs])
            flat[j] = old - eps
            fm = scalar(*[Tensor(a.data) for a in xs])
            flat[j] = old
            numeric.reshape(-1)[j] = (fp - fm) / (2 * eps)
        bad = ~np.isclose(analytic, numeric, atol=atol, rtol=rtol)
        if bad.any():
            k = np.unravel_index(np.argmax(np.abs(analytic - numeric)), x.shape)
            msg = (f"gradcheck: input {i} (shape {x.shape}): {int(bad.sum())} of {x.size} "
                   f"elements differ; worst at {k}: autograd {analytic[k]:.6g}, "
                   f"finite difference {numeric[k]:.6g}")
            if raise_exception:
                raise AssertionError(msg)
            return False
    return True
