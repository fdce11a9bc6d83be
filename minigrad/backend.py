"""One array-module pattern for CPU and GPU (as Chainer's `backend.get_array_module`).

Elementwise code is written once against `xp`, which is `numpy` for host arrays and `cupy`
for device arrays. CuPy is optional and imported only when a device array or
`device="cuda"` first appears, so a CPU-only install never needs it.
"""
import numpy as np

_cupy = None
_cupy_error = None


def cupy_or_none():
    """The cupy module if it can be imported, else None (the import is tried once)."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy

            _cupy = cupy
        except Exception as e:  # ImportError, or a CUDA driver error at import
            _cupy_error = e
    return _cupy


def gpu_available():
    """(ok, reason): whether CuPy imports and sees at least one CUDA device."""
    cp = cupy_or_none()
    if cp is None:
        return False, f"CuPy is not importable ({_cupy_error})"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"CuPy cannot reach a CUDA device ({e})"
    if n < 1:
        return False, "CuPy found no CUDA device"
    return True, f"{n} CUDA device(s)"


def require_cupy():
    ok, why = gpu_available()
    if not ok:
        raise RuntimeError(f"device 'cuda' needs CuPy and a CUDA GPU: {why}. "
                           "Install the extra with `pip install -e .[cuda]` on a GPU machine.")
    return _cupy


def get_array_module(a):
    """numpy for host arrays (and Python scalars), cupy for device arrays."""
    if type(a) is np.ndarray or _cupy is None:
        return np
    return _cupy.get_array_module(a)


def device_of(a):
    """'cpu' or 'cuda' for an array."""
    return "cpu" if get_array_module(a) is np else "cuda"


def normalize_device(device):
    d = str(device).lower()
    if d.startswith("cuda") or d == "gpu":
        return "cuda"
    if d == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def to_device(a, device):
    """Copy an array to 'cpu' or 'cuda' (no copy when it is already there)."""
    device = normalize_device(device)
    if device == "cpu":
        if get_array_module(a) is np:
            return a
        return a.get()
    cp = require_cupy()
    return cp.asarray(a)
