"""Train the seed MNIST CNN with minigrad (each convolution algorithm) and with PyTorch in one
run, from the same initial weights on the same batches, and print a table.

    python bench/compare_mnist.py                       # 1 epoch, every algorithm
    python bench/compare_mnist.py --epochs 10 --algos im2col
    python bench/compare_mnist.py --limit 5000 --json results_mnist.json

Columns: seconds per epoch, test accuracy, and minigrad's time as a ratio to PyTorch's.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kernels  # noqa: E402
import minigrad as mg  # noqa: E402
from bench import torch_reference as ref  # noqa: E402
from minigrad.data.loader import DataLoader  # noqa: E402
from minigrad.data.mnist import load_mnist  # noqa: E402
from minigrad.data.transforms import mnist_normalize  # noqa: E402
from minigrad.models import MnistCNN  # noqa: E402
from minigrad.train import fit, make_optimizer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--algos", default=",".join(a for a in kernels.ALGORITHMS if a != "direct"),
                   help="comma-separated convolution algorithms (numba backend)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)

    X, y, Xt, yt = load_mnist()
    if args.limit:
        X, y = X[:args.limit], y[:args.limit]
    mg.manual_seed(args.seed)
    init = MnistCNN()
    rows = []

    def loader():
        return DataLoader((X, y), batch_size=args.batch_size, seed=args.seed,
                          num_workers=args.workers, transform=mnist_normalize)

    tmodel = ref.copy_weights(ref.TorchMnistCNN(), init)
    topt = ref.make_optimizer(args.optimizer, tmodel.parameters(), args.lr)
    with loader() as ld:
        t = ref.fit(tmodel, topt, ld, (Xt, yt), args.epochs, eval_transform=mnist_normalize)
    rows.append({"engine": "pytorch", "algo": "-", "seconds_per_epoch": t["seconds_per_epoch"],
                 "test_accuracy": t["test_accuracy"]})
    print(f"pytorch {torch.__version__}: {t['seconds_per_epoch']:.2f} s/epoch, "
          f"test acc {t['test_accuracy']:.4f}", file=sys.stderr)

    for algo in args.algos.split(","):
        model = MnistCNN(algo=algo).load_state_dict(init.state_dict())
        opt = make_optimizer(args.optimizer, model.parameters(), args.lr)
        with loader() as ld:
            s = fit(model, opt, ld, (Xt, yt), args.epochs, eval_transform=mnist_normalize,
                    log=lambda line, algo=algo: print(f"[{algo}] {line}", file=sys.stderr))
        rows.append({"engine": "minigrad", "algo": algo,
                     "seconds_per_epoch": s["seconds_per_epoch"],
                     "test_accuracy": s["test_accuracy"],
                     "loader_wait_share": s["loader_wait_share"]})

    base = rows[0]["seconds_per_epoch"]
    print(f"\nMNIST CNN, {args.epochs} epoch(s), {len(X)} training images, batch "
          f"{args.batch_size}, {args.optimizer} lr {args.lr}, {args.workers} loader threads")
    print(f"{'engine':10s} {'algo':10s} {'s/epoch':>9s} {'test acc':>9s} {'time/pytorch':>13s}")
    for r in rows:
        r["ratio_to_pytorch"] = r["seconds_per_epoch"] / base
        print(f"{r['engine']:10s} {r['algo']:10s} {r['seconds_per_epoch']:9.2f} "
              f"{r['test_accuracy']:9.4f} {r['ratio_to_pytorch']:13.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args),
                                               "time": time.time()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
