"""Optimizers with PyTorch's update rules, written out step by step.

Each works in place on `param.data` with the array module of the parameter, so the same
code updates CPU and GPU parameters. A parameter whose `.grad` is None is skipped.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .backend import get_array_module, to_device
from .kernels import optim as fused
from .tensor import Tensor


class Optimizer:
    def __init__(self, params: Iterable[Tensor], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {lr}")
        self.lr = lr
        self.state = [dict() for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Flat name -> host array/number mapping (for .npz checkpoints)."""
        out = {"lr": self.lr}
        for i, st in enumerate(self.state):
            for k, v in st.items():
                out[f"{i}.{k}"] = to_device(v, "cpu") if hasattr(v, "shape") else v
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state.get("lr", self.lr))
        self.state = [dict() for _ in self.params]
        for key, v in state.items():
            if key == "lr":
                continue
            i, k = key.split(".", 1)
            p = self.params[int(i)]
            if getattr(v, "ndim", 0) > 0:
                if tuple(v.shape) != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: state {key} has "
                                     f"shape {tuple(v.shape)}, parameter {i} has {p.shape}")
                v = to_device(v.astype(p.dtype), p.device)
            else:
                v = v.item() if hasattr(v, "item") else v
            self.state[int(i)][k] = v


class SGD(Optimizer):
    """p -= lr * d, with d = g + wd*p, then momentum buffer b = mu*b + (1-dampening)*d
    (b = d on the first step) and d = b, or d = d + mu*b with nesterov."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def step(self) -> None:
        for p, st in zip(self.params, self.state, strict=True):
            g = p.grad
            if g is None:
                continue
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = g.copy()
                else:
                    buf *= self.momentum
                    buf += (1 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            p.data -= self.lr * g


class Adam(Optimizer):
    """PyTorch's Adam, step t (from 1), gradient g (plus weight_decay * p, an L2 term):

        m = b1*m + (1-b1)*g;   v = b2*v + (1-b2)*g^2
        p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

    A C-contiguous CPU parameter goes through the fused kernel `minigrad.kernels.optim`
    (one pass over memory); others (GPU, strided) through the same statements below, in the
    same order. Either way every constant is computed in float64 and rounded once to the
    parameter's dtype, so float32 parameters follow torch.optim.Adam to a few ulps.
    """

    decoupled = False  # AdamW sets this: weight decay shrinks p instead of adding to g

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: eps and weight_decay must be >= 0, got "
                             f"eps={eps}, weight_decay={weight_decay}")
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def step(self) -> None:
        wd = self.weight_decay
        l2 = 0.0 if self.decoupled else wd               # Adam: g += wd * p
        keep = 1.0 - self.lr * wd if self.decoupled else 1.0  # AdamW: p *= 1 - lr * wd
        for p, st in zip(self.params, self.state, strict=True):
            g = p.grad
            if g is None:
                continue
            xp = get_array_module(p.data)
            if "step" not in st:
                st["step"] = 0
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
            st["step"] += 1
            m, v = st["exp_avg"], st["exp_avg_sq"]
            c = fused.adam_constants(self.lr, self.b1, self.b2, self.eps, st["step"])
            if (xp is np and p.data.flags.c_contiguous and g.flags.c_contiguous
                    and g.dtype == p.dtype):
                fused.adam_update(p.data.reshape(-1), g.reshape(-1), m.reshape(-1),
                                  v.reshape(-1), c["one_minus_beta1"], c["beta2"],
                                  c["one_minus_beta2"], c["step_size"],
                                  c["bias_correction2_sqrt"], c["eps"], l2, keep)
                continue
            _adam_statements(xp, p.data, g.astype(p.dtype, copy=False), m, v, c, l2, keep)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's rule: each step
    first shrinks the parameter, p *= 1 - lr * weight_decay, then takes a plain Adam step
    (the gradient gets no L2 term). The default weight_decay is 0.01, as in torch."""

    decoupled = True

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def _adam_statements(xp, p, g, m, v, c, l2, keep):
    """Adam's update as array statements (GPU or strided parameters), in the fused kernel's
    order and with its constants, each rounded once to the parameter's dtype."""
    t = p.dtype.type
    if keep != 1.0:
        p *= t(keep)
    if l2:
        g = g + t(l2) * p
    w1 = c["one_minus_beta1"]
    if w1 < 0.5:  # torch's lerp_(g, w1): m + w1*(g - m), or g + (w1 - 1)*(g - m)
        m += t(w1) * (g - m)
    else:
        m[...] = g + (t(w1) - t(1)) * (g - m)
    v *= t(c["beta2"])
    v += (t(c["one_minus_beta2"]) * g) * g
    denom = xp.sqrt(v)
    denom /= t(c["bias_correction2_sqrt"])
    denom += t(c["eps"])
    p += (t(-c["step_size"]) * m) / denom
