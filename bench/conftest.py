"""Shared benchmark fixtures and what a results file records about the machine.

`pytest_benchmark_update_machine_info` adds a "minigrad" section to pytest-benchmark's
machine_info (the JSON's "machine_info", shown by `pytest-benchmark compare` when two runs
differ): library versions, the threads each pool may use, which GEMM and BLAS kernels ran,
the CPU model and whether it has AVX-512, and the git commit with a dirty-tree flag. A
timing means little without them: the same code is 2x apart on two BLAS kernel choices.
"""
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import common

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

# Benchmarks never download: point the MNIST loader at the shared copy unless told otherwise
# (as tests/conftest.py does).
if "MINIGRAD_DATA" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["MINIGRAD_DATA"] = str(SHARED_MNIST)


@pytest.fixture(scope="session")
def sgemm_gflops():
    """float32 GEMM throughput of NumPy's BLAS here (2048^3, best of 3), in GFLOP/s.

    Recorded in the conv benchmarks' extra_info as a yardstick measured in the same run: a
    GEMM-bound kernel's GFLOP/s read against what NumPy's BLAS reaches on this machine. It is
    not a ceiling: minigrad's own GEMM (kernels/gemm/) may beat it, and OpenBLAS may be
    pinned to older kernels (machine_info.minigrad.blas says which).
    """
    return common.sgemm_gflops(2048)


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


# --------------------------------------------------------------------------- machine_info


def _git(*args):
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_state():
    """{"commit": full id or None, "dirty": True if tracked files differ from the commit}.

    Untracked files do not count (as for `git describe --dirty`, which pytest-benchmark's
    commit_info uses): a results file dropped into the tree does not make it dirty.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _kernels_info():
    """(gemm, blas, threading layer) from minigrad.kernels' public helpers, falling back to
    the modules `minigrad info` reads where an older checkout lacks them."""
    from minigrad import kernels

    if all(hasattr(kernels, f) for f in ("gemm_info", "blas_info", "threading_layer")):
        return kernels.gemm_info(), kernels.blas_info(), kernels.threading_layer()
    from minigrad.kernels import _blas, _numba, gemm  # older checkouts: cli.cmd_info's way

    where = "kernels.gemm (Numba)" if gemm.uses_numba(np.float32) else "NumPy's BLAS"
    return ({"mode": gemm.MODE, "avx512": gemm.HAS_AVX512, "float32": where},
            _blas.blas_info(), _numba.threading_layer())


def _blas_libraries(blas):
    """[{library, version, kernel, threads, numpy}] from kernels.blas_info(); "numpy" marks
    the library NumPy itself links (PyTorch may load a second OpenBLAS into the process), the
    one whose sgemm the conv benchmarks record as sgemm_gflops."""
    try:
        from threadpoolctl import threadpool_info

        paths = {(i.get("internal_api"), i.get("version")): i.get("filepath") or ""
                 for i in threadpool_info() if i.get("user_api") == "blas"}
    except Exception:
        paths = {}
    return [{"library": lib, "version": ver, "kernel": arch, "threads": threads,
             "numpy": "numpy" in paths.get((lib, ver), "")}
            for lib, ver, arch, threads in blas]


def minigrad_machine_info(cpu=None):
    """The "minigrad" section of machine_info (a JSON-ready dict); `cpu` is py-cpuinfo's
    dict as pytest-benchmark stored it (looked up here when not given)."""
    import numba

    import minigrad

    if cpu is None:
        try:
            import cpuinfo

            cpu = cpuinfo.get_cpu_info()
        except Exception:  # py-cpuinfo is a pytest-benchmark dependency; be safe anyway
            cpu = {}
    flags = set(cpu.get("flags") or ())
    try:
        import torch

        torch_version, torch_threads = torch.__version__, torch.get_num_threads()
    except ImportError:
        torch_version = torch_threads = None
    gemm, blas, layer = _kernels_info()
    return {
        "minigrad": minigrad.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch_version,
        "torch_threads": torch_threads,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "blas": _blas_libraries(blas),
        "gemm": gemm,
        "minigrad_gemm_env": os.environ.get("MINIGRAD_GEMM"),
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
        "cpu_model": str(cpu.get("brand_raw") or platform.processor() or "unknown"),
        "cpu_count": cpu.get("count") or os.cpu_count(),
        "avx512": "avx512f" in flags if flags else None,
        "git": git_state(),
    }


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["minigrad"] = minigrad_machine_info(machine_info.get("cpu"))
