"""Run the CUDA kernels of this package on the CPU, to test their index math without a GPU.

Two pieces:

* ``build(code)`` compiles a .cu source as plain C++ with g++, force-including
  ``emulate.h`` (which turns ``__global__``/``__device__`` into nothing and ``blockIdx`` &
  co. into variables), into a shared library; the ``extern "C"`` kernels become ordinary
  functions callable through ctypes.
* ``FakeCupy`` is a numpy stand-in for the few CuPy names the launchers use (``empty``,
  ``matmul``, ``ascontiguousarray``, ``RawModule``...). Its ``RawModule`` builds the code
  with ``build`` and its kernels launch like a GPU would, minus concurrency: for every block
  b < grid and thread t < block (in order, reversed, or shuffled) it sets
  blockIdx.x = b, threadIdx.x = t and calls the kernel.

Put a ``FakeCupy`` where ``kernels.cuda._runtime.get_cupy`` is and the real launchers run
end to end on the CPU. To catch index bugs rather than hide them, the stand-in

* fills every fresh ``empty`` array with NaN ("poison"; int64: a sentinel), so an output
  element a kernel forgets to write shows up;
* surrounds every array it allocates with guard cells and checks after each launch that no
  guard was written (an out-of-bounds write), while an out-of-bounds read picks up a NaN
  guard and poisons the result;
* refuses arguments a raw kernel would misread: non-contiguous arrays, arrays of the wrong
  float type for the kernel's _f32/_f64 name, Python ints (not packed to int64), and
  arrays too large for an _i32 kernel.

What it cannot show: races and barrier bugs (there are no cooperative kernels here, and
emulate.h leaves __shared__/__syncthreads/atomics undefined so none can sneak in),
NVRTC-specific compile problems (the compile test runs nvcc for that), float rounding
differences of the GPU (fused multiply-add), and performance.
"""
import ctypes
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np

from . import launch as _launch

EMULATE_H = Path(__file__).resolve().with_name("emulate.h")
CXXFLAGS = ("-std=c++14", "-O1", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
            "-shared", "-fPIC")
GUARD = 64                      # guard cells on each side of every array

_libs = {}                      # .so path -> ctypes.CDLL
_default_dir = None


def find_cxx():
    """The C++ compiler to use: $CXX, else g++, c++ or clang++ on PATH (None if none)."""
    return os.environ.get("CXX") or next(
        (p for p in map(shutil.which, ("g++", "c++", "clang++")) if p), None)


def build(code, workdir=None, cxx=None):
    """Compile CUDA C ``code`` as host C++ under emulate.h; returns the loaded ctypes.CDLL.

    Libraries are cached by a hash of (code, emulate.h, flags) in ``workdir`` (a fresh
    temporary directory by default).
    """
    global _default_dir
    cxx = cxx or find_cxx()
    if cxx is None:
        raise RuntimeError("CUDA emulation needs a C++ compiler (g++, c++ or clang++)")
    if workdir is None:
        if _default_dir is None:
            _default_dir = tempfile.mkdtemp(prefix="minigrad-cuda-emu-")
        workdir = _default_dir
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        code.encode() + EMULATE_H.read_bytes() + " ".join((cxx,) + CXXFLAGS).encode()
    ).hexdigest()[:20]
    so = workdir / f"emu_{key}.so"
    if not so.exists():
        src = workdir / f"emu_{key}.cu"
        src.write_text(code)
        tmp = workdir / f"emu_{key}.{os.getpid()}.so"
        cmd = [cxx, *CXXFLAGS, "-include", str(EMULATE_H), "-x", "c++", str(src), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"emulation build failed: {' '.join(cmd)}\n{r.stderr}")
        os.replace(tmp, so)
    lib = _libs.get(str(so))
    if lib is None:
        lib = ctypes.CDLL(str(so))
        lib.emu_set_thread.argtypes = [ctypes.c_uint] * 4
        lib.emu_set_thread.restype = None
        _libs[str(so)] = lib
    return lib


def _poison(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return np.iinfo(dtype).max - 12345       # an index no kernel would produce
    raise TypeError(f"CUDA emulation: unsupported dtype {dtype}")


def _one_d(v, what):
    t = (int(v),) if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)
    if not t or any(a != 1 for a in t[1:]):
        raise ValueError(f"emulated launch: {what} must be 1-D, got {v!r}")
    return t[0]


class EmulatedKernel:
    """One ``extern "C"`` kernel of an emulated module, launched like cupy.RawKernel."""

    def __init__(self, fake, lib, name):
        self.fake, self.lib, self.name = fake, lib, name
        try:
            self.fn = getattr(lib, name)
        except AttributeError:
            raise AttributeError(f"emulated module has no kernel {name!r}") from None
        self.fn.restype = None

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = _one_d(grid, "grid"), _one_d(block, "block")
        if not 1 <= block <= _launch.MAX_BLOCK:
            raise ValueError(f"{self.name}: block {block} outside [1, {_launch.MAX_BLOCK}]")
        if not 1 <= grid <= 2**31 - 1:
            raise ValueError(f"{self.name}: grid {grid} outside [1, 2^31-1]")
        if shared_mem:
            raise ValueError(f"{self.name}: dynamic shared memory is not emulated")
        want_float = {"_f32_": np.float32, "_f64_": np.float64}
        want = next((np.dtype(t) for s, t in want_float.items() if s in self.name), None)
        narrow = self.name.endswith("_i32")
        types, values = [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous")
                if a.dtype.kind == "f" and want is not None and a.dtype != want:
                    raise TypeError(f"{self.name}: argument {i} is {a.dtype}, kernel wants {want}")
                if narrow and a.size + grid * block > _launch.INT32_LIMIT:
                    raise ValueError(f"{self.name}: argument {i} too large for 32-bit indices")
                self.fake.check_guarded(a, f"{self.name} argument {i}")
                types.append(ctypes.c_void_p)
                values.append(a.ctypes.data)
            elif isinstance(a, np.int64):
                types.append(ctypes.c_longlong)
                values.append(int(a))
            elif isinstance(a, np.int32):
                types.append(ctypes.c_int)
                values.append(int(a))
            else:
                raise TypeError(f"{self.name}: argument {i} has type {type(a).__name__}; "
                                "pass arrays or numpy int64/int32 scalars (see launch.pack_args)")
        self.fn.argtypes = types
        self.fake.launches.append((self.name, grid, block))
        order = [(b, t) for b in range(grid) for t in range(block)]
        if self.fake.order == "reverse":
            order.reverse()
        elif self.fake.order == "shuffle":
            self.fake.rng.shuffle(order)
        set_thread, fn = self.lib.emu_set_thread, self.fn
        for b, t in order:
            set_thread(grid, block, b, t)
            fn(*values)
        self.fake.check_guards(self.name)


class EmulatedModule:
    """Stand-in for cupy.RawModule(code=..., options=...)."""

    def __init__(self, fake, code, options=()):
        self.fake, self.options = fake, tuple(options)
        self.lib = build(code, fake.workdir)

    def get_function(self, name):
        return EmulatedKernel(self.fake, self.lib, name)


class FakeCupy:
    """The part of the CuPy API the launchers use, on numpy arrays, with emulated kernels.

    ``order`` is the sequence in which (block, thread) pairs run: "forward", "reverse" or
    "shuffle" (a deterministic shuffle from ``seed``). Independent threads give bitwise
    identical results in every order.
    """

    float32, float64, int64, int32 = np.float32, np.float64, np.int64, np.int32
    ndarray = np.ndarray

    def __init__(self, workdir=None, order="forward", seed=0):
        if order not in ("forward", "reverse", "shuffle"):
            raise ValueError(f"order must be forward, reverse or shuffle, got {order!r}")
        self.workdir, self.order, self.rng = workdir, order, random.Random(seed)
        self.launches = []                       # (kernel name, grid, block), in call order
        self.allocated_bytes = 0                 # everything allocated through this object
        self._guarded = weakref.WeakValueDictionary()   # id(base) -> base (guarded buffer)
        self._guard_bytes = {}                   # id(base) -> (n elements, guard pattern)

    # --- allocation -------------------------------------------------------------------
    def _alloc(self, shape, dtype, fill):
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(
            int(s) for s in shape)
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        self.allocated_bytes += n * dtype.itemsize
        base = np.empty(n + 2 * GUARD, dtype=dtype)
        base[:GUARD] = _poison(dtype)
        base[GUARD + n:] = _poison(dtype)
        base[GUARD:GUARD + n] = fill
        key = id(base)
        self._guarded[key] = base
        self._guard_bytes[key] = (n, base[:GUARD].tobytes())
        weakref.finalize(base, self._guard_bytes.pop, key, None)
        return base[GUARD:GUARD + n].reshape(shape)

    def empty(self, shape, dtype=np.float32):
        return self._alloc(shape, dtype, _poison(dtype))

    def zeros(self, shape, dtype=np.float32):
        return self._alloc(shape, dtype, 0)

    def asarray(self, a, dtype=None):
        a = np.asarray(a, dtype=dtype)
        out = self._alloc(a.shape, a.dtype, 0)
        out[...] = a
        return out

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, np.ndarray) and a.flags.c_contiguous and (
                dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return self.asarray(a, dtype)

    def matmul(self, a, b, out=None):
        if out is not None:
            return np.matmul(a, b, out=out)
        return self.asarray(np.matmul(a, b))

    def asnumpy(self, a):
        return np.array(a)

    def RawModule(self, code=None, options=(), **kw):   # CuPy's name, not PEP 8
        if code is None or kw:
            raise TypeError("emulated RawModule takes code= and options= only")
        return EmulatedModule(self, code, options)

    # --- checks -----------------------------------------------------------------------
    def check_guarded(self, a, what):
        base = a.base if a.base is not None else a
        if id(base) not in self._guarded or self._guarded[id(base)] is not base:
            raise ValueError(f"{what}: array was not allocated through the CuPy stand-in")

    def check_guards(self, name):
        for key, base in list(self._guarded.items()):
            n, pattern = self._guard_bytes[key]
            if (base[:GUARD].tobytes() != pattern
                    or base[GUARD + n:].tobytes() != pattern):
                raise AssertionError(f"{name}: wrote outside an array (guard cells changed)")
