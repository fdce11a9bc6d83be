"""Which BLAS the GEMMs run on, and with which kernels.

Every lowering ends in GEMMs that go to NumPy's BLAS (OpenBLAS in the PyPI wheels), so the
GEMM kernels OpenBLAS picked decide most of a convolution's speed. OpenBLAS chooses them from
the CPU model when it loads, unless OPENBLAS_CORETYPE names them: on the project machines the
environment pins OPENBLAS_CORETYPE=Haswell (AVX2), which we leave as it is; on an AVX-512 CPU
`OPENBLAS_CORETYPE=SkylakeX` (set before Python starts) about doubles float32 GEMM speed.
`minigrad info` prints what is in effect.
"""


def blas_info() -> list[tuple[str | None, str | None, str | None, int | None]]:
    """[(library, version, kernel architecture, threads)] for the BLAS libraries loaded."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [(i.get("internal_api"), i.get("version"), i.get("architecture"),
             i.get("num_threads")) for i in threadpool_info() if i.get("user_api") == "blas"]
