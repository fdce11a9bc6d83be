"""Keep freed memory for reuse, so a training step does not page-fault its buffers back in.

Every training step allocates and frees the same large temporaries: the im2col patch
matrices, activations and their gradients, tens of MB in all. glibc's malloc serves blocks
above its mmap threshold with fresh mmap() calls and gives freed memory at the top of the
heap back to the kernel above its trim threshold; both thresholds adapt, but not reliably
(with the full MNIST array resident we measured ~1,700 minor page faults per step and
23 ms steps, against 15 faults and 17.5 ms with the thresholds raised). Raising them keeps
freed blocks in the heap for the next step, which is what PyTorch's caching allocator does on
the GPU. The cost is that the process keeps its peak memory instead of returning it.

`retain_freed_memory()` is called by `minigrad.train.fit`; it only acts on glibc (Linux) and
can be turned off with MINIGRAD_MALLOC_TUNING=0.
"""
import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def retain_freed_memory(mmap_threshold=1 << 30, trim_threshold=1 << 30):
    """Ask glibc to serve large blocks from the heap and not to trim it; True if applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("MINIGRAD_MALLOC_TUNING") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    _done = ok
    return ok
