"""Packing: copy a block of A or B into the order the micro-kernel reads, once per block.

    packed A block  (MC x KC)  panels of MR rows, k-major:  apack[p, k, i] = A[ic+p*MR+i, pc+k]
    packed B block  (KC x NC)  panels of NR cols, k-major:  bpack[q, k, j] = B[pc+k, jc+q*NR+j]

so the micro-kernel reads both operands contiguously whatever the strides of A and B (a
transposed view such as `cols.T` costs nothing extra: packing reads it once). Edges are
zero-padded to whole panels. kernels/im2col_fused.py writes a patch matrix straight in the
packed-B order, and packs its weights with pack_a.

The operands arrive C-contiguous, each with a flag saying whether the logical operand is its
transpose (A = a.T when a_t). Flat views and unsigned offsets, as in every copy loop here
("Indexing" in kernels/_numba.py).
"""
from .._numba import njit, uintp


def panels(size, width):
    """`size` rounded up to whole panels of `width`: the length a packed, zero-padded
    operand needs (a packed A of M rows holds panels(M, MR) rows)."""
    return -(-size // width) * width


@njit(cache=True, nogil=True)
def pack_a(a, a_t, i0, mc, p0, kc, mr, apack):
    """apack[p, k, i] = A[i0 + p*MR + i, p0 + k], zero past the last row."""
    af = a.ravel()
    lda = a.shape[1]
    m = a.shape[1] if a_t else a.shape[0]
    for p in range((mc + mr - 1) // mr):
        base = uintp(p * kc * mr)
        rows = min(mr, mc - p * mr, m - i0 - p * mr)
        if a_t:  # A[i, k] = a[k, i]: row k of a holds the MR numbers side by side
            for k in range(kc):
                src = uintp((p0 + k) * lda + i0 + p * mr)
                dst = base + uintp(k * mr)
                for i in range(rows):
                    apack[dst + uintp(i)] = af[src + uintp(i)]
                for i in range(rows, mr):
                    apack[dst + uintp(i)] = 0
        else:  # A[i, k] = a[i, k]: MR rows read side by side, interleaved into apack
            for i in range(rows):
                src = uintp((i0 + p * mr + i) * lda + p0)
                for k in range(kc):
                    apack[base + uintp(k * mr + i)] = af[src + uintp(k)]
            for i in range(rows, mr):
                for k in range(kc):
                    apack[base + uintp(k * mr + i)] = 0


@njit(cache=True, nogil=True)
def pack_b(b, b_t, p0, kc, j0, nc, nr, bpack):
    """bpack[q, k, j] = B[p0 + k, j0 + q*NR + j], zero past the last column."""
    bf = b.ravel()
    ldb = b.shape[1]
    for q in range((nc + nr - 1) // nr):
        base = uintp(q * kc * nr)
        width = min(nr, nc - q * nr)
        if b_t:  # B[k, j] = b[j, k]: each of the NR rows of b is read along k
            for j in range(width):
                src = uintp((j0 + q * nr + j) * ldb + p0)
                for k in range(kc):
                    bpack[base + uintp(k * nr + j)] = bf[src + uintp(k)]
            for j in range(width, nr):
                for k in range(kc):
                    bpack[base + uintp(k * nr + j)] = 0
        else:  # B[k, j] = b[k, j]: a contiguous run of NR numbers per k
            for k in range(kc):
                src = uintp((p0 + k) * ldb + j0 + q * nr)
                dst = base + uintp(k * nr)
                for j in range(width):
                    bpack[dst + uintp(j)] = bf[src + uintp(j)]
                for j in range(width, nr):
                    bpack[dst + uintp(j)] = 0
