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

The wait policy, and why omp runs PASSIVE. A thread pool's workers, between two parallel
loops, either spin (poll for the next loop: lowest latency, but they burn their core) or
sleep (PASSIVE: a futex wake-up, a few microseconds, per loop). On an idle machine the two
are equal for our kernels, whose loops last milliseconds. Beside a busy process they are
not: spinning workers take time from the competitor and from each other. Measured with
`bench/contention.py` (MNIST conv2 forward+backward, 2 cores, one busy process pinned to
one of them; two runs each, ms alone -> beside, slowdown):
    omp, active wait (libgomp's default)   im2col  9.8 -> 24.0, 8.4 -> 21.0   2.45x, 2.50x
    omp, OMP_WAIT_POLICY=passive           im2col  8.5 -> 16.7, 8.3 -> 16.5   1.96x, 2.00x
    tbb (its own policy)                   im2col 10.2 -> 19.0, 9.9 -> 16.8   1.86x, 1.70x
Losing one core of two, perfectly shared, is 2.0x: passive omp and tbb reach it, spinning
omp does not, and passive costs nothing alone. So where the layer is omp and the user set
no OMP_WAIT_POLICY, we set PASSIVE before libgomp loads. Caveats: libgomp reads it once, at
load, so a process that imported torch first keeps whatever torch's libgomp started with
(torch wheels ship a libgomp.so.1 of their own; whichever loads first serves both); and in
one process with minigrad, torch's OpenMP loops run passive too (they measured 9.1 -> 17.8
ms against 9.1 -> 21.8 active, alone unchanged). tbb needs nothing: its workers spin only
briefly, then sleep.

Rules:
- if the user set NUMBA_THREADING_LAYER in the environment (or already changed
  numba.config.THREADING_LAYER before importing kernels), we leave it alone;
- otherwise we select "threadsafe" when tbb or omp can be loaded here (omp with
  OMP_WAIT_POLICY=PASSIVE unless set), and fall back to Numba's "default" with a warning
  when neither can (kernels still work, but must not be called from several threads at
  once).
We never set the number of threads: Numba uses all cores it is given (NUMBA_NUM_THREADS),
and minigrad/threads.py divides them between workers and ranks.

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


def _tbb_loadable():
    """True when Numba can load its tbb layer in this process (probed without launching)."""
    try:  # numba checks the TBB runtime version, then imports its tbb pool
        from numba.np.ufunc import parallel as _parallel

        _parallel._check_tbb_version_compatible()
        from numba.np.ufunc import tbbpool  # noqa: F401

        return True
    except Exception:  # ImportError, OSError, or a numba internal that moved
        return False


def _omp_loadable():
    """True when Numba can load its omp layer (this loads the OpenMP runtime, libgomp)."""
    try:
        from numba.np.ufunc import omppool  # noqa: F401

        return True
    except Exception:
        return False


# OpenMP's wait policy when the layer is omp and the user chose none (see the module doc).
OMP_WAIT_POLICY = "PASSIVE"


def _select_threading_layer():
    if "NUMBA_THREADING_LAYER" in os.environ:
        return numba.config.THREADING_LAYER  # the user's explicit choice
    if numba.config.THREADING_LAYER != "default":
        return numba.config.THREADING_LAYER  # set programmatically before us
    if _tbb_loadable():
        numba.config.THREADING_LAYER = "threadsafe"  # tbb
        return numba.config.THREADING_LAYER
    # libgomp reads its environment once, when it is loaded: set the policy before that
    # (a no-op if something, e.g. torch, loaded it earlier; then its setting stands)
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    if _omp_loadable():
        numba.config.THREADING_LAYER = "threadsafe"  # omp
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
