"""kn2row on the GPU: K^2 partial maps from one cuBLAS GEMM, then a shift-add gather.

    w (M, C, KH, KW) -> Wk (KH*KW*M, C)       row k*M + m holds w[m, :, kh, kw]
    P  = Wk @ x[n]   (KH*KW*M, H*W) per image, batched: P (N, KH*KW*M, H*W)
    y[n, m, oh, ow] = sum_k P[n, k*M + m, (oh*sh-ph+kh, ow*sw-pw+kw)]
                                             [kernel kn2row_shift_add, kn2row.cu]

Backward:
    dP = shift_gather(dy)   (N, KH*KW*M, H*W): dP[n, k*M+m, ih, iw] = dy at the output pixel
                            that read (ih, iw) through tap k, else 0  [kn2row_shift_gather]
    dx  = Wk^T @ dP[n]                     (C, H*W) per image
    dWk = sum_n dP[n] @ x[n]^T             (KH*KW*M, C) -> dw

Workspace (forward, bytes allocated besides x, w and y): the K^2*M x H*W partial maps of
every image (the CPU version's per-image buffer times N: one batched GEMM instead of N), and
the reordered weights:
    itemsize * (N * KH*KW*M * H*W + KH*KW*M*C [if KH*KW > 1])
"""
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = rt.conv_geometry(
        x_shape, w_shape, stride, padding)
    return itemsize * (n * kh * kw * m * h * w + (kh * kw * m * c if kh * kw > 1 else 0))


def _wk(cp, w):
    m, c, kh, kw = w.shape
    return cp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw * m, c)


def forward(x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    P = cp.ascontiguousarray(cp.matmul(_wk(cp, w), x.reshape(n, c, h * wd)))
    y = cp.empty((n, m, ho, wo), dtype=x.dtype)
    rt.launch("kn2row", "kn2row_shift_add", x.dtype, y.size, (y.size, P.size),
              (P, y) + g + (0, kh * kw, 0))
    return y


def backward(dy, x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    dy = cp.ascontiguousarray(dy)
    dP = cp.empty((n, kh * kw * m, h * wd), dtype=x.dtype)
    rt.launch("kn2row", "kn2row_shift_gather", x.dtype, dP.size, (dP.size, dy.size),
              (dy, dP) + g + (0, kh * kw))
    wk = _wk(cp, w)
    dx = cp.matmul(wk.T, dP).reshape(x.shape)                      # (N, C, H*W)
    dwk = cp.matmul(dP, x.reshape(n, c, h * wd).transpose(0, 2, 1)).sum(axis=0)
    dw = cp.ascontiguousarray(dwk.reshape(kh, kw, m, c).transpose(2, 3, 0, 1))
    return cp.ascontiguousarray(dx), dw
