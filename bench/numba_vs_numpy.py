"""Numba kernels vs their NumPy references (and PyTorch), forward and forward+backward.

    python bench/numba_vs_numpy.py                                   # all layers, all algos
    python bench/numba_vs_numpy.py --layers mnist-conv2 --algos kn2row kn2row-aa
    python bench/numba_vs_numpy.py --reps 20 --no-torch

For every layer x algorithm x backend x pass, one warm-up call (it also compiles the Numba
kernels) and then the minimum over --reps calls, timed with time.perf_counter, in ms. The
table gives numba/numpy (< 1: Numba wins) and each time over PyTorch's (conv2d with autograd,
CPU) for the same pass. "fwd+bwd" is conv2d_forward followed by conv2d_backward, without a
`saved` dict, as in bench/test_bench_conv.py. im2col is listed as a reference by default.

Torch runs last, after every minigrad timing: once PyTorch has run in a process, glibc malloc
starts returning large freed blocks to the kernel and page-faulting them back in. We also call
minigrad.allocator.retain_freed_memory() first (what minigrad's training loop does). Timings
are minimums because the machine has few cores and may be shared; rerun to confirm a close call.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minigrad.allocator import retain_freed_memory

retain_freed_memory()

from bench.common import LAYERS, make_inputs  # noqa: E402
from minigrad import kernels  # noqa: E402

ALGOS = ("im2row", "kn2row", "kn2row-aa", "kn2col", "winograd", "im2col")
BACKENDS = ("numpy", "numba")
PASSES = ("fwd", "fwd+bwd")


def best_ms(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def time_minigrad(layer, algo, backend, pass_, reps):
    x, w, dy = make_inputs(layer)
    s, p = LAYERS[layer][2:]

    def fwd():
        return kernels.conv2d_forward(x, w, s, p, algo=algo, backend=backend)

    def fwdbwd():
        kernels.conv2d_forward(x, w, s, p, algo=algo, backend=backend)
        return kernels.conv2d_backward(dy, x, w, s, p, algo=algo, backend=backend)

    return best_ms(fwd if pass_ == "fwd" else fwdbwd, reps)


def time_torch(layer, pass_, reps):
    import torch

    x, w, dy = (torch.from_numpy(a) for a in make_inputs(layer))
    s, p = LAYERS[layer][2:]
    x.requires_grad_(True)
    w.requires_grad_(True)
    conv = torch.nn.functional.conv2d

    def fwd():
        with torch.no_grad():
            return conv(x, w, stride=s, padding=p)

    def fwdbwd():
        y = conv(x, w, stride=s, padding=p)
        return torch.autograd.grad(y, (x, w), dy)

    return best_ms(fwd if pass_ == "fwd" else fwdbwd, reps, warmup=2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    ap.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    ap.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    ap.add_argument("--reps", type=int, default=10, help="timed calls; the minimum is kept")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = ap.parse_args(argv)

    res = {}  # (layer, algo, backend, pass) -> ms
    for layer in args.layers:
        for algo in args.algos:
            for backend in BACKENDS:
                for pass_ in args.passes:
                    res[layer, algo, backend, pass_] = time_minigrad(layer, algo, backend,
                                                                     pass_, args.reps)
    torch_ms = {}
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("(torch not importable: no PyTorch column)")
        else:
            for layer in args.layers:
                for pass_ in args.passes:
                    torch_ms[layer, pass_] = time_torch(layer, pass_, args.reps)

    head = (f"{'layer':<12} {'algo':<10} {'pass':<8} {'numpy ms':>9} {'numba ms':>9} "
            f"{'nb/np':>6} {'np/torch':>9} {'nb/torch':>9}")
    print(head)
    print("-" * len(head))
    for layer in args.layers:
        for pass_ in args.passes:
            t = torch_ms.get((layer, pass_))
            for algo in args.algos:
                a, b = res[layer, algo, "numpy", pass_], res[layer, algo, "numba", pass_]
                flag = "  <-- numba loses" if b > a else ""
                vs = (f"{a / t:>9.2f} {b / t:>9.2f}" if t else f"{'-':>9} {'-':>9}")
                print(f"{layer:<12} {algo:<10} {pass_:<8} {a:>9.2f} {b:>9.2f} "
                      f"{b / a:>6.2f} {vs}{flag}")
            if t:
                print(f"{layer:<12} {'torch':<10} {pass_:<8} {t:>9.2f}")
        print()


if __name__ == "__main__":
    main()
