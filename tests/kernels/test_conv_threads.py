"""Numba kernels run from several Python threads at once (Hogwild, the data loader)."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from minigrad.kernels import _numba

from minigrad import kernels


def test_threading_layer_is_threadsafe():
    layer = _numba.threading_layer()
    if "NUMBA_THREADING_LAYER" not in os.environ:
        assert layer in ("tbb", "omp"), f"Numba loaded the {layer!r} threading layer"


# A process where tbb cannot load (as after a plain `pip install`, which pulls no tbb):
# kernels falls back to omp and, unless told otherwise, makes OpenMP's workers sleep rather
# than spin between loops (kernels/_numba.py says why, with the measurements).
NO_TBB = """
import os, sys
from numba.np.ufunc import parallel
def no_tbb():
    raise ImportError("tbb hidden by the test")
parallel._check_tbb_version_compatible = no_tbb
from minigrad import kernels
print(kernels.threading_layer(), os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("given,want", [(None, "PASSIVE"), ("active", "active")])
def test_omp_layer_waits_passively_unless_told(given, want):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", NO_TBB], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    layer, policy = out.stdout.split()
    if layer != "omp":
        pytest.skip(f"no OpenMP runtime here (layer {layer})")
    assert policy == want


def test_concurrent_calls_from_python_threads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    dy = np.ones((4, 5, 10, 10), np.float32)
    want = kernels.conv2d_forward(x, w, 1, 1, algo="direct", backend="numba")
    want_dx, want_dw = kernels.conv2d_backward(dy, x, w, 1, 1, algo="im2col", backend="numba")
    errors = []

    def work():
        try:
            for _ in range(20):
                for algo in ("direct", "im2col", "im2row"):
                    y = kernels.conv2d_forward(x, w, 1, 1, algo=algo, backend="numba")
                    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
                dx, dw = kernels.conv2d_backward(dy, x, w, 1, 1, algo="im2col", backend="numba")
                np.testing.assert_array_equal(dx, want_dx)
                y, am = kernels.maxpool2d_forward(x, 2, backend="numba")
                kernels.maxpool2d_backward(y, am, x.shape, 2, backend="numba")
        except BaseException as e:  # noqa: B036 - report anything from the worker
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
