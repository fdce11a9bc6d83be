"""Layers: Module and the building blocks of the models in `minigrad.models`.

A Module registers every Parameter and sub-Module assigned to it as an attribute, in order,
so `named_parameters()` yields names like "0.weight" (Sequential) or "conv1.bias" that match
PyTorch's, and a state dict moves between the two engines by name.
"""
import math
from collections import OrderedDict

import numpy as np

from . import functional as F
from .backend import to_device
from .random import generator
from .tensor import Parameter, Tensor


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args):
        raise NotImplementedError

    def __call__(self, *args):
        return self.forward(*args)

    # -- parameters ------------------------------------------------------------------
    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for mname, m in self._modules.items():
            yield from m.named_parameters(prefix + mname + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # -- modes and devices -----------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move every parameter (and its gradient) to 'cpu' or 'cuda', in place."""
        for p in self.parameters():
            p.data = to_device(p.data, device)
            if p.grad is not None:
                p.grad = to_device(p.grad, device)
        return self

    # -- state -------------------------------------------------------------------------
    def state_dict(self):
        """Name -> host numpy copy of each parameter."""
        return OrderedDict((n, np.array(to_device(p.data, "cpu"), copy=True))
                           for n, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters by name, checking names and shapes first."""
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict ({type(self).__name__}): missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        wrong = [(k, tuple(np.shape(state[k])), p.shape) for k, p in own.items()
                 if k in state and tuple(np.shape(state[k])) != p.shape]
        if wrong:
            desc = ", ".join(f"{k}: got {g}, expected {e}" for k, g, e in wrong)
            raise ValueError(f"load_state_dict ({type(self).__name__}): shape mismatch: {desc}")
        for k, p in own.items():
            if k in state:
                arr = np.asarray(state[k]).astype(p.dtype, copy=True)
                p.data = to_device(arr, p.device)
        return self

    def __repr__(self):
        lines = [type(self).__name__ + "("]
        for name, m in self._modules.items():
            lines.append(f"  ({name}): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines) + ")" if self._modules else type(self).__name__ + "()"


def _uniform(shape, bound, dtype=np.float32):
    return generator().uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x W^T + b, W of shape (out, in); PyTorch's default init
    (kaiming_uniform with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), and the same for b)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class Conv2d(Module):
    """2-D convolution, weight (out_ch, in_ch, K, K), PyTorch's default init; the lowering
    algorithm is `algo` (None: `minigrad.config.conv_algo`)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 algo=None, dtype=np.float32):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.algo = (kh, kw), stride, padding, algo
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = Parameter(_uniform((out_channels, in_channels, kh, kw), bound, dtype))
        self.bias = Parameter(_uniform((out_channels,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, algo=self.algo)

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"algo={self.algo!r})")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def __repr__(self):
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return x.flatten(self.start_dim)


class Sequential(Module):
    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


__all__ = ["Module", "Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Sequential",
           "Parameter", "Tensor"]
