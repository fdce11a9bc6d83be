"""The GEMM in plain Numba, one number at a time: read this first.

C (m x n) = A (m x k) @ B (k x n), with the five loops of GotoBLAS/BLIS, packing, and a
scalar MR x NR micro-kernel. Everything kernels/gemm/ does fast is here, slowly:
the vector micro-kernels (microkernel.py) do `micro_kernel`'s loop on registers, VL numbers
per instruction; macro.py adds edge kernels, row-table operands and threads.
"""
import numpy as np

from .._numba import njit
from .pack import pack_a, pack_b

MR, NR = 4, 4                  # the register tile of C
KC, MC, NC = 256, 64, 256      # cache blocks: depth, rows of A, columns of B


@njit(cache=True)
def micro_kernel(kc, apack, a_off, bpack, b_off, tile):
    """tile (MR x NR) = A panel @ B panel: apack[a_off + k*MR + i] = A[i, k],
    bpack[b_off + k*NR + j] = B[k, j]. The rank-1 update per k is what a vector kernel
    does with NR/VL loads of B, MR broadcasts of A and MR*NR/VL fused multiply-adds."""
    tile[:, :] = 0
    for k in range(kc):
        for i in range(MR):
            a_ik = apack[a_off + k * MR + i]
            for j in range(NR):
                tile[i, j] += a_ik * bpack[b_off + k * NR + j]


@njit(cache=True)
def gemm_reference(a, b):
    """a @ b for C-contiguous 2-D float arrays."""
    m, k = a.shape
    n = b.shape[1]
    c = np.zeros((m, n), dtype=a.dtype)
    apack = np.empty(-(-MC // MR) * MR * KC, dtype=a.dtype)
    bpack = np.empty(-(-NC // NR) * NR * KC, dtype=a.dtype)
    tile = np.empty((MR, NR), dtype=a.dtype)
    for jc in range(0, n, NC):                              # loop 5: columns of B and C
        nc = min(NC, n - jc)
        for pc in range(0, k, KC):                          # loop 4: depth, B block packed
            kc = min(KC, k - pc)
            pack_b(b, False, pc, kc, jc, nc, NR, bpack)
            for ic in range(0, m, MC):                      # loop 3: rows, A block packed
                mc = min(MC, m - ic)
                pack_a(a, False, ic, mc, pc, kc, MR, apack)
                for jr in range(0, nc, NR):                 # loop 2: an NR-wide B panel
                    for ir in range(0, mc, MR):             # loop 1: an MR-high A panel
                        micro_kernel(kc, apack, ir * kc, bpack, jr * kc, tile)
                        for i in range(min(MR, mc - ir)):   # edges: only the valid part
                            for j in range(min(NR, nc - jr)):
                                c[ic + ir + i, jc + jr + j] += tile[i, j]
    return c
