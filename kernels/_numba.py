"""Numba set-up shared by every Numba kernel: the threading layer, and small index helpers.

Every module in `kernels/` that compiles a Numba kernel imports this module *first*, so the
threading layer is chosen in exactly one place, before any parallel kernel is compiled or run.

Why a threading layer at all
----------------------------
Numba runs `prange` loops on a thread pool (its "threading layer"). Several Python threads
launch parallel kernels at the same time in this project: Hogwild SGD's workers, the
thread-pool data loader's workers, a training thread next to an evaluation thread. Only the
tbb (Intel TBB) and omp (OpenMP) layers allow that; the third, `workqueue`, aborts the process
("Terminating: Nested parallel kernel launch detected, the workqueue threading layer does
not supported concurrent access"), and Numba's "default" choice falls back to it when
neither of the others loads. We therefore request "threadsafe": tbb if it loads, else omp.

What that gives: on a plain `pip install minigrad` on Linux (numba 0.68, no `tbb` package:
minigrad does not depend on it) Numba loads **omp**, through the system's GNU OpenMP runtime
libgomp.so.1 (part of gcc, present on common Linux systems). Where the optional `tbb` wheel is
installed (`pip install tbb`), "threadsafe" prefers **tbb**. Both are correct here; call
`kernels.threading_layer()` to see which one a process really uses.

Rules:
- if the user set NUMBA_THREADING_LAYER in the environment (or already changed
  numba.config.THREADING_LAYER before importing kernels), we leave it alone;
- otherwise we select "threadsafe" when tbb or omp can be loaded here, and fall back to
  Numba's "default" with a warning when neither can (kernels still work, but must not be
  called from several threads at once).
We never set the number of threads: Numba uses all cores it is given (NUMBA_NUM_THREADS).

Indexing: why the copy loops use flat views and `uintp(...)` offsets
---------------------------------------------------------------------
Numba gives a signed index Python's meaning (a[-1] is the last element), so every access
`a[i]` with a signed `i` carries a hidden `if i < 0: i += len` test. In a copy loop that
test keeps LLVM from vectorising and costs 2-3x: the im2col lowering of MNIST conv2 took
2.6 ms per core with `cols[r, dst + ow]` and 0.9 ms with `cf[uintp(dst + ow)]` on a
flattened `cf = cols.ravel()` (NumPy's strided copies: 1.1 ms). The lowering kernels
therefore compute a flat offset, cast it to unsigned `uintp` once per row, and add
unsigned loop offsets. Every such offset is provably in bounds (see valid_range).
"""
import os
import warnings

import numba
import numpy as np
from numba import njit, prange, uintp  # njit, prange, uintp: re-exported for the kernels

from . import _common

__all__ = ["njit", "prange", "uintp", "threading_layer", "valid_range", "SELECTED_LAYER"]


def _threadsafe_layer_loadable():
    """True when Numba can load tbb or omp in this process (probed without launching)."""
    try:  # tbb: numba checks the TBB runtime version, then imports its tbb pool
        from numba.np.ufunc import parallel as _parallel

        _parallel._check_tbb_version_compatible()
        from numba.np.ufunc import tbbpool  # noqa: F401

        return True
    except Exception:  # ImportError, OSError, or a numba internal that moved
        pass
    try:
        from numba.np.ufunc import omppool  # noqa: F401

        return True
    except Exception:
        return False


def _select_threading_layer():
    if "NUMBA_THREADING_LAYER" in os.environ:
        return numba.config.THREADING_LAYER  # the user's explicit choice
    if numba.config.THREADING_LAYER != "default":
        return numba.config.THREADING_LAYER  # set programmatically before us
    if _threadsafe_layer_loadable():
        numba.config.THREADING_LAYER = "threadsafe"
    else:
        warnings.warn(
            "kernels: neither the tbb nor the omp Numba threading layer can be loaded; "
            "using Numba's default layer, which aborts if several Python threads run "
            "parallel kernels at once. Install GNU OpenMP (libgomp) or `pip install tbb`.",
            RuntimeWarning,
            stacklevel=2,
        )
    return numba.config.THREADING_LAYER


SELECTED_LAYER = _select_threading_layer()


@njit(parallel=True, cache=True, nogil=True)
def _touch(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


def threading_layer() -> str:
    """Name of the threading layer Numba really loaded ("tbb", "omp" or "workqueue").

    Numba loads the layer on the first parallel launch, so this runs a tiny one first.
    """
    _touch(np.zeros(4))
    return numba.threading_layer()


# The Numba kernels handle zero padding with the same index arithmetic as the references:
# one definition (kernels/_common.py), compiled here for use inside @njit code.
# Caution: Numba's on-disk cache (cache=True) compiles valid_range *into* each kernel that
# calls it and checks only the kernel's own file for changes; after editing valid_range,
# touch the files of its callers (direct, im2col, im2row, kn2row, kn2col) or their cached
# machine code keeps the old version.
valid_range = njit(cache=True, nogil=True)(_common.valid_range)
