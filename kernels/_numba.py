"""Numba set-up shared by every Numba kernel: the threading layer, and small index helpers.

Every module in `kernels/` that compiles a Numba kernel imports this module *first*, so the
threading layer is chosen in exactly one place, before any parallel kernel is compiled or run.

Why a threading layer at all
----------------------------
Numba runs `prange` loops on a thread pool (its "threading layer"). The default choice
("default": tbb, else omp, else workqueue) can end up on `workqueue`, which is not
thread-safe: if two Python threads launch parallel kernels at the same time (Hogwild SGD,
the thread-pool data loader, a training thread next to an evaluation thread) the process
aborts with "Terminating: Nested parallel kernel launch detected, the workqueue threading
layer does not supported concurrent access". We therefore ask for "threadsafe", i.e. tbb
(Intel TBB, `pip install tbb`) or omp (GNU OpenMP, libgomp, which ships with gcc).

Measured on the project machines (Linux, numba 0.68, pip package `tbb` 2023.2): "threadsafe"
loads **tbb**; with NUMBA_THREADING_LAYER=omp the libgomp layer works too. Call
`kernels._numba.threading_layer()` to see which one a process really uses.

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
from numba import njit

__all__ = ["njit", "prange", "uintp", "threading_layer", "valid_range", "SELECTED_LAYER"]

from numba import prange, uintp  # noqa: E402  (re-exported for the kernel modules)


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
            "parallel kernels at once. `pip install tbb` to fix.",
            RuntimeWarning,
            stacklevel=2,
        )
    return numba.config.THREADING_LAYER


SELECTED_LAYER = _select_threading_layer()


@njit(parallel=True, cache=True)
def _touch(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


def threading_layer():
    """Name of the threading layer Numba really loaded ("tbb", "omp" or "workqueue").

    Numba loads the layer on the first parallel launch, so this runs a tiny one first.
    """
    _touch(np.zeros(4))
    return numba.threading_layer()


@njit(cache=True)
def valid_range(k, pad, stride, in_size, out_size):
    """Outputs o in [lo, hi) whose input index  i = o*stride + k - pad  lies in [0, in_size).

    This is how the Numba kernels handle zero padding by index arithmetic, without making
    a padded copy of the input: outside [lo, hi) the tap reads a zero.
    """
    # o*stride >= pad - k       ->  o >= ceil((pad - k) / stride)
    # o*stride <= in_size-1+pad-k ->  o <= floor((in_size - 1 + pad - k) / stride)
    lo = -((k - pad) // stride)  # ceil((pad - k) / stride), exact for negative numerators
    if lo < 0:
        lo = 0
    hi = (in_size - 1 + pad - k) // stride + 1
    if hi > out_size:
        hi = out_size
    if hi < lo:
        hi = lo
    return lo, hi
