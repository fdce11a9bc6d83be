"""Launch configuration for the CUDA kernels, as plain CPU-side Python.

Nothing here touches CuPy or a GPU, so all of it is unit-tested on any machine
(tests/kernels/test_cuda_launch.py). The launchers in this package use it to turn
"I need n independent pieces of work on arrays this large" into a kernel launch:

* ``grid_block(n)``      -> (grid, block): 1-D launch for a grid-stride loop over n items.
* ``needs_int64(...)``   -> whether 32-bit index math could overflow.
* ``kernel_name(...)``   -> "im2col_f32_i32": the ``extern "C"`` instantiation to call.
* ``pack_args(...)``     -> arguments with explicit C types (pointers stay arrays,
                            Python ints become int64 to match ``long long`` parameters).

Every kernel in kernels/cuda/*.cu is written as a grid-stride loop

    for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)

so it is correct for *any* grid; the grid only decides how much parallelism we ask for.
We cap the grid at ``MAX_GRID`` blocks: beyond a few blocks per SM more blocks buy nothing,
and each thread just takes several items.
"""
import numpy as np

DEFAULT_BLOCK = 256          # 8 warps: a good default for memory-bound elementwise kernels
MAX_BLOCK = 1024             # hardware limit on threads per block
MAX_GRID = 65535             # portable cap on gridDim.x for a grid-stride loop
INT32_LIMIT = 2**31 - 1      # largest index a signed 32-bit int can hold

_DTYPE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def grid_block(n_threads, block=DEFAULT_BLOCK, max_grid=MAX_GRID):
    """1-D launch shape for a grid-stride loop over ``n_threads`` work items.

    Returns (grid, block) with grid = ceil(n / block) capped at ``max_grid``; (0, block)
    for n == 0, which callers take as "nothing to launch".
    """
    n = int(n_threads)
    block = int(block)
    max_grid = int(max_grid)
    if n < 0:
        raise ValueError(f"n_threads must be >= 0, got {n}")
    if not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block must be in [1, {MAX_BLOCK}], got {block}")
    if max_grid < 1:
        raise ValueError(f"max_grid must be >= 1, got {max_grid}")
    if n == 0:
        return 0, block
    return min(-(-n // block), max_grid), block


def needs_int64(*extents, grid=0, block=0, limit=None):
    """True when a kernel must do its index math in 64 bits.

    ``extents`` are the element counts the kernel indexes (loop length and the size of
    every array it touches). A grid-stride loop also computes ``i + gridDim.x*blockDim.x``
    one step past the end, so that must fit too. ``limit`` defaults to the module's
    ``INT32_LIMIT`` (looked up at call time, so tests can lower it to force the 64-bit path).
    """
    if limit is None:
        limit = INT32_LIMIT
    largest = max((int(e) for e in extents), default=0)
    return largest + int(grid) * int(block) > limit


def dtype_suffix(dtype):
    """float32 -> "f32", float64 -> "f64"; anything else is an error."""
    dt = np.dtype(dtype)
    try:
        return _DTYPE_SUFFIX[dt]
    except KeyError:
        raise TypeError(f"CUDA kernels take float32 or float64 arrays, got {dt}") from None


def kernel_name(base, dtype, int64):
    """Name of the ``extern "C"`` instantiation: base + _f32/_f64 + _i32/_i64."""
    return f"{base}_{dtype_suffix(dtype)}_{'i64' if int64 else 'i32'}"


def pack_args(args):
    """Give every scalar an explicit C type before it reaches a raw kernel.

    A raw kernel sees only bytes, so a Python int must arrive as exactly the type the C
    signature declares. All integer parameters in kernels/cuda/*.cu are ``long long``, so
    ints (and numpy integers) become ``numpy.int64``; arrays pass through untouched.
    Floats and bools are refused: no kernel here takes one.
    """
    packed = []
    for a in args:
        if isinstance(a, (bool, np.bool_)):
            raise TypeError("kernel arguments: pass flags as ints (0/1), not bool")
        if isinstance(a, (int, np.integer)):
            packed.append(np.int64(a))
        elif isinstance(a, (float, np.floating)):
            raise TypeError("kernel arguments: no kernel takes a floating-point scalar")
        else:
            packed.append(a)   # an array: the raw kernel receives its data pointer
    return tuple(packed)


def plan(base, dtype, n_threads, extents=(), block=DEFAULT_BLOCK, max_grid=MAX_GRID):
    """Everything needed for one launch: (kernel name, grid, block).

    ``extents`` are the sizes of the arrays the kernel indexes; ``n_threads`` (the loop
    length) is always included.
    """
    grid, block = grid_block(n_threads, block, max_grid)
    wide = needs_int64(n_threads, *extents, grid=grid, block=block)
    return kernel_name(base, dtype, wide), grid, block
