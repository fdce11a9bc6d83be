"""The `minigrad` command: train, info, plot, explain.

    minigrad train iris [--epochs 100 --batch-size 64 --lr 1e-3 --optimizer adam --workers 4]
    minigrad train iris --json          # ends the output with one JSON summary object
    minigrad info                       # versions, Numba threads and layer, CuPy/GPU
    minigrad plot results.json --out DIR  # speedup, GFLOP/s, workspace ... figures
    minigrad explain im2col [--text]    # draw how a small convolution is lowered
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

from .tasks import DEFAULT_EPOCHS, TASKS, task_from_args


def cmd_train(args):
    from . import config

    if getattr(args, "strategy", None):
        from .distributed import cli as distributed_cli

        return distributed_cli.cmd_train(args)
    from .data.loader import DataLoader
    from .train import TrainingDiverged, fit, make_optimizer

    if args.device != "cpu":
        from .backend import gpu_available

        ok, why = gpu_available()
        if not ok:
            print(f"minigrad train: --device {args.device} is not usable here: {why}",
                  file=sys.stderr)
            return 2
    model, train_data, test_data, transform = task_from_args(args)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                        num_workers=args.workers, transform=transform)
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    t0 = time.perf_counter()
    try:
        with loader:
            summary = fit(model, optimizer, loader, test_data, args.epochs,
                          eval_transform=transform, device=args.device, save=args.save,
                          resume=args.resume, meta={"seed": args.seed, "task": args.task},
                          log=log, progress=args.progress)
    except TrainingDiverged as e:
        print(f"minigrad train: {e}", file=sys.stderr)
        return 3
    summary = {"task": args.task, "optimizer": args.optimizer, "lr": args.lr,
               "batch_size": args.batch_size, "workers": args.workers, "seed": args.seed,
               "device": args.device,
               **({"conv": args.conv or config.conv_algo} if args.task == "mnist" else {}),
               **summary, "wall_seconds": time.perf_counter() - t0}
    if args.json:
        if not args.history:
            summary.pop("history")
        print(json.dumps(summary))
    else:
        print(f"test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} epochs "
              f"({summary['train_seconds']:.2f}s training, "
              f"{summary['seconds_per_epoch']:.3f}s/epoch)")
    return 0


def cmd_info(args):
    import numba

    from . import __version__
    from .backend import gpu_available
    from .kernels._numba import threading_layer

    lines = [f"minigrad {__version__}", f"python {platform.python_version()}",
             f"numpy {np.__version__}", f"numba {numba.__version__}"]
    try:
        import torch

        lines.append(f"torch {torch.__version__} (reference only)")
    except ImportError:
        lines.append("torch not installed (only needed for tests and benchmarks)")
    from .kernels._blas import blas_info

    for lib, version, arch, threads in blas_info():
        lines.append(f"blas {lib} {version}, {arch} kernels, {threads} threads")
    from .kernels import gemm

    where = "kernels.gemm (Numba)" if gemm.uses_numba(np.float32) else "NumPy's BLAS"
    lines.append(f"gemm: float32 products on {where} (MINIGRAD_GEMM={gemm.MODE}, "
                 f"AVX-512 {'yes' if gemm.HAS_AVX512 else 'no'})")
    layer = threading_layer()
    lines.append(f"numba threads {numba.get_num_threads()}, threading layer {layer}")
    ok, why = gpu_available()
    lines.append(f"cupy/gpu: {'usable' if ok else 'not usable'} ({why})")
    print("\n".join(lines))
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="minigrad", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a task")
    t.add_argument("task", choices=TASKS)
    t.add_argument("--epochs", type=int, default=None, help="default: 100 (iris), 10 (mnist)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--workers", type=int, default=4,
                   help="data-loader threads; with --strategy, training workers")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--conv", default=None, help="convolution algorithm (mnist)")
    t.add_argument("--limit", type=int, default=None, help="first N training images (mnist)")
    t.add_argument("--save", default=None, help="checkpoint path (.npz), written every epoch")
    t.add_argument("--resume", default=None, help="checkpoint to continue from")
    t.add_argument("--json", action="store_true", help="end with one JSON summary object")
    t.add_argument("--history", action="store_true", help="include per-epoch rows in --json")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on when stderr is a terminal)")
    from .distributed import cli as distributed_cli

    distributed_cli.add_arguments(t)
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="versions, threads, GPU")
    i.set_defaults(func=cmd_info)

    from .tools import explain, plot

    explain.add_parser(sub)
    plot.add_parser(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if args.epochs is None:
            args.epochs = DEFAULT_EPOCHS[args.task]
        if args.progress is None:
            args.progress = sys.stderr.isatty()
        for name in ("epochs", "batch_size", "workers"):
            if getattr(args, name) < (0 if name == "workers" else 1):
                print(f"minigrad train: --{name.replace('_', '-')} must be positive",
                      file=sys.stderr)
                return 2
        if args.device not in ("cpu", "cuda"):
            print(f"minigrad train: unknown --device {args.device!r} (cpu or cuda)",
                  file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
