"""Direct convolution on the GPU: no lowering buffer, no GEMM, one thread per output.

    y[n, m, oh, ow] = sum_{c,kh,kw} x[n, c, oh*sh-ph+kh, ow*sw-pw+kw] w[m, c, kh, kw]
                                                  [kernel direct_forward, direct.cu]
    dx: one thread per input pixel gathers dy * w  [direct_backward_data]
    dw: one thread per weight gathers dy * x       [direct_backward_filter]

Workspace: none (0 bytes). The reference the lowerings are checked against, and the
baseline they must beat: it does the same arithmetic without cuBLAS's data reuse.
"""
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    return 0


def forward(x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    y = cp.empty((n, m, ho, wo), dtype=x.dtype)
    rt.launch("direct", "direct_forward", x.dtype, y.size, (x.size, w.size, y.size),
              (x, w, y) + g)
    return y


def backward(dy, x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    dy = cp.ascontiguousarray(dy)
    dx = cp.empty(x.shape, dtype=x.dtype)
    dw = cp.empty(w.shape, dtype=w.dtype)
    sizes = (x.size, w.size, dy.size)
    rt.launch("direct", "direct_backward_data", x.dtype, dx.size, sizes, (dy, w, dx) + g)
    rt.launch("direct", "direct_backward_filter", x.dtype, dw.size, sizes, (dy, x, dw) + g)
    return dx, dw
