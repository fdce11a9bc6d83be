"""2-D max pooling on the GPU (no padding): forward with argmax, backward by gather.

    y[n, c, oh, ow]      = max of x[n, c, oh*sh : oh*sh+KH, ow*sw : ow*sw+KW]
    argmax[n, c, oh, ow] = ih*W + iw of that max in its (H, W) plane, int64
                                                 [kernel maxpool_forward, pool.cu]
    dx[n, c, ih, iw]     = sum of dy over the windows whose argmax is (ih, iw)
                                                 [kernel maxpool_backward: a gather]

Ties go to the first element of the window in row-major order; NaN propagates.
relu=True fuses a ReLU (kernels/pool.py's header): y = max(0, window max), argmax -1 where
that is <= 0.
"""
import numpy as np

from .._common import pair
from . import _runtime as rt


def _geometry(x_shape, kernel, stride):
    n, c, h, w = (int(v) for v in x_shape)
    (kh, kw), (sh, sw) = pair(kernel, "kernel"), pair(stride, "stride")
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ho < 1 or wo < 1:
        raise ValueError(f"max-pool window {(kh, kw)} stride {(sh, sw)} does not fit "
                         f"input {(h, w)}")
    return (n, c, h, w, kh, kw, sh, sw, ho, wo)


def forward(x, kernel, stride, relu=False):
    cp = rt.get_cupy()
    g = _geometry(x.shape, kernel, stride)
    n, c, h, w, kh, kw, sh, sw, ho, wo = g
    x = cp.ascontiguousarray(x)
    y = cp.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = cp.empty((n, c, ho, wo), dtype=np.int64)
    rt.launch("pool", "maxpool_forward", x.dtype, y.size, (x.size, y.size),
              (x, y, argmax) + g + (int(bool(relu)),))
    return y, argmax


def backward(dy, argmax, x_shape, kernel, stride):
    cp = rt.get_cupy()
    g = _geometry(x_shape, kernel, stride)
    dy = cp.ascontiguousarray(dy)
    argmax = cp.ascontiguousarray(argmax)
    if argmax.shape != dy.shape or argmax.dtype != np.int64:
        raise ValueError(f"argmax must be int64 of dy's shape {dy.shape}, "
                         f"got {argmax.dtype} {argmax.shape}")
    dx = cp.empty(tuple(int(v) for v in x_shape), dtype=dy.dtype)
    rt.launch("pool", "maxpool_backward", dy.dtype, dx.size, (dx.size, dy.size),
              (dy, argmax, dx) + g)
    return dx
