"""CUDA twins of every lowering: CUDA C kernels in ``*.cu``, thin CuPy launchers in ``*.py``.

    kernels/cuda/<algo>.cu   the kernels, templated on float/double and on the index type
                             (int, or long long past 2^31 elements), exported as
                             ``extern "C"`` names such as ``im2col_f32_i32``. Each file opens
                             with its thread-to-data mapping. Every sum with several
                             contributors (col2im, row2im, shift-add and its adjoint, direct
                             dx/dw, max-pool backward) is a gather -- one thread per output
                             element -- so there are no atomics and results are deterministic.
    kernels/cuda/<algo>.py   forward(x, w, stride, padding) -> y and
                             backward(dy, x, w, stride, padding) -> (dx, dw) for
                             direct, im2col, im2row, kn2row, kn2row_aa, kn2col and
                             winograd (no .cu file: CuPy array operations and one
                             batched cupy.matmul, see its header); pool has
                             forward(x, kernel, stride) -> (y, argmax) and
                             backward(dy, argmax, x_shape, kernel, stride) -> dx.
                             Lowering copies run in our kernels, GEMMs in cuBLAS (cupy.matmul).
    launch.py                grid/block, 32/64-bit index choice, kernel names, argument
                             packing: plain Python, tested without a GPU.
    _runtime.py              lazy CuPy import, RawModule cache (one per .cu file), launch().
    emulate.h / emulate.py   run the same .cu sources on the CPU (g++, one (block, thread)
                             at a time) behind a numpy stand-in for CuPy, so the index math
                             is tested in CI without a GPU.

CuPy is imported only when a kernel runs; without it (or without a GPU) the launchers raise
``RuntimeError("cupy backend needs CuPy and a CUDA GPU: ...")``.
"""
from . import direct, im2col, im2row, kn2col, kn2row, kn2row_aa, launch, pool, winograd
from ._runtime import cupy_available, get_cupy

CONV_MODULES = ("direct", "im2col", "im2row", "kn2row", "kn2row_aa", "kn2col", "winograd")
CU_FILES = ("direct", "im2col", "im2row", "kn2row", "kn2col", "pool")

__all__ = ["CONV_MODULES", "CU_FILES", "cupy_available", "get_cupy", "launch",
           "direct", "im2col", "im2row", "kn2row", "kn2row_aa", "kn2col", "winograd", "pool"]
