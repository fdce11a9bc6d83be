"""Lazy CuPy, cached kernel modules, and the one function every launcher uses to launch.

CuPy is imported on first use only, so ``import kernels`` works on machines without CUDA;
a clear RuntimeError says why the cupy backend is unavailable. Tests replace
``get_cupy`` with ``kernels.cuda.emulate.FakeCupy`` to run the launchers and the very same
.cu sources on the CPU.
"""
from pathlib import Path

from .._common import out_size, pair
from . import launch as _launch

CUDA_DIR = Path(__file__).resolve().parent
NVRTC_OPTIONS = ("--std=c++14",)       # the sources are self-contained: no includes

_cupy = None
_modules = {}                          # (id(cupy module), file stem) -> RawModule


def get_cupy():
    """The cupy module, or a RuntimeError saying why the cupy backend cannot run here."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except Exception as e:             # ImportError, or CUDA libraries missing/broken
        raise RuntimeError(
            f"cupy backend needs CuPy and a CUDA GPU: cannot import cupy ({e})") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:             # no driver, no device
        raise RuntimeError(f"cupy backend needs CuPy and a CUDA GPU: {e}") from e
    if n < 1:
        raise RuntimeError("cupy backend needs CuPy and a CUDA GPU: no CUDA device found")
    _cupy = cupy
    return cupy


def cupy_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        get_cupy()
    except RuntimeError:
        return False
    return True


def source(stem):
    """The CUDA C text of kernels/cuda/<stem>.cu."""
    return (CUDA_DIR / f"{stem}.cu").read_text()


def load_module(stem):
    """cupy.RawModule for <stem>.cu, compiled once (NVRTC) and cached per process."""
    cp = get_cupy()
    key = (id(cp), stem)
    mod = _modules.get(key)
    if mod is None:
        mod = cp.RawModule(code=source(stem), options=NVRTC_OPTIONS)
        _modules[key] = mod
    return mod


def launch(stem, base, dtype, n_threads, extents, args):
    """Launch ``<base>_<f32|f64>_<i32|i64>`` from <stem>.cu over ``n_threads`` items.

    ``extents`` are the element counts of the arrays the kernel indexes (they decide
    32- vs 64-bit index math); ``args`` are arrays and ints in the kernel's C order.
    """
    name, grid, block = _launch.plan(base, dtype, n_threads, extents)
    if grid == 0:
        return
    fn = load_module(stem).get_function(name)
    fn((grid,), (block,), _launch.pack_args(args))


def conv_geometry(x_shape, w_shape, stride, padding):
    """The 13 ints (N, C, H, W, M, KH, KW, sh, sw, ph, pw, Ho, Wo) that every convolution
    kernel receives, in GEOMETRY_PARAMS order."""
    n, c, h, w = (int(v) for v in x_shape)
    m, _, kh, kw = (int(v) for v in w_shape)
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    ho, wo = out_size(h, w, kh, kw, (sh, sw), (ph, pw))
    return (n, c, h, w, m, kh, kw, sh, sw, ph, pw, ho, wo)
