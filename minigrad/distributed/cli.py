"""`minigrad train ... --strategy X`: the command-line face of distributed training.

    minigrad train mnist --strategy sync  --workers 4                      # threads
    minigrad train mnist --strategy dgc   --workers 4 --optimizer sgd --lr 0.02
    minigrad train mnist --strategy async --workers 4 --optimizer sgd --lr 0.01 \
        --server-momentum 0.8
    minigrad train mnist --strategy hogwild --workers 4 --optimizer sgd --lr 0.02
    mpiexec -n 4 minigrad train mnist --strategy sync --comm mpi --json    # processes
    minigrad train mnist --strategy dgc --optimizer sgd --lr 0.05 --save run.npz
    minigrad train mnist --strategy dgc --optimizer sgd --lr 0.05 --resume run.npz --epochs 4

`--save PATH` writes a checkpoint after every epoch (rank 0 writes it, atomically);
`--resume PATH` continues from one, with the same strategy, ranks, seed and batch size
(model-parallel and tensor-slicing save the whole model, so they resume with any number of
workers; see `minigrad.distributed.checkpoint`).

`--workers` is the number of training workers, DEFAULT_WORKERS (2) when not given: a number
that does not depend on the machine, since hogwild, async and DGC results depend on it
(with --comm mpi, mpiexec's -n decides: async then has a server and n-1 workers). The
workers share the cores (`--threads`, else $MINIGRAD_THREADS, else all this process may
use) through the thread budget, `minigrad.threads`: each runs its kernels on
max(1, cores // workers) Numba threads. `--augment` (MNIST) trains every worker on its own
randomly shifted, rotated and distorted slice (`ShardedBatches`); evaluation is not
augmented. sync runs the chosen `--optimizer` on the
averaged gradient, so it is single-worker training split N ways; hogwild, async and dgc
update with SGD by construction (hogwild: plain SGD per thread; async: plain SGD on the
server, rate divided by staleness; dgc: momentum-corrected SGD), so they need
`--optimizer sgd` and an SGD learning rate.

The minigrad CLI (`minigrad.cli`, which owns the parser) calls `add_arguments(train_parser)`
and, when --strategy is given, `cmd_train(args)`; `run(args)` returns the summary dict (None
on MPI ranks other than 0). This module never imports `minigrad.cli` back.
"""
import argparse
import json
import sys

from .dgc import CLIP_NORM, WARMUP_EPOCHS, WIRES
from .launch import STRATEGIES, DistributedRunFailed, train_distributed

DEFAULT_WORKERS = 2  # training workers when --strategy is given without --workers


def add_arguments(parser):
    g = parser.add_argument_group("distributed training (minigrad.distributed)")
    g.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="train with N workers (--workers): sync (allreduce), hogwild (lock-"
                        "free threads), async (parameter server), dgc (compressed sync), "
                        "model-parallel (each worker holds 1/N of every layer's filters), "
                        "tensor-slicing (each worker holds a band of rows of every feature "
                        "map, with halo exchange)")
    g.add_argument("--comm", choices=("threads", "mpi"), default="threads",
                   help="ranks as threads of this process, or MPI processes (mpiexec)")
    g.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum: --optimizer sgd without --strategy or with --strategy "
                        "sync; dgc's momentum correction")
    g.add_argument("--staleness-aware", action=argparse.BooleanOptionalAction, default=True,
                   help="async: learning rate lr / max(1, staleness) (Zhang et al. 2016)")
    g.add_argument("--staleness-bound", type=int, default=None,
                   help="async: drop (do not apply) updates staler than this")
    g.add_argument("--server-momentum", type=float, default=0.0,
                   help="async: momentum of the server's SGD (0: plain SGD)")
    g.add_argument("--server-average", type=int, default=100, metavar="UPDATES",
                   help="async: the final model is a running average of the server's "
                        "parameter versions over about this many updates (0: the last "
                        "version); see minigrad.distributed.async_ps")
    g.add_argument("--ps-timeout", type=float, default=30.0,
                   help="async: seconds of silence after which a worker counts as stalled")
    g.add_argument("--ack-timeout", type=float, default=10.0,
                   help="async: seconds a worker waits for the server before resending")
    g.add_argument("--ps-drain-timeout", type=float, default=None, metavar="SEC",
                   help="async: after the last worker finished, the server waits at most "
                        "this long for the others' goodbyes (default: 10 x --ps-timeout)")
    g.add_argument("--inject-failure", action="append", default=[], metavar="RANK:STEP",
                   help="worker RANK raises at its step STEP (any strategy; a demo of "
                        "failure handling)")
    g.add_argument("--inject-kill", action="append", default=[], metavar="RANK:STEP",
                   help="rank RANK's process is killed (SIGKILL) at its step STEP: a crashed "
                        "host, for --comm mpi demos")
    g.add_argument("--inject-stall", action="append", default=[], metavar="RANK:STEP:SEC",
                   help="async demo: worker RANK sleeps SEC seconds at its step STEP")
    g.add_argument("--dgc-warmup-epochs", type=float, default=WARMUP_EPOCHS,
                   help="dgc: epochs over which sparsity rises 75%%, 93.75%%, 98.4%%, 99.6%% "
                        "(a quarter each; 0: none)")
    g.add_argument("--dgc-sparsity", type=float, default=0.999,
                   help="dgc: final sparsity (share of each weight tensor NOT sent)")
    g.add_argument("--dgc-clip-norm", type=float, default=CLIP_NORM,
                   help="dgc: global gradient clip norm; each worker's share g_k/N is clipped "
                        "at norm/sqrt(N), as in the paper (0: off)")
    g.add_argument("--dgc-wire", choices=WIRES, default="fp16",
                   help="dgc: fp16 values + uint16 index gaps (4 bytes per element), or the "
                        "paper's fp32 values + int32 indices (8 bytes)")
    g.add_argument("--dgc-momentum-masking", action=argparse.BooleanOptionalAction,
                   default=True, help="dgc: zero the momentum of sent coordinates (Lin et al.)")
    g.add_argument("--dgc-sample-ratio", type=float, default=0.01,
                   help="dgc: share of |v| sampled to estimate the threshold")
    g.add_argument("--eval-limit", type=int, default=None,
                   help="evaluate on the first N test samples only (with or without "
                        "--strategy)")
    return parser


def _faults(args):
    from .async_ps import Faults

    f = Faults()
    for spec in args.inject_failure:
        rank, step = (int(x) for x in spec.split(":"))
        f.die[rank] = step
    for spec in args.inject_kill:
        rank, step = (int(x) for x in spec.split(":"))
        f.kill[rank] = step
    for spec in args.inject_stall:
        rank, step, sec = spec.split(":")
        f.stall[int(rank)] = (int(step), float(sec))
    return f


def check(args):
    """A message for a combination of options that cannot work, else None."""
    if args.strategy in ("hogwild", "async", "dgc") and args.optimizer != "sgd":
        return (f"--strategy {args.strategy} updates with SGD (see `minigrad.distributed."
                f"{'async_ps' if args.strategy == 'async' else args.strategy}`): pass "
                "--optimizer sgd and an SGD learning rate, e.g. --lr 0.05")
    if args.strategy == "hogwild" and args.comm == "mpi":
        return "--strategy hogwild shares memory between threads: use --comm threads"
    if args.comm == "threads" and workers(args) < 1:
        return "--workers must be at least 1 with --strategy"
    if getattr(args, "device", "cpu") != "cpu":
        return "--strategy runs on the CPU only (--device cpu)"
    return None


def workers(args):
    """Training workers: --workers, else DEFAULT_WORKERS."""
    return DEFAULT_WORKERS if args.workers is None else args.workers


def run(args):
    """Train args.task with the chosen strategy; the summary dict (None off rank 0)."""
    from ..tasks import task_from_args

    problem = check(args)
    if problem:
        raise ValueError(problem)
    model, train_data, test_data, transform = task_from_args(args)
    train_transform = transform
    if getattr(args, "augment", False):
        from ..data.transforms import mnist_augment

        train_transform = mnist_augment()
    log = (lambda s: print(s, file=sys.stderr)) if getattr(args, "json", False) else print
    summary = train_distributed(
        args.strategy, model, train_data, test_data, transform=train_transform,
        eval_transform=transform, workers=workers(args), comm=args.comm, epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, seed=args.seed,
        staleness_aware=args.staleness_aware, staleness_bound=args.staleness_bound,
        timeout=args.ps_timeout, ack_timeout=args.ack_timeout,
        drain_timeout=args.ps_drain_timeout,
        dgc_warmup_epochs=args.dgc_warmup_epochs, dgc_sparsity=args.dgc_sparsity,
        dgc_clip_norm=args.dgc_clip_norm or None, dgc_sample_ratio=args.dgc_sample_ratio,
        dgc_wire=args.dgc_wire, dgc_momentum_masking=args.dgc_momentum_masking,
        faults=_faults(args), eval_limit=args.eval_limit, log=log,
        server_momentum=args.server_momentum, server_average=args.server_average,
        save=args.save, resume=args.resume, task=args.task,
        cores=getattr(args, "threads", None))
    if summary is None:
        return None
    any_optimizer = ("sync", "model-parallel", "tensor-slicing")  # they step like one worker
    head = {"task": args.task, "optimizer": args.optimizer if args.strategy in any_optimizer
            else "sgd", "seed": args.seed, "device": "cpu",
            "augment": bool(getattr(args, "augment", False))}
    if args.task == "mnist":
        head["conv"] = args.conv
    return {**head, **summary}


def cmd_train(args):
    """Run, then print the summary on rank 0 (JSON with --json). Returns an exit code."""
    try:
        summary = run(args)
    except ValueError as e:  # bad options, or a checkpoint that cannot be used
        print(f"minigrad train: {e}", file=sys.stderr)
        return 2
    except DistributedRunFailed as e:
        print(f"minigrad train: {e}", file=sys.stderr)
        return 3
    if summary is None:  # an MPI rank other than 0
        return 0
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        extra = ""
        if summary["compression_ratio"] is not None and args.strategy == "dgc":
            extra += (f", compression {summary['compression_ratio']:.0f}x, traffic "
                      f"{summary['traffic_ratio']:.0f}x less than a dense allreduce")
        if summary["staleness_mean"] is not None:
            extra += (f", staleness mean {summary['staleness_mean']:.2f} "
                      f"max {summary['staleness_max']}")
        if summary.get("dead_workers") or summary.get("stalled_workers"):
            extra += (f", dead workers {summary['dead_workers']}, stalled "
                      f"{summary['stalled_workers']}")
        print(f"{args.strategy} x{summary['workers']} ({args.comm}): test accuracy "
              f"{summary['test_accuracy']:.4f} after {summary['epochs']} epochs "
              f"({summary['train_seconds']:.2f}s training, {summary['bytes_sent']} bytes "
              f"sent{extra})")
    return 0
