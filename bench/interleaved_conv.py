"""Every Numba lowering and PyTorch on one layer, interleaved round by round: for close calls.

    python bench/interleaved_conv.py                                # mnist-conv2, fwd+bwd
    python bench/interleaved_conv.py --layers mnist-conv1 mnist-conv2 wide --rounds 40
    python bench/interleaved_conv.py --pass forward --json docs/results/interleaved.json
    python bench/interleaved_conv.py --layers mnist-step      # a whole MNIST training step

Why another conv benchmark. `pytest bench` (test_bench_conv.py) times all of one kernel's
rounds, then all of the next kernel's. On a shared 2-core host a burst of load from elsewhere
lands on whichever kernel is being timed just then, so a 20% spread between two algorithms, or
minigrad's time against PyTorch's, can be the host and not the code. Here each round times
every engine once, in an order shuffled per round (seeded), and every minigrad time is also
divided by PyTorch's *from the same round*: a paired ratio, which cancels the slow swings of
the machine's speed that a ratio of two separately measured medians keeps.

Each engine's turn in a round: calls, untimed, for at least SETTLE_S (its caches warm, its
thread pool awake, the previous engine's spinning threads asleep; see bench/common.py), then
REPS timed calls; its time for the round is their median. Reported per engine: the median
over rounds and its interquartile range (ms), GFLOP/s (the pass's useful work over the median
time; forward+backward counts three GEMMs' worth, as test_bench_conv does), the median of
the paired ratios to PyTorch, and the median of the ratios to the round's fastest minigrad
algorithm. NumPy's float32 sgemm (2048^3, best of 3, the pytest suite's yardstick) is timed
before the rounds and after them, not inside: OpenBLAS's threads keep spinning after a
call, and on 2 cores the conv2 forward that followed an sgemm took 4.2 ms against 2.4 even
after 30 ms of untimed calls (0.1 s brought it back to 2.6). One untimed round follows the
first sgemm, for the same reason.

"mnist-step" (not a layer) times one training step of the MNIST CNN at batch 64 instead,
forward, backward and Adam, as bench/test_bench_mnist.py does: each lowering's step against
PyTorch's, from the same weights on the same batch (its --pass is ignored). That is the
epoch's work without the loader and the separate processes of compare_mnist.py.

The work is exactly test_bench_conv.py's: forward is kernels.conv2d_forward; forward+backward
is conv2d_forward then conv2d_backward (dx and dW, no `saved`), against
torch.nn.functional.conv2d and torch.autograd.grad for (x, w). Inputs are the same arrays.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minigrad.allocator import retain_freed_memory

retain_freed_memory()  # as the training loop and bench/conftest.py do, before torch loads

from bench.common import (  # noqa: E402
    LAYERS,
    make_inputs,
    median_seconds,
    mnist_train_step,
    pass_flops,
    sgemm_gflops,
    step_flops,
)
from minigrad import kernels  # noqa: E402

ALGOS = ("im2col", "im2row", "kn2row", "kn2row-aa", "kn2col", "winograd")
SETTLE_S = 0.03
REPS = 3


STEP = "mnist-step"  # a training step of the MNIST CNN, not a conv layer


def work_flops(layer, pass_):
    return step_flops() if layer == STEP else pass_flops(layer, pass_)


def step_engines(algos, with_torch=True):
    """name -> one MNIST CNN training step (batch 64: forward, backward, Adam)."""
    import minigrad as mg
    from minigrad.data.mnist import load_mnist
    from minigrad.data.transforms import mnist_normalize
    from minigrad.models import MnistCNN

    X, y, _, _ = load_mnist()
    x, y = mnist_normalize((X[:64], y[:64]))
    mg.manual_seed(0)
    init = MnistCNN()
    names = list(algos) + (["pytorch"] if with_torch else [])
    return {name: mnist_train_step(name, init, x, y) for name in names}


def engines(layer, pass_, algos, with_torch=True):
    """name -> a no-argument callable doing the pass once."""
    if layer == STEP:
        return step_engines(algos, with_torch)
    x_shape, w_shape, stride, padding = LAYERS[layer]
    x, w, dy = make_inputs(layer)
    out = {}
    for algo in algos:
        if not kernels.supports(algo, w_shape, stride):
            continue

        def fwd(algo=algo):
            kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend="numba")

        def fwd_bwd(algo=algo):
            kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend="numba")
            kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo, backend="numba")

        out[algo] = fwd if pass_ == "forward" else fwd_bwd
    if with_torch:
        import torch

        tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))
        tx.requires_grad_(True)
        tw.requires_grad_(True)
        conv = torch.nn.functional.conv2d

        def torch_fwd():
            with torch.no_grad():
                conv(tx, tw, stride=stride, padding=padding)

        def torch_fwd_bwd():
            torch.autograd.grad(conv(tx, tw, stride=stride, padding=padding), (tx, tw), tdy)

        out["pytorch"] = torch_fwd if pass_ == "forward" else torch_fwd_bwd
    return out


def turn(fn):
    """One engine's turn in a round: untimed calls (one at least) for SETTLE_S, then the
    median of REPS timed calls (s)."""
    return median_seconds(fn, REPS, SETTLE_S)


def run_layer(layer, pass_, algos, rounds, seed, with_torch=True):
    """Time the engines round by round: ({name: [seconds per round]}, (sgemm GFLOP/s before
    the rounds, after them))."""
    fns = engines(layer, pass_, algos, with_torch)
    before = sgemm_gflops()
    for fn in fns.values():  # compile (Numba's cache may be cold) and wake everything once
        fn()
    rng = random.Random(seed)
    names = list(fns)
    for name in names:  # one untimed round, while the sgemm's threads wind down
        turn(fns[name])
    times = {name: [] for name in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            times[name].append(turn(fns[name]))
    return times, (before, sgemm_gflops())


def summarise(layer, pass_, times):
    """Rows of the table: median, IQR, GFLOP/s, paired ratios."""
    flops = work_flops(layer, pass_)
    algos = [k for k in times if k != "pytorch"]
    t = {k: np.asarray(v) for k, v in times.items()}
    fastest = np.min(np.stack([t[a] for a in algos]), axis=0)  # per round
    rows = []
    for name in algos + [k for k in ("pytorch",) if k in t]:
        q1, med, q3 = np.percentile(t[name], [25, 50, 75])
        row = {"engine": "pytorch" if name == "pytorch" else "minigrad", "algo": name,
               "median_ms": 1e3 * med, "iqr_ms": 1e3 * (q3 - q1),
               "gflops": flops / med / 1e9,
               "ratio_to_pytorch": (float(np.median(t[name] / t["pytorch"]))
                                    if "pytorch" in t else None),
               "ratio_to_fastest": (float(np.median(t[name] / fastest))
                                    if name in algos else None)}
        rows.append(row)
    return rows


def print_table(layer, pass_, rows, sgemm, rounds):
    print(f"\n{layer} {pass_}: {rounds} interleaved rounds; NumPy sgemm {sgemm[0]:.0f} "
          f"GFLOP/s before them, {sgemm[1]:.0f} after")
    print(f"{'engine':12s} {'median ms':>10s} {'IQR ms':>8s} {'GFLOP/s':>8s} "
          f"{'/ PyTorch':>10s} {'/ fastest':>10s}")
    for r in rows:
        tp = "" if r["ratio_to_pytorch"] is None else f"{r['ratio_to_pytorch']:.2f}"
        tf = "" if r["ratio_to_fastest"] is None else f"{r['ratio_to_fastest']:.2f}"
        print(f"{r['algo']:12s} {r['median_ms']:10.2f} {r['iqr_ms']:8.2f} {r['gflops']:8.0f} "
              f"{tp:>10s} {tf:>10s}")


def machine():
    info = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        flags = open("/proc/cpuinfo").read()
        model = [ln.split(":", 1)[1].strip() for ln in flags.splitlines()
                 if ln.startswith("model name")]
        info["cpu"] = model[0] if model else platform.processor()
        info["avx512f"] = " avx512f" in flags
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    from minigrad.kernels import gemm

    info["gemm_isa"] = gemm.ISA
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                        text=True, check=True).stdout.strip()
        info["dirty"] = bool(subprocess.run(["git", "status", "--porcelain",
                                             "--untracked-files=no"],
                                            capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="+", default=["mnist-conv2"],
                   choices=list(LAYERS) + [STEP])
    p.add_argument("--pass", dest="pass_", default="forward+backward",
                   choices=("forward", "forward+backward"))
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=kernels.ALGORITHMS)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="minigrad only (no ratios to it)")
    p.add_argument("--json", help="write the rows and the machine here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    out = {"machine": machine(), "rounds": args.rounds, "settle_s": SETTLE_S, "reps": REPS,
           "layers": []}
    for layer in args.layers:
        times, sg = run_layer(layer, args.pass_, args.algos, args.rounds, args.seed,
                              with_torch=not args.no_torch)
        rows = summarise(layer, args.pass_, times)
        print_table(layer, "training step" if layer == STEP else args.pass_, rows, sg,
                    args.rounds)
        out["layers"].append({"layer": layer, "pass": "step" if layer == STEP else args.pass_,
                              "sgemm_gflops_before": sg[0], "sgemm_gflops_after": sg[1],
                              "rows": rows,
                              "seconds": {k: list(map(float, v)) for k, v in times.items()}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
