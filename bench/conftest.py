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
