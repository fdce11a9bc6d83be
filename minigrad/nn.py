"""Layers: Module and the building blocks of the models in `minigrad.models`.

A Module registers every Parameter and sub-Module assigned to it as an attribute, in order,
so `named_parameters()` yields names like "0.weight" (Sequential) or "conv1.bias" that match
PyTorch's, and a state dict moves between the two engines by name.

Buffers are arrays a module keeps that are state but not parameters: BatchNorm2d's running
mean and variance. `register_buffer` records them; `state_dict()` holds them beside the
parameters (PyTorch's order: a module's parameters, its buffers, then its children), so a
checkpoint keeps them and PyTorch's `load_state_dict` accepts ours.

`train()` / `eval()` set `training` on a module and every module inside it; Dropout and
BatchNorm2d behave differently in the two modes, as in PyTorch.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import functional as F
from .backend import device_of, to_device
from .random import generator
from .tensor import Parameter, Tensor

IntPair = int | tuple[int, int]


class Module:
    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffers", ()):  # a replaced buffer stays one
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: Any) -> None:
        """Keep `array` as state (saved in state_dict, moved by .to()) but not a parameter."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def forward(self, *args: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, *args: Any) -> Tensor:
        return self.forward(*args)

    # -- parameters ------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._parameters.items():
            yield prefix + name, p
        for mname, m in self._modules.items():
            yield from m.named_parameters(prefix + mname + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, b in self._buffers.items():
            yield prefix + name, b
        for mname, m in self._modules.items():
            yield from m.named_buffers(prefix + mname + ".")

    def modules(self) -> Iterator[Module]:
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes and devices -----------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (or evaluation mode, mode=False) here and in every submodule."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(self, device: str) -> Module:
        """Move every parameter (and its gradient) and buffer to 'cpu' or 'cuda', in place."""
        for p in self.parameters():
            p.data = to_device(p.data, device)
            if p.grad is not None:
                p.grad = to_device(p.grad, device)
        for m in self.modules():
            for name, b in list(m._buffers.items()):
                setattr(m, name, to_device(b, device))
        return self

    # -- state -------------------------------------------------------------------------
    def _state_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str, Any]]:
        """(full name, owning module, local name, array or Parameter), in PyTorch's order."""
        for name, p in self._parameters.items():
            yield prefix + name, self, name, p
        for name, b in self._buffers.items():
            yield prefix + name, self, name, b
        for mname, m in self._modules.items():
            yield from m._state_slots(prefix + mname + ".")

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Name -> host numpy copy of each parameter and buffer."""
        return OrderedDict(
            (n, np.array(to_device(v.data if isinstance(v, Tensor) else v, "cpu"), copy=True))
            for n, _, _, v in self._state_slots())

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Module:
        """Copy arrays into the parameters and buffers by name, checking names and shapes
        first."""
        slots = OrderedDict((n, (m, k, v)) for n, m, k, v in self._state_slots())
        own = OrderedDict((n, v) for n, (_, _, v) in slots.items())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict ({type(self).__name__}): missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        wrong = [(k, tuple(np.shape(state[k])), tuple(p.shape)) for k, p in own.items()
                 if k in state and tuple(np.shape(state[k])) != tuple(p.shape)]
        if wrong:
            desc = ", ".join(f"{k}: got {g}, expected {e}" for k, g, e in wrong)
            raise ValueError(f"load_state_dict ({type(self).__name__}): shape mismatch: {desc}")
        for k, (module, name, v) in slots.items():
            if k not in state:
                continue
            arr = np.asarray(state[k]).astype(v.dtype, copy=True)
            if isinstance(v, Tensor):
                v.data = to_device(arr, v.device)
            else:
                setattr(module, name, to_device(arr, device_of(v)))
        return self

    def __repr__(self) -> str:
        lines = [type(self).__name__ + "("]
        for name, m in self._modules.items():
            lines.append(f"  ({name}): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines) + ")" if self._modules else type(self).__name__ + "()"


def _uniform(shape, bound, dtype=np.float32):
    return generator().uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x W^T + b, W of shape (out, in); PyTorch's default init
    (kaiming_uniform with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), and the same for b)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: Any = np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class Conv2d(Module):
    """2-D convolution, weight (out_ch, in_ch, K, K), PyTorch's default init; the lowering
    algorithm is `algo` (None: `minigrad.config.conv_algo`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, bias: bool = True,
                 algo: str | None = None, dtype: Any = np.float32):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.algo = (kh, kw), stride, padding, algo
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = Parameter(_uniform((out_channels, in_channels, kh, kw), bound, dtype))
        self.bias = Parameter(_uniform((out_channels,), bound, dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, algo=self.algo)

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"algo={self.algo!r})")


class MaxPool2d(Module):
    """Max pooling. relu=True: the pool followed by a ReLU, fused into one kernel (the
    pair is common, and ReLU commutes with max: F.max_pool2d)."""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 relu: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.relu = kernel_size, stride, relu

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, relu=self.relu)

    def __repr__(self) -> str:
        relu = ", relu=True" if self.relu else ""
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}{relu})"


class AvgPool2d(Module):
    """Average pooling; zero padding counts in the average (torch's count_include_pad)."""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None,
                 padding: IntPair = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def __repr__(self) -> str:
        return (f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")


class BatchNorm2d(Module):
    """Batch normalisation per channel of NCHW inputs, as torch.nn.BatchNorm2d.

    Training normalises with the batch's mean and biased variance and moves the running
    statistics toward the batch mean and unbiased variance by `momentum`; evaluation
    normalises with the running statistics. weight (gamma, ones) and bias (beta, zeros) are
    learned when affine. running_mean, running_var and num_batches_tracked are buffers:
    state_dict() holds them, under PyTorch's names.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, dtype: Any = np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}): expected input (N, "
                             f"{self.num_features}, H, W), got shape {x.shape}")
        if self.training:
            self.num_batches_tracked += 1  # in place: the 0-d buffer keeps its identity
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=self.training, momentum=self.momentum, eps=self.eps)

    def __repr__(self) -> str:
        return (f"BatchNorm2d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.weight is not None})")


class Dropout(Module):
    """Inverted dropout: in training zero each element with probability p and scale the
    rest by 1/(1-p); in evaluation, the identity."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability p must lie in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


class Softmax(Module):
    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return x.softmax(self.axis)


class Flatten(Module):
    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim)


class Sequential(Module):
    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._modules.values():
            x = layer(x)
        return x


__all__ = ["Module", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "Dropout",
           "ReLU", "Tanh", "Sigmoid", "Softmax", "Flatten", "Sequential", "Parameter",
           "Tensor"]
