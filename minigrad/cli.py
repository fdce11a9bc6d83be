"""The `minigrad` command: train, info, plot, explain, compress.

    minigrad train iris [--epochs 100 --batch-size 64 --lr 1e-3 --optimizer adam]
    minigrad train iris --json          # ends the output with one JSON summary object
    minigrad train mnist --augment      # random shifts, rotations, elastic distortions
    minigrad train mnist --threads 2    # use 2 cores (default: all; see minigrad.threads)
    minigrad train mnist --log run.jsonl --log-interval 50   # the history, as it goes
    minigrad info                       # versions, the thread budget, Numba layer, GPU
    minigrad plot results.json --out DIR  # speedup, GFLOP/s, workspace ... figures
    minigrad explain im2col [--text]    # draw how a small convolution is lowered
    minigrad compress ck.npz --method tucker2 --ratio 4 --out small.npz   # factor the convs

A mistake on the command line, an unreadable checkpoint or missing data ends with one line
on stderr, `minigrad <command>: <what is wrong>; <what to do>`, and exit status 2; a
diverged run (NaN or infinite loss) exits with 3. `--debug` (or MINIGRAD_DEBUG=1) adds
the traceback.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np

from .tasks import (
    DEFAULT_EPOCHS,
    MODELS,
    TASKS,
    available_models,
    default_model,
    task_from_args,
)

TRAIN_EPILOG = """\
resuming (--resume CKPT):
  The checkpoint gives the weights, the optimizer's state (Adam moments, SGD momentum
  buffers) and the epoch and step counters. The command line gives every hyper-parameter:
  --lr, --lr-schedule, --momentum, --batch-size, --seed, --workers, --conv. --epochs is the
  TOTAL number of epochs, counting those the checkpoint already did: resuming an epoch-8
  checkpoint with --epochs 20 trains epochs 9..20. A checkpoint from another task, --model
  or --optimizer, or with another --val-split, is refused (exit 2).

learning-rate schedules (--lr-schedule, set at the start of each epoch e = 0, 1, ...):
  constant  --lr throughout
  step      --lr x 0.1 once e >= int(epochs/2), x 0.01 once e >= int(3*epochs/4) (never
            at e = 0); e.g. --epochs 8: lr, lr, lr, lr, lr/10, lr/10, lr/100, lr/100
  cosine    --lr x (1 + cos(pi * e / epochs)) / 2

checkpoints and divergence:
  --save writes the checkpoint after every *good* epoch: all weights finite and the epoch's
  mean loss at most 4x the lowest so far (the first batch's loss before any epoch ends).
  A NaN or infinite loss stops the run with exit status 3; the checkpoint is then the last
  good epoch's.

training log (--log FILE.jsonl): one JSON object per line, flushed as training goes:
  "start" (config), "step" (every --log-interval steps), "epoch", "diverged", "end" (the
  --json summary). A new run truncates FILE; a run with --resume appends to it.
  minigrad.train.read_log(FILE) reads it back.

threads (--threads N, --workers N; see minigrad.threads):
  One budget decides how many threads each part of the run may use: N cores (--threads,
  else $MINIGRAD_THREADS, else all this process may run on), split between the MPI ranks on
  this host, then between the training workers (--strategy), each running its kernels on
  max(1, cores // workers) Numba threads. Without --strategy, --workers is the number of
  data-loader threads, by default 0 for a deterministic transform (normalising a batch
  costs less than handing it to a thread) and one per 8 cores, at least 1, with --augment;
  $MINIGRAD_LOADER_WORKERS overrides that default. `minigrad info` shows the plan, and the
  --json summary's "threads" records it.

exit status: 0 done, 2 a usage or data error (one line on stderr), 3 the loss diverged.
"""


class CLIError(Exception):
    """A mistake the user can fix. Printed as one line, `minigrad <command>: <message>`."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line: `minigrad train: <problem>; see --help`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none (None or False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (
                action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _debug(args):
    return bool(getattr(args, "debug", False)) or os.environ.get("MINIGRAD_DEBUG", "") not in (
        "", "0")


def _say(message):
    print(message, file=sys.stderr)


# ---- minigrad train ------------------------------------------------------------------------
# Flags of the distributed group that single-worker training also honours.
_SHARED_WITH_DISTRIBUTED = ("strategy", "momentum", "eval_limit")


def _distributed_defaults():
    """{dest: default} of the flags minigrad.distributed.cli adds to `train`."""
    from .distributed import cli as distributed_cli

    probe = argparse.ArgumentParser(add_help=False)
    distributed_cli.add_arguments(probe)
    return vars(probe.parse_args([]))


def _flag(dest):
    return "--" + dest.replace("_", "-")


def validate_train(args):
    """Raise CLIError for a value or combination that cannot work or would be ignored."""
    for name, low, example in (("epochs", 1, "10"), ("batch_size", 1, "64"),
                               ("workers", 0, "0 (load batches in the training thread)"),
                               ("threads", 1, "2 (or leave it out to use every core)")):
        value = getattr(args, name, None)
        if value is not None and value < low:
            what = "positive" if low else "zero or more"
            raise CLIError(f"{_flag(name)} must be {what} (got {value}); e.g. "
                           f"{_flag(name)} {example}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError(f"--lr must be a positive number (got {args.lr}); e.g. --lr 1e-3")
    if args.seed < 0:
        raise CLIError(f"--seed must be zero or a positive integer (got {args.seed}); e.g. "
                       "--seed 0")
    for name in ("limit", "eval_limit"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CLIError(f"{_flag(name)} must be a positive number of samples (got {value}); "
                           f"leave it out to use them all")
    if args.val_split is not None and not 0.0 < args.val_split < 1.0:
        raise CLIError(f"--val-split is the fraction of the training set held out, between 0 "
                       f"and 1 (got {args.val_split}); e.g. --val-split 0.1")
    if not 0.0 <= args.momentum < 1.0:
        raise CLIError(f"--momentum must be in [0, 1) (got {args.momentum}); e.g. "
                       "--momentum 0.9, or 0 for plain SGD")
    if args.log_interval < 0:
        raise CLIError(f"--log-interval must be zero or more steps (got {args.log_interval}); "
                       "0 logs epochs only")
    if args.log is None and (args.log_interval or args.run is not None):
        raise CLIError(f"{'--log-interval' if args.log_interval else '--run'} applies to the "
                       "training log, and there is none; add --log FILE.jsonl")
    if args.task == "iris" and getattr(args, "augment", False):
        raise CLIError("--augment applies to mnist images (shift, rotation, elastic "
                       "distortion), not to iris measurements; drop --augment")
    if args.task == "iris" and args.conv is not None:
        raise CLIError("--conv does not apply to iris (its model has no convolutions); drop "
                       "--conv")
    if args.model is not None and args.model not in MODELS[args.task]:
        raise CLIError(f"--model {args.model} is not a {args.task} model; choose from "
                       f"{', '.join(MODELS[args.task])}")
    if args.model is not None and args.model not in available_models(args.task):
        raise CLIError(f"--model {args.model} is not available in this version of minigrad; "
                       f"choose from {', '.join(available_models(args.task))}")
    defaults = _distributed_defaults()
    if not args.strategy:
        for dest, default in defaults.items():
            if dest in _SHARED_WITH_DISTRIBUTED or getattr(args, dest, default) == default:
                continue
            raise CLIError(f"{_flag(dest)} configures distributed training and needs "
                           f"--strategy; add --strategy or drop {_flag(dest)}")
        if args.optimizer != "sgd" and args.momentum != defaults["momentum"]:
            raise CLIError("--momentum applies to --optimizer sgd (Adam has no momentum "
                           "coefficient); add --optimizer sgd or drop --momentum")
    else:
        single_only = [flag for flag, on in (
            ("--log", args.log is not None), ("--val-split", args.val_split is not None),
            ("--lr-schedule", args.lr_schedule != "constant"),
            ("--progress", args.progress is True)) if on]
        if single_only:
            raise CLIError(f"{single_only[0]} is not supported with --strategy yet; drop it "
                           "or train without --strategy")


def _check_resume(args):
    """Read the checkpoint's meta now, so a bad --resume fails before any data loads."""
    from .checkpoint import CheckpointError, check_meta, read_checkpoint

    try:
        _, _, meta = read_checkpoint(args.resume)
        check_meta(args.resume, meta, _resume_expect(args))
    except CheckpointError as e:
        raise CLIError(_checkpoint_hint(e)) from e
    return meta


def _resume_expect(args):
    return {"task": args.task, "model": args.model or default_model(args.task),
            "optimizer": args.optimizer, "val_split": args.val_split or 0.0}


def _checkpoint_hint(e):
    from .checkpoint import CheckpointMismatch

    if isinstance(e, CheckpointMismatch):
        return (f"--resume: {e}; resume with the checkpoint's settings, or start a new run "
                "without --resume")
    return (f"--resume: {e}; pass a checkpoint written by `minigrad train --save`, or start "
            "a new run without --resume")


def _thread_plan(args):
    """The thread budget of single-process training (minigrad.threads): one training thread,
    the loader threads --workers asks for, else the budget's choice."""
    from . import threads

    try:
        return threads.plan(1, loader_workers=args.workers, cores=args.threads,
                            augment=args.augment)
    except ValueError as e:  # e.g. $MINIGRAD_THREADS=abc
        raise CLIError(f"thread budget: {e}; fix it, or pass --threads N") from e


def _summary_head(args, plan):
    from . import config

    head = {"task": args.task, "model": args.model or default_model(args.task),
            "optimizer": args.optimizer, "lr": args.lr, "lr_schedule": args.lr_schedule,
            "momentum": args.momentum if args.optimizer == "sgd" else None,
            "batch_size": args.batch_size, "workers": plan.loader_workers, "seed": args.seed,
            "device": args.device, "limit": args.limit, "val_split": args.val_split,
            "eval_limit": args.eval_limit,
            "conv": (args.conv or config.conv_algo) if args.task == "mnist" else None,
            "augment": args.augment, "threads": plan.as_dict()}
    return head


def cmd_train(args):
    validate_train(args)
    if args.strategy:
        from .distributed import cli as distributed_cli

        return distributed_cli.cmd_train(args)
    from . import threads
    from .checkpoint import CheckpointError, check_writable
    from .data.loader import DataLoader
    from .tasks import split_validation
    from .train import TrainingLog, announce_compilation, make_optimizer

    if args.device != "cpu":
        from .backend import gpu_available

        ok, why = gpu_available()
        if not ok:
            raise CLIError(f"--device {args.device} is not usable here: {why}; use --device "
                           "cpu")
    if args.save is not None:
        try:
            check_writable(args.save)
        except CheckpointError as e:
            raise CLIError(f"--save: {e}; choose a path in a writable directory") from e
    resume_meta = _check_resume(args) if args.resume is not None else None
    plan = _thread_plan(args)

    if args.progress:
        from tqdm import tqdm

        def note(s):
            tqdm.write(s, file=sys.stderr)
    else:
        note = _say
    log = _say if args.json else print
    head = _summary_head(args, plan)
    t0 = time.perf_counter()
    with announce_compilation(note):
        task = task_from_args(args)
        if resume_meta is not None:  # a `minigrad compress`ed checkpoint: factor the model
            from .tools.compress import prepare_resume

            prepare_resume(task.model, resume_meta)
        train_data, val_data = task.train, None
        if args.val_split is not None:
            try:
                train_data, val_data = split_validation(train_data, args.val_split)
            except ValueError as e:
                raise CLIError(f"--val-split: {e}; use a smaller fraction or more samples "
                               "(--limit)") from e
        X_test, y_test = task.test
        if args.eval_limit is not None:
            X_test, y_test = X_test[:args.eval_limit], y_test[:args.eval_limit]
        optimizer = make_optimizer(args.optimizer, task.model.parameters(), args.lr,
                                   momentum=args.momentum)
        train_transform = task.transform
        if args.augment:  # training batches only: evaluation keeps task.transform
            from .data.transforms import mnist_augment

            train_transform = mnist_augment()
        loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True,
                            seed=args.seed, num_workers=plan.loader_workers,
                            transform=train_transform,
                            worker_numba_threads=plan.numba_threads_per_loader)
        train_log = None
        if args.log is not None:
            try:
                train_log = TrainingLog(args.log, "a" if args.resume else "w")
            except OSError as e:
                raise CLIError(f"--log: cannot write {args.log}: {e.strerror or e}; choose a "
                               "path in a writable directory") from e
        try:
            with threads.limits(plan):  # BLAS and this thread's Numba kernels: the budget
                return _train(args, task, optimizer, loader, (X_test, y_test), val_data,
                              head, train_log, log, t0)
        finally:
            if train_log is not None:
                train_log.close()


def _train(args, task, optimizer, loader, test_data, val_data, head, train_log, log, t0):
    """fit, then the summary (--json), the training log's end event and the exit status."""
    from .checkpoint import CheckpointError
    from .train import TrainingDiverged, fit, json_safe

    if train_log is not None:
        train_log.write("start", time=time.time(),
                        run=args.run or os.path.splitext(os.path.basename(args.log))[0],
                        config=json_safe({**head, "epochs": args.epochs,
                                           "strategy": args.strategy, "resume": args.resume,
                                           "save": args.save}))
    meta = {k: head[k] for k in ("task", "model", "optimizer", "lr", "seed", "conv",
                                 "batch_size") if head.get(k) is not None}
    meta["val_split"] = args.val_split or 0.0
    code, message = 0, None
    try:
        with loader:
            result = fit(task.model, optimizer, loader, test_data, args.epochs,
                         eval_transform=task.transform, device=args.device, save=args.save,
                         resume=args.resume, meta=meta, log=log, progress=args.progress,
                         val_data=val_data, lr=args.lr, lr_schedule=args.lr_schedule,
                         train_log=train_log, log_interval=args.log_interval)
    except TrainingDiverged as e:
        result, code = e.summary, 3
        message = f"{e}; lower --lr (it was {args.lr:g})"
        if args.save and result["checkpoint_epoch"] is not None:
            message += " and resume from the kept checkpoint"
    except CheckpointError as e:  # e.g. a checkpoint of an older minigrad's model
        raise CLIError(_checkpoint_hint(e)) from e
    summary = json_safe({**head, **result, "status": "diverged" if code else "done",
                          "wall_seconds": time.perf_counter() - t0})
    if not args.history:
        summary.pop("history")
    if train_log is not None:
        train_log.write("end", summary=summary)
    if args.json:
        print(json.dumps(summary))
    if code:
        _say(f"minigrad train: {message}")
        return code
    if not args.json:
        resumed = f", {summary['epochs_run']} in this run" if summary["start_epoch"] else ""
        val = (f", val accuracy {summary['val_accuracy']:.4f}"
               if summary["val_accuracy"] is not None else "")
        epochs = summary["epochs"]
        print(f"test accuracy {summary['test_accuracy']:.4f}{val} after {epochs} "
              f"epoch{'' if epochs == 1 else 's'}{resumed} "
              f"({summary['train_seconds']:.2f}s training, "
              f"{summary['seconds_per_epoch']:.3f}s/epoch, "
              f"{summary['images_per_second']:,.0f} images/s)")
    return 0


# ---- minigrad info -------------------------------------------------------------------------
def cmd_info(args):
    import numba

    from . import __version__, kernels, threads
    from .backend import gpu_available

    try:
        plan = threads.plan()
    except ValueError as e:  # e.g. $MINIGRAD_THREADS=abc
        raise CLIError(f"thread budget: {e}; fix the environment variable") from e

    lines = [f"minigrad {__version__}", f"python {platform.python_version()}",
             f"numpy {np.__version__}", f"numba {numba.__version__}"]
    try:
        import torch

        lines.append(f"torch {torch.__version__} (reference only)")
    except ImportError:
        lines.append("torch not installed (only needed for tests and benchmarks)")
    for lib, version, arch, n_threads in kernels.blas_info():
        lines.append(f"blas {lib} {version}, {arch} kernels, {n_threads} threads")
    gemm = kernels.gemm_info()
    lines.append(f"gemm: float32 products on {gemm['float32']}, float64 on {gemm['float64']} "
                 f"(MINIGRAD_GEMM={gemm['mode']}, AVX-512 {'yes' if gemm['avx512'] else 'no'})")
    layer = kernels.threading_layer()
    wait = (f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY') or 'unset (active)'}"
            if layer == "omp" else "")
    lines.append(f"numba threads {numba.get_num_threads()}, threading layer {layer}{wait}")
    lines.append(f"threads: {plan.describe()}")
    lines += [f"threads: note: {note}" for note in plan.notes]
    ok, why = gpu_available()
    lines.append(f"cupy/gpu: {'usable' if ok else 'not usable'} ({why})")
    print("\n".join(lines))
    return 0


# ---- the parser ----------------------------------------------------------------------------
def build_parser():
    from . import kernels
    from .distributed import cli as distributed_cli
    from .train import LR_SCHEDULES

    p = _Parser(prog="minigrad", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a task", formatter_class=_HelpFormatter,
                       description="Train a model on a task.", epilog=TRAIN_EPILOG)
    t.add_argument("task", choices=TASKS, help="what to learn: iris (needs no download) or "
                   "mnist (downloads once, or $MINIGRAD_DATA)")
    t.add_argument("--model", choices=sorted({m for ms in MODELS.values() for m in ms}),
                   default=None, help="the network: " + "; ".join(
                       f"{', '.join(ms)} ({task}; default {ms[0]})"
                       for task, ms in MODELS.items()))
    t.add_argument("--epochs", type=int, default=None,
                   help="total epochs, counting a resumed checkpoint's; default: "
                   + ", ".join(f"{n} ({task})" for task, n in DEFAULT_EPOCHS.items()))
    t.add_argument("--batch-size", type=int, default=64, help="samples per step")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (positive)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="learning rate per epoch (rules below)")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="sgd uses --momentum")
    t.add_argument("--workers", type=int, default=None, metavar="N",
                   help="data-loader threads (default: the thread budget's choice, 0 for a "
                        "deterministic transform, 1 per 8 cores, at least 1, with "
                        "--augment); with --strategy, training workers (default: "
                        f"{distributed_cli.DEFAULT_WORKERS})")
    t.add_argument("--threads", type=int, default=None, metavar="N",
                   help="cores to use on this host (default: $MINIGRAD_THREADS, else all "
                        "this process may run on), split between the MPI ranks on this "
                        "host, then between the training workers")
    t.add_argument("--augment", action="store_true",
                   help="mnist: train on randomly shifted, rotated and elastically distorted "
                        "images (minigrad.data.transforms.mnist_augment); evaluation is not "
                        "augmented")
    t.add_argument("--seed", type=int, default=0,
                   help="initial weights and batch order (0 or more)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda needs CuPy and a GPU")
    t.add_argument("--conv", choices=kernels.ALGORITHMS, default=None,
                   help="convolution algorithm (mnist; default: minigrad.config.conv_algo, "
                        "im2col unless MINIGRAD_CONV_ALGO says otherwise)")
    t.add_argument("--limit", type=int, default=None,
                   help="train on the first N training samples only")
    t.add_argument("--val-split", type=float, default=None, metavar="FRACTION",
                   help="hold out this fraction of the training set (the same samples in "
                        "every run) and report val_accuracy")
    t.add_argument("--save", default=None, metavar="CKPT",
                   help="checkpoint path (.npz), written after every good epoch")
    t.add_argument("--resume", default=None, metavar="CKPT",
                   help="checkpoint to continue from (see 'resuming' below)")
    t.add_argument("--log", default=None, metavar="FILE.jsonl",
                   help="write the training history there as it goes (format below)")
    t.add_argument("--log-interval", type=int, default=0, metavar="N",
                   help="with --log: also a step event every N steps (0: epochs only)")
    t.add_argument("--run", default=None, metavar="LABEL",
                   help="with --log: the run's label (default: the log's file name stem)")
    t.add_argument("--json", action="store_true",
                   help="end with one JSON summary object on stdout (epoch lines go to "
                        "stderr)")
    t.add_argument("--history", action="store_true", help="include per-epoch rows in --json")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar per epoch (default: on when stderr is a terminal)")
    t.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (or set MINIGRAD_DEBUG=1)")
    distributed_cli.add_arguments(t)
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="versions, threads, GPU")
    i.set_defaults(func=cmd_info)

    from .tools import compress, explain, plot

    explain.add_parser(sub)
    plot.add_parser(sub)
    compress.add_parser(sub)
    return p


def main(argv=None):
    """Run the command; return its exit status (argparse's errors and --help included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed its one line (or the help)
        return e.code
    if args.command == "train":
        if args.epochs is None:
            args.epochs = DEFAULT_EPOCHS[args.task]
        if args.progress is None:
            args.progress = sys.stderr.isatty() and not args.strategy
    from .checkpoint import CheckpointError
    from .data.mnist import ChecksumError, MNISTNotFoundError

    try:
        with warnings.catch_warnings():
            if not _debug(args):  # a warning is one line too, without the source line
                def show(message, category, *rest, **kwargs):
                    _say(f"minigrad {args.command}: warning: {message}")

                warnings.showwarning = show
            return args.func(args)
    except (CLIError, CheckpointError, MNISTNotFoundError, ChecksumError, OSError) as e:
        if _debug(args):
            traceback.print_exc()
        if isinstance(e, (MNISTNotFoundError, ChecksumError)):
            message = e.summary()
        elif isinstance(e, OSError):
            message = (f"{e.filename}: {e.strerror or e}" if e.filename else str(e)) + (
                "; check that path (its directory, permissions and free space)")
        else:
            message = str(e)
        _say(f"minigrad {args.command}: {message}")
        return 2
    except KeyboardInterrupt:
        if _debug(args):
            traceback.print_exc()
        _say(f"minigrad {args.command}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
