"""minigrad's convolution and pooling kernels: pure array functions, no autograd.

The contract (NCHW inputs, weights (M, C, KH, KW), float32 by default, float64 accepted;
the output dtype is the input dtype; `stride` and `padding` take an int or a pair)::

    from minigrad import kernels
    y      = kernels.conv2d_forward(x, w, stride=1, padding=0, algo="im2col", backend="numba")
    dx, dw = kernels.conv2d_backward(dy, x, w, stride=1, padding=0, algo="im2col",
                                     backend="numba")
    n      = kernels.workspace_bytes("im2col", x.shape, w.shape, stride=1, padding=0)
    ok     = kernels.supports("winograd", w.shape, stride=1)   # can algo compute this layer?
    y, argmax = kernels.maxpool2d_forward(x, kernel_size, stride=None, backend="numba")
    dx     = kernels.maxpool2d_backward(dy, argmax, x.shape, kernel_size, stride=None,
                                        backend="numba")

Everything is checked here, once, and the algorithm modules receive C-contiguous arrays of
one float dtype and (int, int) pairs. Each algorithm lives in its own module, imported lazily
by name ("kn2row-aa" -> `kernels/kn2row_aa.py`), which exposes::

    forward_numpy(x, w, stride, padding) -> y          backward_numpy(dy, x, w, s, p) -> dx, dw
    forward_numba(x, w, stride, padding) -> y          backward_numba(dy, x, w, s, p) -> dx, dw
    workspace_bytes(x_shape, w_shape, stride, padding, itemsize) -> int
    supports(w_shape, stride) -> bool        (optional: only for a restricted algorithm)
    check(op, x_shape, w_shape, stride)      (optional: the ValueError when it does not)

and, after the positional arguments, whichever of the options in OPTIONS it can use (im2col:
`saved=None` and, backward, `need_dx=True`); a parameter OPTIONS does not list is an error.

Every algorithm computes every shape except "winograd" (F(2x2, 3x3): 3x3 kernels at stride 1
only); `kernels.supports(algo, w_shape, stride)` says which, and conv2d_forward,
conv2d_backward and workspace_bytes raise a one-line ValueError naming the constraint and the
shapes for the others, on every backend (checked before CuPy is needed).

The "cupy" backend dispatches to `kernels.cuda.<module>.forward(x, w, stride, padding)` and
`.backward(dy, x, w, stride, padding)` (and, for pooling, `kernels.cuda.pool.forward(x,
kernel, stride)` / `.backward(dy, argmax, x_shape, kernel, stride)`).

The options `saved` and `need_dx` only save work (see OPTIONS below): an algorithm that
does not take one is not given it, and any other option is a TypeError naming it.

What else the engine uses, so that it needs no private name::

    kernels.matmul(a, b, out=None, accumulate=False)   # a @ b on kernels.gemm or NumPy's BLAS
    kernels.gemm_info()         # which GEMM runs for float32 / float64, MINIGRAD_GEMM's mode
    kernels.bias_add(y, b)      # y += b over channel axis 1, in place (Numba, parallel)
    kernels.bias_grad(dy)       # dy summed over every axis but 1
    kernels.threading_layer()   # the Numba threading layer this process really uses
    kernels.blas_info()         # [(library, version, kernel architecture, threads)]

Numba's threading layer is requested in `kernels/_numba.py` ("threadsafe"), so the kernels
may be called from several Python threads at once.
"""
from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from ._blas import blas_info
from ._common import out_size, pair
from ._numba import threading_layer
from .channel import bias_add, bias_grad
from .gemm import gemm_info, matmul

if TYPE_CHECKING:  # for the type hints only: CuPy is optional
    import cupy
    from numpy.typing import DTypeLike

__all__ = [
    "ALGORITHMS",
    "BACKENDS",
    "OPTIONS",
    "conv2d_forward",
    "conv2d_backward",
    "workspace_bytes",
    "supports",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "matmul",
    "gemm_info",
    "bias_add",
    "bias_grad",
    "threading_layer",
    "blas_info",
]

Array: TypeAlias = "np.ndarray | cupy.ndarray"  # a CuPy array with backend="cupy"
Pair: TypeAlias = "int | tuple[int, int]"
Shape: TypeAlias = "tuple[int, ...]"

ALGORITHMS = ("direct", "im2col", "im2row", "kn2row", "kn2row-aa", "kn2col", "winograd")
BACKENDS = ("numpy", "numba", "cupy")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- validation
# Only shapes and dtypes are inspected, so the same checks serve numpy and cupy arrays.


def _shape(a):
    return tuple(int(s) for s in a.shape)


def _check_choice(op, name, value, choices):
    if value not in choices:
        raise ValueError(f"{op}: unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def _check_4d(op, name, a, layout):
    if len(a.shape) != 4:
        raise ValueError(f"{op}: {name} must be 4-D {layout}, got shape {_shape(a)}")


def _check_float(op, name, a):
    dt = np.dtype(a.dtype)
    if dt not in DTYPES:
        raise ValueError(
            f"{op}: {name} must be float32 or float64, got dtype {dt} (shape {_shape(a)})"
        )


def _check_pair(op, name, v, minimum):
    try:
        p = pair(v, name)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from e
    if min(p) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return p


def _check_conv(op, x, w, stride, padding, algo, backend):
    _check_choice(op, "algo", algo, ALGORITHMS)
    _check_choice(op, "backend", backend, BACKENDS)
    _check_4d(op, "x", x, "(N, C, H, W)")
    _check_4d(op, "w", w, "(M, C, KH, KW)")
    _check_float(op, "x", x)
    _check_float(op, "w", w)
    if np.dtype(x.dtype) != np.dtype(w.dtype):
        raise ValueError(
            f"{op}: x and w must have the same dtype, got x {np.dtype(x.dtype)} "
            f"{_shape(x)} and w {np.dtype(w.dtype)} {_shape(w)}"
        )
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"{op}: channel mismatch: x {_shape(x)} has C={x.shape[1]} but "
            f"w {_shape(w)} expects C={w.shape[1]}"
        )
    stride = _check_pair(op, "stride", stride, 1)
    padding = _check_pair(op, "padding", padding, 0)
    _, _, h, wd = _shape(x)
    kh, kw = _shape(w)[2:]
    if kh > h + 2 * padding[0] or kw > wd + 2 * padding[1]:
        raise ValueError(
            f"{op}: kernel {kh}x{kw} (w {_shape(w)}) is larger than the padded input "
            f"{h + 2 * padding[0]}x{wd + 2 * padding[1]} (x {_shape(x)}, padding {padding})"
        )
    if min(_shape(w)) < 1 or min(_shape(x)) < 1:
        raise ValueError(f"{op}: empty arrays are not supported: x {_shape(x)}, w {_shape(w)}")
    return stride, padding


def _algo_module(algo):
    """The CPU module of `algo` (it carries the shape constraints of every backend)."""
    return _module(algo, "numpy")


def supports(algo: str, w_shape: Shape, stride: Pair = 1) -> bool:
    """True when `algo` can compute a convolution with weights of shape w_shape (M, C, KH,
    KW) at `stride`: every algorithm can, except "winograd" (3x3 kernels, stride 1 only).
    The answer is the same for every backend and does not depend on x or the padding."""
    _check_choice("supports", "algo", algo, ALGORITHMS)
    w_shape = tuple(int(s) for s in w_shape)
    if len(w_shape) != 4:
        raise ValueError(f"supports: w_shape must be 4-D (M, C, KH, KW), got {w_shape}")
    stride = _check_pair("supports", "stride", stride, 1)
    rule = getattr(_algo_module(algo), "supports", None)
    return True if rule is None else bool(rule(w_shape, stride))


def _check_supported(op, algo, x_shape, w_shape, stride):
    """ValueError (one line: op, constraint, shapes) unless `algo` computes this shape."""
    module = _algo_module(algo)
    if getattr(module, "supports", None) is None or module.supports(w_shape, stride):
        return
    check = getattr(module, "check", None)
    if check is not None:
        check(op, x_shape, w_shape, stride)      # the module's own message
    raise ValueError(f"{op}: algo {algo!r} cannot compute w {w_shape} at stride {stride} "
                     f"(x {x_shape}); use another algorithm (e.g. 'im2col') for this layer")


def _conv_out_shape(x_shape, w_shape, stride, padding):
    ho, wo = out_size(x_shape[2], x_shape[3], w_shape[2], w_shape[3], stride, padding)
    return (x_shape[0], w_shape[0], ho, wo)


# --------------------------------------------------------------------------- dispatch


def _module(name, backend):
    """The module implementing `name` ("kn2row-aa" -> kernels.kn2row_aa), imported lazily."""
    mod = name.replace("-", "_")
    full = f"{__name__}.cuda.{mod}" if backend == "cupy" else f"{__name__}.{mod}"
    if backend == "cupy":
        _require_cupy()
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name != full:  # a missing dependency *inside* the module: report it as is
            raise
        raise NotImplementedError(
            f"algorithm {name!r} (backend {backend!r}) is listed but module {full} "
            f"does not exist yet"
        ) from e


_CUPY_OK = None


def _require_cupy():
    global _CUPY_OK
    if _CUPY_OK:
        return
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "backend 'cupy' needs CuPy (pip install cupy-cuda12x) and a CUDA GPU; "
            f"CuPy is not importable here ({e}). Use backend 'numba' or 'numpy'."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises CUDARuntimeError when there is no driver
        raise RuntimeError(f"backend 'cupy': no usable CUDA GPU ({e})") from e
    if n < 1:
        raise RuntimeError("backend 'cupy': CuPy is installed but no CUDA GPU is visible")
    _CUPY_OK = True


def _contiguous(a, backend):
    if backend == "cupy":
        import cupy

        return cupy.ascontiguousarray(a)
    return np.ascontiguousarray(a)


# The keyword options the dispatcher hands to an algorithm, per direction. Each only saves
# work, so an algorithm that does not take one is simply not given it, with the same result:
OPTIONS = {
    "forward": {
        "saved": "a dict for the backward pass; an algorithm that can reuse its lowered "
                 "input there (im2col) leaves it in the dict, the others leave it empty",
    },
    "backward": {
        "saved": "the dict the forward pass filled, if any",
        "need_dx": "False when dx is not wanted: an algorithm that can skip the dx GEMM does; "
                   "for the others dx is computed and conv2d_backward drops it",
    },
}
_ACCEPTS = {}  # algorithm function -> the options it takes (checked once per function)


def _accepted(fn, op, algo, backend, direction, n_args):
    """The options `fn` takes: its parameters after the n_args positional ones. Each must be
    one of OPTIONS[direction]; a misspelled one would otherwise never be passed."""
    if fn not in _ACCEPTS:
        names = list(inspect.signature(fn).parameters)[n_args:]
        stray = [name for name in names if name not in OPTIONS[direction]]
        if stray:
            raise TypeError(
                f"{op}: {fn.__module__}.{fn.__name__} (algo {algo!r}, backend {backend!r}) "
                f"takes option(s) {', '.join(stray)} that the dispatcher never passes; "
                f"known {direction} options: {', '.join(OPTIONS[direction]) or 'none'}"
            )
        _ACCEPTS[fn] = frozenset(names)
    return _ACCEPTS[fn]


def _call(op, algo, module, direction, backend, *args, **options):
    """Run module.<direction>_<backend>(*args) (cupy: module.<direction>) with the options it
    takes; an option OPTIONS does not list for this direction is a TypeError."""
    fn = getattr(module, direction if backend == "cupy" else f"{direction}_{backend}")
    accepted = _accepted(fn, op, algo, backend, direction, len(args))
    for name in options:
        if name not in OPTIONS[direction]:
            raise TypeError(
                f"{op}: unknown option {name!r} for algo {algo!r}, backend {backend!r}; "
                f"{fn.__module__}.{fn.__name__} accepts "
                f"{', '.join(sorted(accepted)) or 'no options'} (known {direction} options: "
                f"{', '.join(OPTIONS[direction]) or 'none'})"
            )
    return fn(*args, **{k: v for k, v in options.items() if k in accepted})


# --------------------------------------------------------------------------- convolution


def conv2d_forward(x: Array, w: Array, stride: Pair = 1, padding: Pair = 0,
                   algo: str = "im2col", backend: str = "numba",
                   saved: dict | None = None) -> Array:
    """y[n, m, oh, ow] = sum_{c,kh,kw} w[m, c, kh, kw] * xpad[n, c, oh*sh + kh, ow*sw + kw].

    x: (N, C, H, W); w: (M, C, KH, KW); returns y: (N, M, Ho, Wo) of x's dtype.
    saved: optional dict handed on to conv2d_backward; an algorithm that can reuse its
    lowered input in the backward pass (im2col) leaves it there instead of lowering twice.
    """
    op = "conv2d_forward"
    stride, padding = _check_conv(op, x, w, stride, padding, algo, backend)
    _check_supported(op, algo, _shape(x), _shape(w), stride)
    x, w = _contiguous(x, backend), _contiguous(w, backend)
    options = {} if saved is None else {"saved": saved}
    return _call(op, algo, _module(algo, backend), "forward", backend, x, w, stride, padding,
                 **options)


def conv2d_backward(dy: Array, x: Array, w: Array, stride: Pair = 1, padding: Pair = 0,
                    algo: str = "im2col", backend: str = "numba", saved: dict | None = None,
                    need_dx: bool = True) -> tuple[Array | None, Array]:
    """Gradients (dx, dw) of sum(dy * conv2d_forward(x, w)) with respect to x and w.

    saved: the dict given to conv2d_forward, if any. need_dx=False: dx is not wanted (the
    input needs no gradient); algorithms that can skip its GEMM do, and dx is None.
    """
    op = "conv2d_backward"
    stride, padding = _check_conv(op, x, w, stride, padding, algo, backend)
    _check_supported(op, algo, _shape(x), _shape(w), stride)
    _check_4d(op, "dy", dy, "(N, M, Ho, Wo)")
    want = _conv_out_shape(_shape(x), _shape(w), stride, padding)
    if _shape(dy) != want:
        raise ValueError(
            f"{op}: dy has shape {_shape(dy)} but x {_shape(x)}, w {_shape(w)}, "
            f"stride {stride}, padding {padding} give an output of shape {want}"
        )
    if np.dtype(dy.dtype) != np.dtype(x.dtype):
        raise ValueError(
            f"{op}: dy dtype {np.dtype(dy.dtype)} {_shape(dy)} must match x dtype "
            f"{np.dtype(x.dtype)} {_shape(x)}"
        )
    dy, x, w = (_contiguous(a, backend) for a in (dy, x, w))
    options = {} if saved is None else {"saved": saved}
    if not need_dx:
        options["need_dx"] = False
    dx, dw = _call(op, algo, _module(algo, backend), "backward", backend, dy, x, w, stride,
                   padding, **options)
    return (dx if need_dx else None), dw


def workspace_bytes(algo: str, x_shape: Shape, w_shape: Shape, stride: Pair = 1,
                    padding: Pair = 0, dtype: DTypeLike = np.float32,
                    backend: str = "numba") -> int:
    """Bytes of lowering buffers `algo` allocates in its forward pass (beyond x, w and y).

    Each module documents its formula in its header. Where a backend allocates differently
    (the Numba kn2row family works on chunks of images) the module has a
    `workspace_bytes_<backend>` and that is what is returned for that backend. The NumPy
    references may also make a zero-padded copy of x, which is not counted.
    """
    op = "workspace_bytes"
    _check_choice(op, "algo", algo, ALGORITHMS)
    _check_choice(op, "backend", backend, BACKENDS)
    x_shape, w_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in w_shape)
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"{op}: x_shape and w_shape must be 4-D, got {x_shape} and {w_shape}")
    if x_shape[1] != w_shape[1]:
        raise ValueError(f"{op}: channel mismatch: x_shape {x_shape}, w_shape {w_shape}")
    stride = _check_pair(op, "stride", stride, 1)
    padding = _check_pair(op, "padding", padding, 0)
    _check_supported(op, algo, x_shape, w_shape, stride)
    itemsize = np.dtype(dtype).itemsize
    module = _module(algo, "numpy")
    formula = getattr(module, f"workspace_bytes_{backend}", module.workspace_bytes)
    if backend == "cupy":  # shape arithmetic only: needs no GPU
        formula = importlib.import_module(f"{__name__}.cuda.{module.__name__.split('.')[-1]}")
        formula = formula.workspace_bytes
    return int(formula(x_shape, w_shape, stride, padding, itemsize))


# --------------------------------------------------------------------------- max pooling


def _check_pool(op, x_shape, kernel_size, stride, backend):
    _check_choice(op, "backend", backend, BACKENDS)
    kernel = _check_pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else _check_pair(op, "stride", stride, 1)
    h, w = x_shape[2], x_shape[3]
    if kernel[0] > h or kernel[1] > w:
        raise ValueError(
            f"{op}: kernel_size {kernel} is larger than the input {h}x{w} (x {x_shape})"
        )
    return kernel, stride


def maxpool2d_forward(x: Array, kernel_size: Pair, stride: Pair | None = None,
                      backend: str = "numba", relu: bool = False) -> tuple[Array, Array]:
    """Max over each KHxKW window (no padding); returns y (N, C, Ho, Wo) and argmax.

    argmax[n, c, oh, ow] is the flat index h*W + w, inside the (n, c) input plane, of the
    first maximum of the window (int64); maxpool2d_backward routes dy there.
    relu=True fuses a ReLU: y = max(0, window max), and argmax is -1 where that is 0 (no
    gradient flows there), as pool-then-ReLU or ReLU-then-pool would compute.
    """
    op = "maxpool2d_forward"
    _check_4d(op, "x", x, "(N, C, H, W)")
    _check_float(op, "x", x)
    kernel, stride = _check_pool(op, _shape(x), kernel_size, stride, backend)
    x = _contiguous(x, backend)
    return _call(op, "maxpool", _module("pool", backend), "forward", backend, x, kernel, stride,
                 bool(relu))


def maxpool2d_backward(dy: Array, argmax: Array, x_shape: Shape, kernel_size: Pair,
                       stride: Pair | None = None, backend: str = "numba") -> Array:
    """dx (x_shape, dy's dtype): each dy[n, c, oh, ow] added at argmax in plane (n, c); an
    argmax of -1 (a window a fused ReLU clipped) routes nothing."""
    op = "maxpool2d_backward"
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"{op}: x_shape must be 4-D (N, C, H, W), got {x_shape}")
    _check_4d(op, "dy", dy, "(N, C, Ho, Wo)")
    _check_float(op, "dy", dy)
    kernel, stride = _check_pool(op, x_shape, kernel_size, stride, backend)
    ho, wo = out_size(x_shape[2], x_shape[3], kernel[0], kernel[1], stride, (0, 0))
    want = (x_shape[0], x_shape[1], ho, wo)
    if _shape(dy) != want or _shape(argmax) != want:
        raise ValueError(
            f"{op}: dy {_shape(dy)} and argmax {_shape(argmax)} must both have shape {want} "
            f"for x_shape {x_shape}, kernel_size {kernel}, stride {stride}"
        )
    if np.dtype(argmax.dtype).kind not in "iu":
        raise ValueError(f"{op}: argmax must be an integer array, got {np.dtype(argmax.dtype)}")
    dy = _contiguous(dy, backend)
    argmax = _contiguous(argmax, backend).astype(np.int64, copy=False)
    return _call(op, "maxpool", _module("pool", backend), "backward", backend, dy, argmax,
                 x_shape, kernel, stride)
