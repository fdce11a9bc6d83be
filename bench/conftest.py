"""Shared benchmark fixtures: the machine's own yardstick, measured once per session."""
import time

import numpy as np
import pytest


@pytest.fixture(scope="session")
def sgemm_gflops():
    """float32 GEMM throughput of NumPy's BLAS here (2048^3, best of 3), in GFLOP/s.

    Reported in every benchmark's extra_info so a GEMM-bound kernel's GFLOP/s can be read
    as a fraction of what this machine's BLAS can do at all.
    """
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a  # warm up BLAS threads
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


@pytest.fixture(scope="session", autouse=True)
def steady_allocator():
    """The allocator settings minigrad's training loop uses, for every engine in the session.

    Once PyTorch has run in a process, glibc returns freed blocks to the kernel and every
    large temporary page-faults back in (thousands of faults per MNIST step, for PyTorch and
    minigrad alike); see minigrad/allocator.py. Applying the same settings for the whole
    session keeps the comparison about the engines, not about who ran first.
    """
    from minigrad.allocator import retain_freed_memory

    retain_freed_memory()
