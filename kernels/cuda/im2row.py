"""im2row on the GPU: the transposed patch matrix for the whole batch, one cuBLAS GEMM.

    x (N, C, H, W) --im2row--> row (N*Ho*Wo, C*KH*KW)           [kernel im2row, im2row.cu]
    Y = row @ w^T          (N*Ho*Wo, M), channel-last -> transposed to (N, M, Ho, Wo)

Backward (row is rebuilt from x):
    dY   = dy as (N*Ho*Wo, M)
    dw   = dY^T @ row                      (M, C*KH*KW)
    drow = dY @ w                          (N*Ho*Wo, C*KH*KW) --row2im--> dx (gather)

Workspace (forward, bytes allocated besides x, w and y): the batch-wide row matrix, same
count as im2col in the transposed layout (each output pixel's receptive field is one
contiguous row), and the channel-last GEMM output unless it already is NCHW:
    itemsize * (N*Ho*Wo * C*KH*KW + N*Ho*Wo*M [if M > 1 and Ho*Wo > 1])
"""
from . import _runtime as rt


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = rt.conv_geometry(
        x_shape, w_shape, stride, padding)
    q = n * ho * wo
    return itemsize * (q * c * kh * kw + (q * m if m > 1 and ho * wo > 1 else 0))


def _im2row(cp, x, g):
    n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    row = cp.empty((n * ho * wo, c * kh * kw), dtype=x.dtype)
    rt.launch("im2row", "im2row", x.dtype, row.size, (x.size, row.size), (x, row) + g)
    return row


def forward(x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    row = _im2row(cp, x, g)
    Y = cp.matmul(row, w.reshape(m, c * kh * kw).T)                # (N*Ho*Wo, M)
    return cp.ascontiguousarray(Y.reshape(n, ho, wo, m).transpose(0, 3, 1, 2))


def backward(dy, x, w, stride, padding):
    cp = rt.get_cupy()
    g = rt.conv_geometry(x.shape, w.shape, stride, padding)
    n, c, h, wd, m, kh, kw, sh, sw, ph, pw, ho, wo = g
    row = _im2row(cp, x, g)
    dY = cp.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(n * ho * wo, m)
    dw = cp.matmul(dY.T, row).reshape(w.shape)
    del row
    drow = cp.ascontiguousarray(cp.matmul(dY, w.reshape(m, c * kh * kw)))
    dx = cp.empty(x.shape, dtype=x.dtype)
    rt.launch("im2row", "row2im", x.dtype, dx.size, (dx.size, drow.size), (drow, dx) + g)
    return dx, dw
