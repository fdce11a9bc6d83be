"""kn2col on the GPU: kn2row with the GEMM transposed, partial maps pixel-major.

    w (M, C, KH, KW) -> Wc (C, KH*KW*M)       column k*M + m holds w[m, :, kh, kw]
    P = x[n]^T @ Wc   (H*W, KH*KW*M) per image, batched: P (N, H*W, KH*KW*M)
    y[n, m, oh, ow] = sum_k P[n, (oh*sh-ph+kh)*W + ow*sw-pw+kw, k*M + m]
                                             [kernel kn2col_shift_add, kn2col.cu]

Backward:
    dP  = shift_gather(dy)  (N, H*W, KH*KW*M)              [kn2col_shift_gather]
    dx  = Wc @ dP[n]^T      (C, H*W) per image
    dWc = sum_n x[n] @ dP[n]                  (C, KH*KW*M) -> dw

Workspace (forward, bytes allocated besides x, w and y): the partial maps, as many as
kn2row's in the transposed layout (each input pixel's K^2*M partial products are
contiguous), and the reordered weights:
    itemsize * (N * H*W * KH*KW*M + C*KH*KW*M [if M > 1])
"""
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = rt.conv_geometry(
        x_shape, w_shape, stride, padding)
    return itemsize * (n * h * w * kh * kw * m + (c * kh * kw * m if m > 1 else 0))


def _wc(cp, w):
    m, c, kh, kw = w.shape
    return cp.ascontiguousarray(w.transpose(1, 2, 3, 0)).reshape(c, kh * kw * m)


def forward(x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    xt = x.reshape(n, c, h * wd).transpose(0, 2, 1)             # (N, H*W, C) view
    P = cp.ascontiguousarray(cp.matmul(xt, _wc(cp, w)))         # (N, H*W, K^2*M)
    y = cp.empty((n, m, ho, wo), dtype=x.dtype)
    rt.launch("kn2col", "kn2col_shift_add", x.dtype, y.size, (y.size, P.size), (P, y) + g)
    return y


def backward(dy, x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    dy = cp.ascontiguousarray(dy)
    dP = cp.empty((n, h * wd, kh * kw * m), dtype=x.dtype)
    rt.launch("kn2col", "kn2col_shift_gather", x.dtype, dP.size, (dP.size, dy.size),
              (dy, dP) + g)
    dx = cp.matmul(_wc(cp, w), dP.transpose(0, 2, 1)).reshape(x.shape)
    dwc = cp.matmul(x.reshape(n, c, h * wd), dP).sum(axis=0)    # (C, K^2*M)
    dw = cp.ascontiguousarray(dwc.reshape(c, kh, kw, m).transpose(3, 0, 1, 2))
    return cp.ascontiguousarray(dx), dw
