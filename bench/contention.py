"""How much does one busy process slow each engine's convolution down?

    python bench/contention.py                        # table on stdout
    python bench/contention.py --out contention.json  # and the numbers as JSON
    python bench/contention.py --competitor numpy --repeat 40 --algos im2col,kn2row

MNIST conv2 forward+backward (x (64, 32, 14, 14), w (64, 32, 3, 3), stride 1, padding 1:
bench/test_bench_conv.py's "mnist-conv2") for every algorithm of minigrad's Numba backend
and for PyTorch, timed alone and again while a competing process spins on one core (a
pure-Python loop, or with --competitor numpy a loop of NumPy reductions), pinned to the last
core this process may use. Reported per engine: median time alone, median time beside the
competitor, and the slowdown factor (beside / alone).

What to expect. On C cores, an engine that shares its work out dynamically loses at most
one core's worth: slowdown about C / (C - 1) (2.0 on 2 cores, 1.14 on 8). A parallel loop
cut into C equal static chunks waits for its slowest thread, the one sharing a core with
the competitor, so it can slow by ~2x on any C; threads that spin while they wait for
work (OpenMP's active wait policy, OpenBLAS's pool) take CPU from the competitor and from
each other and can make it worse than 2x. The table prints C / (C - 1) as the reference.
This is the situation of every shared machine, and of minigrad's own threads when the
thread budget (minigrad/threads.py) is exceeded: issue #18.

Engines run with their default threads (Numba: NUMBA_NUM_THREADS, or --numba-threads;
PyTorch: torch.get_num_threads()). The environment is printed and saved: try
OMP_WAIT_POLICY=passive (or KMP_BLOCKTIME=0) to see whether spinning threads matter here.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import median_seconds

X_SHAPE, W_SHAPE, STRIDE, PADDING = (64, 32, 14, 14), (64, 32, 3, 3), 1, 1  # mnist-conv2
COMPETITORS = {
    "python": "while True:\n    pass\n",
    "numpy": ("import numpy as np\na = np.random.default_rng(0).random(1 << 16)\n"
              "while True:\n    a.sum()\n"),
}
ENV_KEYS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
            "NUMBA_THREADING_LAYER", "OPENBLAS_NUM_THREADS", "MINIGRAD_GEMM")


def inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    w = rng.standard_normal(W_SHAPE).astype(np.float32)
    ho = (X_SHAPE[2] + 2 * PADDING - W_SHAPE[2]) // STRIDE + 1
    wo = (X_SHAPE[3] + 2 * PADDING - W_SHAPE[3]) // STRIDE + 1
    dy = rng.standard_normal((X_SHAPE[0], W_SHAPE[0], ho, wo)).astype(np.float32)
    return x, w, dy


def minigrad_pass(algo, x, w, dy):
    from minigrad import kernels

    def run():
        kernels.conv2d_forward(x, w, stride=STRIDE, padding=PADDING, algo=algo, backend="numba")
        kernels.conv2d_backward(dy, x, w, stride=STRIDE, padding=PADDING, algo=algo,
                                backend="numba")
    return run


def torch_pass(x, w, dy):
    import torch

    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    tdy = torch.from_numpy(dy)

    def run():
        y = torch.nn.functional.conv2d(tx, tw, stride=STRIDE, padding=PADDING)
        torch.autograd.grad(y, (tx, tw), tdy)
    return run


class Competitor:
    """A busy process on one core, for the duration of a `with` block."""

    def __init__(self, kind, pin=True):
        self.kind, self.pin, self.proc = kind, pin, None
        self.core = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", COMPETITORS[self.kind]])
        if self.pin and hasattr(os, "sched_setaffinity"):
            self.core = max(os.sched_getaffinity(0))
            try:
                os.sched_setaffinity(self.proc.pid, {self.core})
            except OSError:
                self.core = None
        time.sleep(0.3)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--repeat", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--algos", default=None,
                   help="comma-separated algorithms (default: all of kernels.ALGORITHMS)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--competitor", choices=sorted(COMPETITORS), default="python")
    p.add_argument("--no-pin", action="store_true",
                   help="let the OS place the competitor (default: pinned to one core)")
    p.add_argument("--numba-threads", type=int, default=None,
                   help="numba.set_num_threads for this run (default: Numba's pool size)")
    args = p.parse_args(argv)

    import numba

    from minigrad import kernels

    if args.numba_threads:
        numba.set_num_threads(args.numba_threads)
    algos = args.algos.split(",") if args.algos else list(kernels.ALGORITHMS)
    x, w, dy = inputs()
    engines = {f"minigrad {a}": minigrad_pass(a, x, w, dy) for a in algos}
    torch_threads = None
    if not args.no_torch:
        try:
            import torch

            engines["pytorch"] = torch_pass(x, w, dy)
            torch_threads = torch.get_num_threads()
        except ImportError:
            print("PyTorch is not installed: minigrad only", file=sys.stderr)

    rows = []
    for name, fn in engines.items():
        alone = median_seconds(fn, args.repeat, 0.25)
        with Competitor(args.competitor, pin=not args.no_pin):
            beside = median_seconds(fn, args.repeat, 0.25)
        rows.append({"engine": name, "alone_ms": alone * 1e3, "beside_ms": beside * 1e3,
                     "slowdown": beside / alone})
        print(f"  {name}: {alone * 1e3:.2f} ms alone, {beside * 1e3:.2f} ms beside",
              file=sys.stderr, flush=True)

    c = cores()
    reference = c / (c - 1) if c > 1 else float("inf")
    print(f"\nMNIST conv2 forward+backward {X_SHAPE} * {W_SHAPE}, {c} cores, one busy "
          f"{args.competitor} process{'' if args.no_pin else ' pinned to one core'}; "
          f"Numba {numba.get_num_threads()} threads ({kernels.threading_layer()}), "
          f"PyTorch {torch_threads} threads")
    print(f"{'engine':<22}{'alone ms':>10}{'beside ms':>11}{'slowdown':>10}")
    for r in rows:
        print(f"{r['engine']:<22}{r['alone_ms']:>10.2f}{r['beside_ms']:>11.2f}"
              f"{r['slowdown']:>9.2f}x")
    print(f"(losing one core's worth of {c}, perfectly shared: {reference:.2f}x)")
    if args.out:
        result = {
            "layer": "mnist-conv2", "pass": "forward+backward", "x_shape": X_SHAPE,
            "w_shape": W_SHAPE, "stride": STRIDE, "padding": PADDING, "cores": c,
            "competitor": args.competitor, "pinned": not args.no_pin, "repeat": args.repeat,
            "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": kernels.threading_layer(), "torch_threads": torch_threads,
            "reference_slowdown": reference, "cpu": platform.processor() or platform.machine(),
            "env": {k: os.environ.get(k) for k in ENV_KEYS}, "rows": rows,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
