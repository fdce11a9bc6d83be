"""Train the seed MNIST CNN with minigrad (each convolution algorithm) and with PyTorch in one
run, from the same initial weights on the same batches, and print a table.

    python bench/compare_mnist.py                       # 1 epoch, every algorithm
    python bench/compare_mnist.py --epochs 10 --algos im2col
    python bench/compare_mnist.py --limit 5000 --json results_mnist.json

Columns: seconds per epoch, test accuracy, and minigrad's time as a ratio to PyTorch's.

    python bench/compare_mnist.py --rounds 3            # every engine 3 times, interleaved

--rounds R (default 1) runs every engine R times: round by round, each round in its own
shuffled order (seeded by --seed), so that a slow spell of a shared host falls on one round of
several engines rather than on every round of one. s/epoch is then the median over the
rounds, and time/pytorch the median of each round's ratio to PyTorch's epoch *in that round*
(a paired ratio: it cancels the host's speed when it drifts between rounds). With one round
the engines run in the order given, PyTorch first.

Each minigrad run first makes one throwaway training step, so that Numba's compilation (on a
cold cache, seconds per kernel) is not timed as training. Each engine trains in a fresh
Python process, one after the other. Sharing one process is
not a fair race: once PyTorch has run, glibc's malloc hands large buffers back to the kernel
on every free (measured: ~5,000 page faults per training step, minigrad's step 18 -> 38 ms),
so whichever engine runs second would pay for the first.
"""
import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALGOS = ("im2col", "im2row", "kn2row", "kn2row-aa", "kn2col")  # direct is the slow oracle


def warm_up(algo, init, X, y, batch_size):
    """One training step and one evaluation-sized forward on a throwaway copy of the model,
    before the clock starts: Numba compiles a kernel on its first call (from its on-disk
    cache, if one is there, in well under a second; from scratch, seconds per kernel), and
    that is not the epoch's time. PyTorch's kernels are compiled ahead of time."""
    import minigrad as mg
    from minigrad import functional as F
    from minigrad.data.transforms import mnist_normalize
    from minigrad.models import MnistCNN

    model = MnistCNN(algo=algo).load_state_dict(init.state_dict())
    xb, yb = mnist_normalize((X[:batch_size], y[:batch_size]))
    F.cross_entropy(model(mg.Tensor(xb)), yb).backward()
    with mg.no_grad():
        model(mg.Tensor(mnist_normalize((X[:1000], y[:1000]))[0]))


def train_one(engine, algo, args):
    """Train one engine in this process; return its row."""
    import minigrad as mg
    from minigrad.data.loader import DataLoader
    from minigrad.data.mnist import load_mnist
    from minigrad.data.transforms import mnist_normalize
    from minigrad.models import MnistCNN

    X, y, Xt, yt = load_mnist()
    if args.limit:
        X, y = X[:args.limit], y[:args.limit]
    mg.manual_seed(args.seed)
    init = MnistCNN()
    loader = DataLoader((X, y), batch_size=args.batch_size, seed=args.seed,
                        num_workers=args.workers, transform=mnist_normalize)
    with loader:
        if engine == "pytorch":
            import torch

            from bench import torch_reference as ref

            model = ref.copy_weights(ref.TorchMnistCNN(), init)
            opt = ref.make_optimizer(args.optimizer, model.parameters(), args.lr)
            s = ref.fit(model, opt, loader, (Xt, yt), args.epochs,
                        eval_transform=mnist_normalize)
            return {"engine": "pytorch", "version": torch.__version__, "algo": "-",
                    "seconds_per_epoch": s["seconds_per_epoch"],
                    "test_accuracy": s["test_accuracy"]}
        from minigrad.train import fit, make_optimizer

        warm_up(algo, init, X, y, args.batch_size)
        model = MnistCNN(algo=algo).load_state_dict(init.state_dict())
        opt = make_optimizer(args.optimizer, model.parameters(), args.lr)
        s = fit(model, opt, loader, (Xt, yt), args.epochs, eval_transform=mnist_normalize,
                log=lambda line: print(f"[{algo}] {line}", file=sys.stderr))
        return {"engine": "minigrad", "version": mg.__version__, "algo": algo,
                "seconds_per_epoch": s["seconds_per_epoch"],
                "test_accuracy": s["test_accuracy"],
                "loader_wait_share": s["loader_wait_share"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--algos", default=",".join(ALGOS),
                   help="comma-separated convolution algorithms (numba backend)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1,
                   help="run every engine this many times, interleaved (median, paired ratios)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: ENGINE:ALGO
    args = p.parse_args(argv)

    if args.one:  # a child process: train one engine, print its row as JSON
        engine, algo = args.one.split(":")
        print(json.dumps(train_one(engine, algo, args)))
        return 0

    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])
                 if not a.startswith("--json")]
    if args.json and args.json in forwarded:
        forwarded.remove(args.json)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    specs = ["pytorch:-"] + [f"minigrad:{a}" for a in args.algos.split(",")]
    runs = {spec: [] for spec in specs}  # spec -> its row from each round
    order = list(specs)
    shuffle = random.Random(args.seed).shuffle
    for rnd in range(args.rounds):
        if args.rounds > 1:
            shuffle(order)
        for spec in order:
            r = subprocess.run([sys.executable, __file__, *forwarded, "--one", spec],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
            if r.returncode != 0:
                print(f"compare_mnist: {spec} failed (exit {r.returncode})", file=sys.stderr)
                return r.returncode
            runs[spec].append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"round {rnd + 1}/{args.rounds} {spec}: "
                  f"{runs[spec][-1]['seconds_per_epoch']:.2f} s/epoch, "
                  f"test acc {runs[spec][-1]['test_accuracy']:.4f}", file=sys.stderr)

    base = [row["seconds_per_epoch"] for row in runs["pytorch:-"]]
    rows = []
    for spec in specs:
        seconds = [row["seconds_per_epoch"] for row in runs[spec]]
        ratios = [s_ / b for s_, b in zip(seconds, base, strict=True)]
        rows.append({**runs[spec][-1], "seconds_per_epoch": statistics.median(seconds),
                     "seconds_per_round": seconds, "ratio_per_round": ratios,
                     "ratio_to_pytorch": statistics.median(ratios)})
    n = args.limit or 60000
    print(f"\nMNIST CNN, {args.epochs} epoch(s), {n} training images, batch {args.batch_size}, "
          f"{args.optimizer} lr {args.lr}, {args.workers} loader threads, seed {args.seed}"
          + (f", {args.rounds} interleaved rounds (medians; ratios paired by round)"
             if args.rounds > 1 else ""))
    print(f"{'engine':10s} {'algo':10s} {'s/epoch':>9s} {'test acc':>9s} {'time/pytorch':>13s}")
    for r in rows:
        print(f"{r['engine']:10s} {r['algo']:10s} {r['seconds_per_epoch']:9.2f} "
              f"{r['test_accuracy']:9.4f} {r['ratio_to_pytorch']:13.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args),
                                               "time": time.time()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
