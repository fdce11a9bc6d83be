"""Optimizers with PyTorch's update rules, written out step by step.

Each works in place on `param.data` with the array module of the parameter, so the same
code updates CPU and GPU parameters. A parameter whose `.grad` is None is skipped.
"""
import math

import numpy as np

from .backend import get_array_module, to_device
from .kernels._numba import njit, prange  # (sets Numba's thread-safe threading layer)


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {lr}")
        self.lr = lr
        self.state = [dict() for _ in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        raise NotImplementedError

    def state_dict(self):
        """Flat name -> host array/number mapping (for .npz checkpoints)."""
        out = {"lr": self.lr}
        for i, st in enumerate(self.state):
            for k, v in st.items():
                out[f"{i}.{k}"] = to_device(v, "cpu") if hasattr(v, "shape") else v
        return out

    def load_state_dict(self, state):
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

    def __init__(self, params, lr=1e-2, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def step(self):
        for p, st in zip(self.params, self.state):
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
    """m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)   (weight_decay adds wd*p to g)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.b1, self.b2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def step(self):
        b1, b2 = self.b1, self.b2
        for p, st in zip(self.params, self.state):
            g = p.grad
            if g is None:
                continue
            xp = get_array_module(p.data)
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if "step" not in st:
                st["step"] = 0
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
            st["step"] += 1
            t, m, v = st["step"], st["exp_avg"], st["exp_avg_sq"]
            step_size = self.lr / (1 - b1 ** t)
            if xp is np and p.data.flags.c_contiguous and g.flags.c_contiguous:
                # the same arithmetic as below, fused into one pass over memory
                _adam_update(p.data.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                             b1, b2, step_size, math.sqrt(1 - b2 ** t), self.eps)
                continue
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = xp.sqrt(v)
            denom /= math.sqrt(1 - b2 ** t)
            denom += self.eps
            p.data -= step_size * (m / denom)


@njit(parallel=True, cache=True)
def _adam_update(p, g, m, v, b1, b2, step_size, bias_correction2_sqrt, eps):
    """Adam's update for one flat CPU parameter in one pass, no temporaries; the constants are
    cast to the parameter's dtype so float32 parameters are updated in float32 SIMD lanes
    (measured: 0.06 ms for MnistCNN's 421k parameters, against 1.4 ms for the NumPy path)."""
    t = p.dtype.type
    b1, b2, eps = t(b1), t(b2), t(eps)
    step_size, bc2 = t(step_size), t(bias_correction2_sqrt)
    c1, c2 = t(1) - b1, t(1) - b2
    for i in prange(p.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / bc2 + eps)
