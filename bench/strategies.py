"""Every parallel strategy minigrad has, measured on the review's five criteria: one table
(Markdown and JSON) and one figure.

    python bench/strategies.py --out docs/results/strategies                 # the quiet run
    python bench/strategies.py --out docs/results/strategies --update-docs   # ... and the docs
    python bench/strategies.py --quick --data synthetic --out /tmp/s         # smoke, seconds

writes strategies.md, strategies.json, strategies.png and strategies.svg into --out. With
--update-docs it also rewrites the region between `<!-- strategies:begin -->` and
`<!-- strategies:end -->` in docs/strategies.md (and in README.md, if it has the markers).

The review (see docs/strategies.md) rates data and model parallelism, tensor decomposition,
im2row/im2col, kn2row/kn2col, DGC, asynchronous updates and tensor slicing "High",
"Moderate" or "Low" on five criteria. Here each criterion is a number:

    scalability         seconds per training epoch at N = 1, 2, 4 workers (threads)
    parallelism         speedup over one worker, t(N=1) / t(N); for a kernel (a lowering,
                        a factored layer) there are no workers: the speedup of the MNIST
                        CNN's conv2 forward+backward on all cores over one Numba thread
    fault tolerance     what happens when a worker dies: an injected failure (rank 1 raises
                        at its 3rd step, N = 2) run here, plus the tests that pin it down
    memory efficiency   peak memory per worker: tracemalloc's peak over a short training
                        run (--probe-steps global batches and the evaluation of one batch),
                        divided by the threads that hold state (workers, plus async's
                        server); numpy reports every array it allocates to tracemalloc
    communication       bytes a worker moves per step over the network (the communicator's
                        `bytes_moved`: what a rank receives under the textbook algorithms,
                        which is also what it sends), at the largest N
    accuracy            test accuracy after the same number of epochs

Rows: data parallel (sync allreduce), Hogwild, async parameter server, DGC, model parallel
(filters split), tensor slicing (row bands + halo): each trained for --epochs at every N.
Every convolution lowering in `kernels.ALGORITHMS` (im2col, im2row, kn2row, ...): one worker,
the whole CNN on that lowering. Tensor decomposition (Tucker-2 and CP of conv2 at 1/4 of its
parameters, `minigrad.tools.compress`): the N = 1 sync model factored, scored, then
fine-tuned for --epochs at lr / 10 (as the decomposition papers fine-tune); its memory and
bytes are those of sync training of the factored model.

Hyper-parameters: global batch 64 (a worker of N takes 64/N of it), SGD lr 0.05. Momentum
0.9 where the strategy has an optimizer with momentum (sync, DGC's momentum correction, model
parallel, tensor slicing); Hogwild is plain SGD by design, and async's server runs without
momentum (`--server-momentum 0`, the CLI's default: with 0.9 and stale gradients it reached
34% at N = 2 where plain SGD reached 67%, 3,000 images, 1 epoch). So the accuracy column
compares the strategies as they are meant to run, not one optimizer.

Time. The default run trains 26 x 2 epochs of --limit 12000 images (6 strategies x 3 N, 6
lowerings, 2 fine-tunes; the direct lowering alone takes a minute and a half) plus short
probes and a minute's wait where a fault probe hangs: about 7-10 minutes on 2 quiet cores.
Timings are one run each (`--repeat R` takes the median of R): run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
if not os.environ.get("MINIGRAD_DATA") and SHARED_MNIST.is_dir():  # as tests/conftest.py
    os.environ["MINIGRAD_DATA"] = str(SHARED_MNIST)

BEGIN, END = "<!-- strategies:begin -->", "<!-- strategies:end -->"
DOCS = (ROOT / "docs" / "strategies.md", ROOT / "README.md")  # --update-docs rewrites these
FORMATS = ("png", "svg")

# ------------------------------------------------------------------------------ the rows
# (key, label, the review's row). Training rows run at every N; the others at N = 1.
TRAINING = (
    ("sync", "data parallel (sync allreduce)", "data parallelism"),
    ("hogwild", "Hogwild (lock-free shared memory)", "asynchronous updates"),
    ("async", "async parameter server", "asynchronous updates"),
    ("dgc", "DGC (99.9% sparse allgather)", "deep gradient compression"),
    ("model-parallel", "model parallel (filters split)", "model parallelism"),
    ("tensor-slicing", "tensor slicing (row bands, halo)", "tensor slicing"),
)
REVIEW_ROW_OF_LOWERING = {"im2col": "im2row/im2col", "im2row": "im2row/im2col",
                          "kn2row": "kn2row/kn2col", "kn2row-aa": "kn2row/kn2col",
                          "kn2col": "kn2row/kn2col"}
NOT_IN_REVIEW = "(not in the review)"
DECOMPOSITIONS = (("tucker2", "Tucker-2 of conv2, 1/4 params"),
                  ("cp", "CP of conv2, 1/4 params"))
DECOMPOSITION_RATIO = 4.0  # conv2 keeps at most 1/4 of its parameters
FINE_TUNE_LR_SCALE = 0.1   # a factored model is fine-tuned at lr / 10 (Lebedev et al. 2015)
ASYNC_SERVER_MOMENTUM = 0.0

# What the tests show when a worker dies (test files under tests/distributed/). The table
# cites them by letter; tests/test_strategies_table.py checks that each test exists.
EVIDENCE = {
    "a": ("tests/distributed/test_checkpoint_resume.py::"
          "test_a_failed_thread_stops_the_run_and_resume_loses_nothing",
          "threads: a failed rank stops the run; resuming from the epoch checkpoint ends "
          "bit-identical to an uninterrupted run (sync, DGC)"),
    "b": ("tests/distributed/test_mpi_jobs.py::"
          "test_a_killed_rank_ends_the_job_and_resume_matches_a_run_through",
          "MPI: a SIGKILLed rank ends the job within seconds, mpiexec names its pid; resume "
          "matches a run straight through (sync, DGC)"),
    "c": ("tests/distributed/test_checkpoint_resume.py::test_hogwild_resumes",
          "Hogwild resumes from its epoch checkpoint (within run-to-run noise)"),
    "d": ("tests/distributed/test_async_ps.py::test_a_worker_that_dies_does_not_stop_the_others",
          "async: the server goes on with the other workers; the dead worker's remaining "
          "slices are not reassigned; no update is applied twice"),
    "e": ("tests/distributed/test_checkpoint_resume.py::"
          "test_async_checkpoints_each_epoch_and_resumes_within_noise",
          "async: the server checkpoints each epoch; resume lands within noise"),
    "f": ("tests/distributed/test_split_checkpoint.py::"
          "test_a_failed_worker_stops_the_run_and_resume_loses_nothing",
          "threads: a failed worker stops the run; resuming from the epoch checkpoint ends "
          "bit-identical to an uninterrupted run, also re-split over another number of "
          "workers (model parallel, tensor slicing)"),
    "g": ("tests/distributed/test_split_checkpoint.py::"
          "test_mpi_a_killed_rank_ends_the_job_and_resume_matches_a_run_through",
          "MPI: a SIGKILLed rank ends the job, mpiexec names its pid; resume matches a run "
          "straight through (model parallel)"),
}
EVIDENCE_OF = {"sync": "ab", "dgc": "ab", "hogwild": "c", "async": "de",
               "model-parallel": "fg", "tensor-slicing": "f"}


@dataclass
class Config:
    data: str = "mnist"            # "mnist" or "synthetic" (random images, learnable labels)
    limit: int = 12_000            # training images
    eval_limit: int | None = None  # test images (None: all 10,000)
    epochs: int = 2
    workers: tuple = (1, 2, 4)
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    repeat: int = 1                # timed runs per cell; the median is reported
    probe_steps: int = 4           # global batches in a memory probe
    kernel_reps: int = 5           # timed conv2 forward+backward calls per thread count
    cp_iters: int = 200            # CP-ALS sweeps
    fault_timeout: float = 60.0    # seconds before a fault probe counts as hung
    only: tuple = ()               # row keys to run (empty: all)
    quick: bool = False
    notes: list = field(default_factory=list)


QUICK = dict(limit=256, eval_limit=256, workers=(1, 2), probe_steps=2, kernel_reps=1,
             cp_iters=10, fault_timeout=10.0)


# ------------------------------------------------------------------------------ data
def load_data(cfg):
    """(train, test, transform): MNIST's first cfg.limit images, or synthetic MNIST-shaped
    float32 images whose labels a CNN can learn (argmax of a fixed random projection)."""
    if cfg.data == "mnist":
        from minigrad.data.mnist import load_mnist
        from minigrad.data.transforms import mnist_normalize

        X, y, X_test, y_test = load_mnist()
        return (X[:cfg.limit], y[:cfg.limit]), (X_test, y_test), mnist_normalize
    if cfg.data != "synthetic":
        raise ValueError(f"--data must be mnist or synthetic, got {cfg.data!r}")
    rng = np.random.default_rng(cfg.seed)
    n_test = cfg.eval_limit or 256
    X = rng.standard_normal((cfg.limit + n_test, 1, 28, 28)).astype(np.float32)
    y = (X.reshape(len(X), -1) @ rng.standard_normal((784, 10))).argmax(axis=1)
    return (X[:cfg.limit], y[:cfg.limit]), (X[cfg.limit:], y[cfg.limit:]), None


def make_model(cfg, algo=None):
    """The MNIST CNN, initialised from cfg.seed (as `minigrad train mnist --seed` does)."""
    from minigrad.models import MnistCNN
    from minigrad.random import manual_seed

    manual_seed(cfg.seed)
    return MnistCNN(algo=algo)


def probe_data(cfg, data, workers, steps=None):
    """The first `steps` (default probe_steps) global batches, at least one sample per
    worker per step, and one batch of test images."""
    (X, y), (X_test, y_test), transform = data
    n = max((steps or cfg.probe_steps) * cfg.batch_size, workers)
    return (X[:n], y[:n]), (X_test[:cfg.batch_size], y_test[:cfg.batch_size]), transform


# ------------------------------------------------------------------------------ training
def train(strategy, model, data, cfg, workers, *, epochs=None, eval_limit="cfg",
          faults=None, transform=None):
    """One run of `strategy`; (summary, the function that ran it).

    sync, hogwild, async and dgc go through `train_distributed`; model parallel and tensor
    slicing too once launch.STRATEGIES lists them, else through their own functions."""
    from minigrad.distributed import launch

    (X, y), test, eval_transform = data
    kw = dict(workers=workers, epochs=epochs or cfg.epochs, batch_size=cfg.batch_size,
              lr=cfg.lr, optimizer="sgd", momentum=cfg.momentum, seed=cfg.seed,
              transform=transform or eval_transform, eval_transform=eval_transform,
              eval_limit=cfg.eval_limit if eval_limit == "cfg" else eval_limit)
    extra = {"faults": faults} if faults is not None else {}
    if strategy in ("sync", "hogwild", "async", "dgc"):
        if strategy == "async":  # the server's report holds what it sent back to workers
            extra.update(server_momentum=ASYNC_SERVER_MOMENTUM, details=True)
        return launch.train_distributed(strategy, model, (X, y), test, **kw, **extra), \
            "train_distributed"
    if strategy in launch.STRATEGIES and transform is None:
        return launch.train_distributed(strategy, model, (X, y), test, **kw, **extra), \
            "train_distributed"
    from minigrad.distributed.model_parallel import train_model_parallel
    from minigrad.distributed.tensor_slicing import train_tensor_slicing

    fn = {"model-parallel": train_model_parallel, "tensor-slicing": train_tensor_slicing}
    return fn[strategy](model, (X, y), test, **kw, **extra), fn[strategy].__name__


def moved_per_step_per_worker(strategy, s):
    """Bytes one worker moves over the network per training step (see the module doc)."""
    steps = max(int(s.get("steps") or 0), 1)
    if strategy == "hogwild":
        return 0.0  # the threads share the parameters: nothing crosses a wire
    if strategy == "async":
        # each worker step: a gradient up and the parameters down; the server sends what
        # the workers receive (summary "steps" counts every worker's steps)
        server = s["details"][0]
        return server["server_bytes_sent"] / steps
    return float(s["bytes_moved"] or 0) / steps / s["workers"]


def sent_per_step_per_worker(strategy, s):
    """Bytes one worker hands to the communicator per step (`bytes_sent`)."""
    steps = max(int(s.get("steps") or 0), 1)
    if strategy == "async":
        server = s["details"][0]
        return (s["bytes_sent"] - server["server_bytes_sent"]) / steps
    return float(s["bytes_sent"] or 0) / steps / (1 if strategy == "hogwild" else s["workers"])


KEEP = ("workers", "ranks", "steps", "train_seconds", "seconds_per_epoch",
        "images_per_second", "test_accuracy", "train_loss", "bytes_sent", "bytes_moved",
        "compression_ratio", "traffic_ratio", "compression_ratio_overall",
        "traffic_ratio_overall", "staleness_mean", "staleness_max", "param_bytes_per_worker",
        "optimizer_bytes_per_worker", "activation_bytes_per_worker", "bytes_per_step",
        "halo_bytes_per_step", "threads")


def timed_run(strategy, cfg, data, workers, algo=None, model=None):
    """Train cfg.repeat times; the run with the median seconds per epoch, trimmed to KEEP,
    plus the bytes per worker per step; (record, trained model of that run)."""
    runs = []
    for _ in range(cfg.repeat):
        m = copy.deepcopy(model) if model is not None else make_model(cfg, algo)
        s, via = train(strategy, m, data, cfg, workers)
        runs.append((s["seconds_per_epoch"], s, via, m))
    runs.sort(key=lambda r: r[0])
    _, s, via, m = runs[len(runs) // 2]
    rec = {k: s.get(k) for k in KEEP if k in s}
    rec.update(via=via, repeats=[r[0] for r in runs],
               moved_per_step_per_worker=moved_per_step_per_worker(strategy, s),
               sent_per_step_per_worker=sent_per_step_per_worker(strategy, s))
    if strategy == "dgc" and s.get("traffic_ratio"):
        # at the final sparsity (DGC's warm-up steps move more): a dense ring allreduce's
        # 2(N-1)/N x gradient, divided by the measured traffic ratio
        n = s["workers"]
        dense = 2 * (n - 1) / n * 4 * sum(p.size for p in m.parameters())
        rec["moved_per_step_per_worker_final"] = dense / s["traffic_ratio"]
    return rec, m


# ------------------------------------------------------------------------------ memory
def traced_peak(fn):
    """(peak bytes numpy and Python allocated while fn ran, fn's result)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


def probe_run(strategy, cfg, data, workers, model):
    """(tracemalloc's peak, the run's summary) of a short run of `strategy` on a copy of
    `model`: one epoch of the first cfg.probe_steps global batches, scored on one batch."""
    small = probe_data(cfg, data, workers)
    m = copy.deepcopy(model)
    peak, (s, _) = traced_peak(lambda: train(strategy, m, small, cfg, workers, epochs=1,
                                             eval_limit=None))
    return peak, s


def memory_probe(strategy, cfg, data, workers, model):
    """Peak traced bytes per state-holding thread over a short run of `strategy`."""
    peak, s = probe_run(strategy, cfg, data, workers, model)
    ranks = int(s.get("ranks") or workers)
    return {"peak_bytes_total": int(peak), "ranks": ranks,
            "peak_bytes_per_worker": peak / ranks,
            "moved_per_step_per_worker": moved_per_step_per_worker(strategy, s)}


# ------------------------------------------------------------------------------ faults
def fault_probe(strategy, cfg, data, die_step=2):
    """Kill rank 1 (async: worker 1) at its step `die_step` of a 2-worker run on a few
    batches; what happened, measured. A run still going after cfg.fault_timeout hung."""
    from minigrad.distributed import launch
    from minigrad.distributed.common import Faults
    from minigrad.distributed.model_parallel import train_model_parallel
    from minigrad.distributed.tensor_slicing import train_tensor_slicing

    small = probe_data(cfg, data, 2, steps=die_step + 2)  # the failure is mid-epoch
    X = small[0][0]
    box = {}

    def go():
        t0 = time.perf_counter()
        try:
            s, _ = train(strategy, make_model(cfg), small, cfg, 2, epochs=1,
                         eval_limit=None, faults=Faults(die={1: die_step}))
            box["summary"] = s
        except Exception as e:  # the outcome being measured
            box["error"] = e
        box["seconds"] = time.perf_counter() - t0

    t = threading.Thread(target=go, name="fault-probe", daemon=True)
    t.start()
    t.join(cfg.fault_timeout)
    if t.is_alive():
        return {"outcome": "hung", "cell": f"hung (> {cfg.fault_timeout:.0f} s)",
                "detail": "the run neither finished nor raised"}
    if "error" in box:
        e = box["error"]
        resumable = "save" in inspect.signature(
            {"model-parallel": train_model_parallel, "tensor-slicing": train_tensor_slicing}
            .get(strategy, launch.train_distributed)).parameters
        return {"outcome": "stops", "error": type(e).__name__, "detail": str(e)[:400],
                "seconds": box["seconds"], "resumable": resumable,
                "cell": f"run stops ({type(e).__name__}, {box['seconds']:.1f} s); "
                        + ("resume from the last epoch checkpoint" if resumable
                           else "no checkpoint to resume from")}
    s = box["summary"]
    if strategy == "async":
        expected = math.ceil(len(X) / cfg.batch_size) * 2  # pushes of an unbroken epoch
        applied = int(s["updates_applied"])
        return {"outcome": "continues", "dead_workers": s["dead_workers"],
                "updates_applied": applied, "updates_expected": expected,
                "seconds": box["seconds"],
                "cell": (f"the others finish; {applied} of {expected} updates applied "
                         f"({1 - applied / expected:.0%} of the epoch lost)")}
    return {"outcome": "finished", "seconds": box["seconds"],
            "cell": "finished: the failure went unnoticed"}


def fault_cell(strategy, probe):
    letters = EVIDENCE_OF.get(strategy, "")
    cite = f" [{', '.join(letters)}]" if letters else " [no test]"
    return probe["cell"] + cite


# ------------------------------------------------------------------------------ kernels
def _fwd_bwd(layer, x):
    layer.zero_grad()
    from minigrad.tensor import Tensor

    xt = Tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(np.ones_like(y.data))


def _median_time(fn, reps):
    fn()  # warm-up: Numba compilation, thread pools
    times = []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_probe(layer, cfg):
    """conv2's forward+backward (batch of cfg.batch_size, 32x14x14 in, 64 out, 3x3 pad 1)
    on one thread and on all cores; traced peak of one call."""
    from threadpoolctl import threadpool_limits

    from minigrad import threads

    x = np.random.default_rng(0).standard_normal((cfg.batch_size, 32, 14, 14))
    x = x.astype(np.float32)
    cores = min(threads.host_cores(), threads._numba_pool_size())
    out = {"threads": cores}
    for n, key in ((1, "seconds_1_thread"), (cores, "seconds_all_cores")):
        before = threads.set_numba_threads(n)
        try:
            with threadpool_limits(limits=n, user_api="blas"):
                out[key] = _median_time(lambda: _fwd_bwd(layer, x), cfg.kernel_reps)
        finally:
            threads.set_numba_threads(before)
    out["thread_speedup"] = out["seconds_1_thread"] / out["seconds_all_cores"]
    out["peak_bytes"], _ = traced_peak(lambda: _fwd_bwd(layer, x))
    return out


# ------------------------------------------------------------------------------ measure
def _selected(cfg, key):
    return not cfg.only or key in cfg.only


def measure(cfg, log=print):
    """Every row's numbers: the document strategies.json holds."""
    from minigrad import kernels, nn
    from minigrad.tools.compress import compress_model
    from minigrad.train import evaluate

    if 1 not in cfg.workers:
        raise ValueError("--workers must include 1: speedups are over one worker")
    data = load_data(cfg)
    (X, _), (X_test, y_test), transform = data
    if cfg.eval_limit:
        X_test, y_test = X_test[:cfg.eval_limit], y_test[:cfg.eval_limit]
    top = max(cfg.workers)
    rows, sync_model = [], None
    t_start = time.perf_counter()
    warm_up(cfg, data, log)

    for key, label, review in TRAINING:
        need_sync_model = key == "sync" and (_selected(cfg, "tucker2") or _selected(cfg, "cp"))
        if not (_selected(cfg, key) or need_sync_model):
            continue
        row = {"key": key, "label": label, "review_row": review, "kind": "training",
               "runs": {}, "memory": {}}
        for n in cfg.workers:
            log(f"[strategies] {key} x{n}: training {cfg.epochs} epoch(s) on {len(X)} images")
            rec, trained = timed_run(key, cfg, data, n)
            if key == "sync" and n == 1:
                sync_model = trained
            row["runs"][str(n)] = rec
            row["memory"][str(n)] = memory_probe(key, cfg, data, n, make_model(cfg))
        t1 = row["runs"]["1"]["seconds_per_epoch"]
        row["speedup"] = {str(n): t1 / row["runs"][str(n)]["seconds_per_epoch"]
                          for n in cfg.workers}
        log(f"[strategies] {key}: fault probe (rank 1 dies at its step 2 of 2 workers)")
        row["fault"] = fault_probe(key, cfg, data)
        if _selected(cfg, key):
            rows.append(row)

    for algo in kernels.ALGORITHMS:
        if not _selected(cfg, algo):
            continue
        log(f"[strategies] lowering {algo}: training {cfg.epochs} epoch(s), one worker")
        rec, _ = timed_run("sync", cfg, data, 1, algo=algo)
        row = {"key": algo, "label": f"lowering {algo} (one worker)",
               "review_row": REVIEW_ROW_OF_LOWERING.get(algo, NOT_IN_REVIEW),
               "kind": "lowering", "runs": {"1": rec},
               "memory": {"1": memory_probe("sync", cfg, data, 1, make_model(cfg, algo))},
               "workspace_bytes": kernels.workspace_bytes(
                   algo, (cfg.batch_size, 32, 14, 14), (64, 32, 3, 3), 1, 1),
               "kernel": kernel_probe(nn.Conv2d(32, 64, 3, padding=1, algo=algo), cfg)}
        rows.append(row)

    base_kernel = None
    for method, label in DECOMPOSITIONS:
        if not _selected(cfg, method) or sync_model is None:
            continue
        log(f"[strategies] {method}: factoring conv2 of the N = 1 sync model, fine-tuning")
        new, report = compress_model(sync_model, method, ratio=DECOMPOSITION_RATIO,
                                     layers=["conv2"], input_shape=(1, 1, 28, 28),
                                     cp_iters=cfg.cp_iters)
        acc_factored = evaluate(new, X_test, y_test, transform=transform)
        tune = replace(cfg, lr=cfg.lr * FINE_TUNE_LR_SCALE)
        rec, _ = timed_run("sync", tune, data, 1, model=new)
        if base_kernel is None:
            base_kernel = kernel_probe(sync_model.conv2, cfg)
        layer = report["layers"][0]
        row = {"key": method, "label": label, "review_row": "tensor decomposition",
               "kind": "decomposition", "runs": {"1": rec},
               "memory": {str(n): memory_probe("sync", cfg, data, n, new)
                          for n in (1, top)},
               "kernel": kernel_probe(new.conv2, cfg), "unfactored_kernel": base_kernel,
               "decomposition": {
                   "ranks": layer["ranks"], "rel_error": layer["rel_error"],
                   "conv2_params": [layer["params_before"], layer["params_after"]],
                   "model_params": [report["params_before"], report["params_after"]],
                   "conv2_flops": [layer["flops_before"], layer["flops_after"]],
                   "executed_flops": layer["executed_flops"],
                   "accuracy_before": rows_sync_accuracy(rows, sync_model, X_test, y_test,
                                                         transform),
                   "accuracy_factored": acc_factored,
                   "accuracy_fine_tuned": rec["test_accuracy"],
                   "fine_tune_epochs": cfg.epochs, "fine_tune_lr": tune.lr}}
        rows.append(row)

    return {"meta": meta(cfg, data, time.perf_counter() - t_start), "rows": rows,
            "evidence": {k: {"test": t, "shows": what} for k, (t, what) in EVIDENCE.items()}}


def warm_up(cfg, data, log):
    """Run every strategy and lowering once on a few batches, untimed: the first call of a
    Numba kernel loads (or compiles) it, which must not land in the first timed epoch nor
    in a memory probe (compilation allocates Python objects that tracemalloc counts)."""
    from minigrad import kernels

    log("[strategies] warm-up: every strategy and lowering on a few batches, untimed")
    n = min(2, max(cfg.workers))
    small = probe_data(cfg, data, n)
    for key, _, _ in TRAINING:
        train(key, make_model(cfg), small, cfg, n, epochs=1, eval_limit=None)
    for algo in kernels.ALGORITHMS:
        train("sync", make_model(cfg, algo), small, cfg, 1, epochs=1, eval_limit=None)


def rows_sync_accuracy(rows, sync_model, X_test, y_test, transform):
    """The N = 1 sync model's test accuracy (from its row, else scored now)."""
    for r in rows:
        if r["key"] == "sync":
            return r["runs"]["1"]["test_accuracy"]
    from minigrad.train import evaluate

    return evaluate(sync_model, X_test, y_test, transform=transform)


def _git():
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "--short", "HEAD") or None,
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def meta(cfg, data, seconds):
    from minigrad import threads

    (X, _), (X_test, _), _ = data
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    c = asdict(cfg)
    c["workers"] = list(cfg.workers)
    c["only"] = list(cfg.only)
    return {"config": c, "n_train": len(X),
            "n_test": min(len(X_test), cfg.eval_limit or len(X_test)),
            "cores": threads.host_cores(), "cpu": cpu, "python": platform.python_version(),
            "numpy": np.__version__, "git": _git(), "seconds": seconds,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": "python bench/strategies.py " + " ".join(sys.argv[1:])
            if Path(sys.argv[0]).name == "strategies.py" else None}


# ------------------------------------------------------------------------------ the table
COLUMNS = ("strategy", "review's row", "time per epoch, s (scalability)",
           "speedup over 1 worker (parallelism)", "when a worker dies (fault tolerance)",
           "peak memory per worker, MB (memory efficiency)",
           "bytes per step per worker (communication bandwidth)", "test accuracy, %")


def _mb(b):
    return f"{b / 2**20:.1f}"


def _bytes(b):
    if b is None:
        return "—"
    if b == 0:
        return "0"
    for unit, scale in (("MB", 2**20), ("kB", 2**10)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def cells(row, workers):
    """The row's Markdown cells, in COLUMNS order."""
    ns = [str(n) for n in workers]
    runs, mem, top = row["runs"], row["memory"], str(max(workers))
    if row["kind"] == "training":
        time_c = " / ".join(f"{runs[n]['seconds_per_epoch']:.1f}" for n in ns)
        speed = " / ".join(f"{row['speedup'][n]:.2f}x" for n in ns if n != "1")
        memory = " / ".join(_mb(mem[n]["peak_bytes_per_worker"]) for n in ("1", top))
        moved = _bytes(runs[top]["moved_per_step_per_worker"])
        if row["key"] == "hogwild":
            moved = "0 (shared memory)"
        if "moved_per_step_per_worker_final" in runs[top]:
            moved += f" ({_bytes(runs[top]['moved_per_step_per_worker_final'])} sparse)"
        acc = " / ".join(f"{100 * runs[n]['test_accuracy']:.1f}" for n in ns)
        fault = fault_cell(row["key"], row["fault"])
    else:
        k = row["kernel"]
        time_c = f"{runs['1']['seconds_per_epoch']:.1f} (N = 1 only)"
        speed = f"{k['thread_speedup']:.2f}x on {k['threads']} threads (conv2, no workers)"
        fault = "— (a kernel in every worker)"
        memory = (f"{_mb(mem['1']['peak_bytes_per_worker'])} (conv2 fwd+bwd "
                  f"{_mb(k['peak_bytes'])})")
        moved = "0 (one worker)"
        acc = f"{100 * runs['1']['test_accuracy']:.1f}"
        if row["kind"] == "decomposition":
            d = row["decomposition"]
            memory = " / ".join(_mb(mem[n]["peak_bytes_per_worker"]) for n in ("1", top))
            memory += f" (conv2 params {d['conv2_params'][0]:,} -> {d['conv2_params'][1]:,})"
            moved = f"{_bytes(mem[top]['moved_per_step_per_worker'])} (sync, N = {top})"
            acc = (f"{100 * d['accuracy_before']:.1f} -> {100 * d['accuracy_factored']:.1f} "
                   f"factored -> {100 * d['accuracy_fine_tuned']:.1f} "
                   f"(+{d['fine_tune_epochs']} epoch(s) at lr {d['fine_tune_lr']:g})")
            time_c = f"{runs['1']['seconds_per_epoch']:.1f} (fine-tune, N = 1)"
    return [row["label"], row["review_row"], time_c, speed, fault, memory, moved, acc]


def markdown(doc):
    m, cfg = doc["meta"], doc["meta"]["config"]
    workers = cfg["workers"]
    ns = " / ".join(str(n) for n in workers)
    top = max(workers)
    git = m["git"]
    commit = (f"commit {git['commit']}" + (" + uncommitted changes" if git["dirty"] else "")
              if git["commit"] else "no git commit")
    data = ("MNIST" if cfg["data"] == "mnist" else "synthetic MNIST-shaped data")
    head = [
        f"Measured on {data}: {m['n_train']:,} training images, {cfg['epochs']} epoch(s) per "
        f"run, global batch {cfg['batch_size']}, SGD lr {cfg['lr']} (momentum "
        f"{cfg['momentum']} where the strategy has it; Hogwild plain SGD, async's server "
        f"without momentum), test accuracy on {m['n_test']:,} test images. Workers are "
        f"threads of one process on {m['cores']} cores ({m['cpu']}); {commit}; "
        f"{m['date']}, {m['seconds'] / 60:.1f} min in all."
        + (" QUICK SMOKE RUN: the numbers mean nothing." if cfg["quick"] else ""),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    head[2] = head[2].replace("time per epoch, s", f"time per epoch, s, N = {ns}")
    head[2] = head[2].replace("speedup over 1 worker",
                              "speedup over 1 worker, N = "
                              + " / ".join(str(n) for n in workers if n != 1))
    head[2] = head[2].replace("per worker, MB", f"per worker, MB, N = 1 / {top}")
    head[2] = head[2].replace("per step per worker", f"per step per worker, N = {top}")
    head[2] = head[2].replace("test accuracy, %", f"test accuracy, %, N = {ns}")
    body = ["| " + " | ".join(cells(r, workers)) + " |" for r in doc["rows"]]
    notes = [
        "",
        "How each column is measured (`bench/strategies.py`, whose docstring has the "
        "details):",
        "",
        "* **time per epoch**: training seconds of one epoch (evaluation excluded), "
        "one run per cell; **speedup**: t(N = 1) / t(N). Kernel rows (lowerings, factored "
        "layers) have no workers: their speedup is conv2's forward+backward on all cores "
        "over one thread.",
        "* **when a worker dies**: rank 1 (async: worker 1) raises at its 2nd step of a "
        "2-worker run, measured here; the letters cite the tests that pin the behaviour "
        "down (below).",
        "* **peak memory per worker**: tracemalloc's peak over a short run "
        f"({cfg['probe_steps']} global batches and the evaluation of one), divided by the "
        "threads that hold state (async: the workers and the server). Hogwild's workers "
        "share one model. Kernel rows: the whole CNN on one worker, and one conv2 "
        "forward+backward alone.",
        "* **bytes per step per worker**: the communicator's `bytes_moved` (what a rank "
        "receives under ring allreduce / allgather / point-to-point, which is also what it "
        "sends) per step and worker; for async, the parameters the server sends back per "
        "worker step (the worker sends a gradient of the same size). DGC: over the whole "
        "epoch, its dense warm-up included; in brackets at the final 99.9% sparsity.",
        "* **test accuracy**: after the same epochs. Decomposition: the N = 1 sync model, "
        "then conv2 factored (no training), then after fine-tuning as many epochs at a "
        "tenth of the learning rate.",
        "",
        "Fault-tolerance evidence:",
        "",
    ]
    notes += [f"* [{k}] `{e['test']}`: {e['shows']}." for k, e in doc["evidence"].items()]
    notes += ["* [no test]: no test covers a failure of this strategy; the cell is the "
              "probe's outcome only."]
    return "\n".join(head + body + notes) + "\n"


# ------------------------------------------------------------------------------ figure
def figure(doc, out_dir, formats=FORMATS):
    """Six panels: time and speedup against N, memory, bytes, accuracy, and the kernels'
    time against their traced memory. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = doc["rows"], doc["meta"]["config"]
    workers = cfg["workers"]
    top = str(max(workers))
    train_rows = [r for r in rows if r["kind"] == "training"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    (a_time, a_speed, a_mem), (a_bytes, a_acc, a_kern) = axes

    for r in train_rows:
        ns = [n for n in workers if str(n) in r["runs"]]
        a_time.plot(ns, [r["runs"][str(n)]["seconds_per_epoch"] for n in ns], "o-",
                    label=r["key"])
        a_speed.plot(ns, [r["speedup"][str(n)] for n in ns], "o-", label=r["key"])
    a_time.set(title="scalability: time per epoch", xlabel="workers N", ylabel="s",
               xticks=workers)
    a_time.set_ylim(bottom=0)
    a_speed.plot(workers, workers, "k:", label="ideal")
    a_speed.axhline(doc["meta"]["cores"], color="0.6", lw=0.8, ls="--")
    a_speed.set(title=f"parallelism: speedup over N = 1 ({doc['meta']['cores']} cores: "
                "dashed)", xlabel="workers N", ylabel="t(1) / t(N)", xticks=workers)
    a_time.legend(fontsize=8)

    names = [r["key"] for r in rows]
    x = np.arange(len(rows))
    mem1 = [r["memory"]["1"]["peak_bytes_per_worker"] / 2**20 for r in rows]
    memN = [r["memory"].get(top, r["memory"]["1"])["peak_bytes_per_worker"] / 2**20
            for r in rows]
    a_mem.bar(x - 0.2, mem1, 0.4, label="N = 1")
    a_mem.bar(x + 0.2, memN, 0.4, label=f"N = {top} (kernel rows: N = 1)")
    a_mem.set(title="memory efficiency: traced peak per worker", ylabel="MB")
    a_mem.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    a_mem.legend(fontsize=8)

    moved = [max(r["runs"][top]["moved_per_step_per_worker"], 1.0) for r in train_rows]
    a_bytes.bar(range(len(train_rows)), moved, color="C1")
    a_bytes.set_yscale("log")
    a_bytes.set(title=f"communication: bytes moved per step per worker, N = {top}",
                ylabel="bytes (log; 1 = nothing)")
    a_bytes.set_xticks(range(len(train_rows)), [r["key"] for r in train_rows], rotation=30,
                       ha="right", fontsize=8)

    acc = [100 * r["runs"].get(top, r["runs"]["1"])["test_accuracy"] for r in rows]
    a_acc.bar(x, acc, color="C2")
    lo = min(acc) if acc else 0
    a_acc.set_ylim(max(0.0, lo - 5), 100)
    a_acc.set(title=f"test accuracy after {cfg['epochs']} epoch(s) (N = {top}; kernel "
              "rows N = 1)", ylabel="%")
    a_acc.set_xticks(x, names, rotation=60, ha="right", fontsize=8)

    for r in rows:
        if "kernel" in r:
            k = r["kernel"]
            a_kern.scatter(k["peak_bytes"] / 2**20, 1e3 * k["seconds_1_thread"])
            a_kern.annotate(r["key"], (k["peak_bytes"] / 2**20, 1e3 * k["seconds_1_thread"]),
                            fontsize=8, xytext=(3, 3), textcoords="offset points")
    a_kern.set(title="kernels: conv2 forward+backward, one thread", xlabel="traced peak, MB",
               ylabel="ms (log)", yscale="log")

    git = doc["meta"]["git"]
    foot = (f"bench/strategies.py  {doc['meta']['date']}  commit {git['commit']}"
            + ("  DIRTY TREE" if git["dirty"] else "")
            + ("  QUICK SMOKE RUN" if cfg["quick"] else ""))
    fig.text(0.01, 0.005, foot, fontsize=7, color="red" if git["dirty"] else "0.3")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    written = []
    for fmt in formats:
        path = Path(out_dir) / f"strategies.{fmt}"
        fig.savefig(path, dpi=110)
        written.append(path)
    plt.close(fig)
    return written


# ------------------------------------------------------------------------------ docs
def replace_between_markers(text, block):
    """text with everything between BEGIN and END replaced by block (markers kept)."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"the markers {BEGIN} ... {END} are missing or out of order")
    return text[:i + len(BEGIN)] + "\n" + block.rstrip("\n") + "\n" + text[j:]


def update_docs(md, out_dir, docs=DOCS):
    """Rewrite the marked region of each doc that has the markers; the docs changed."""
    changed = []
    for doc in docs:
        doc = Path(doc)
        if not doc.is_file() or BEGIN not in doc.read_text():
            continue
        fig = os.path.relpath(Path(out_dir) / "strategies.png", doc.parent)
        block = md + f"\n![the strategies measured]({fig})\n"
        doc.write_text(replace_between_markers(doc.read_text(), block))
        changed.append(doc)
    return changed


# ------------------------------------------------------------------------------ CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python bench/strategies.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "strategies"),
                   help="folder for strategies.md/.json/.png/.svg")
    p.add_argument("--data", choices=("mnist", "synthetic"), default="mnist")
    p.add_argument("--limit", type=int, help="training images (default 12000)")
    p.add_argument("--eval-limit", type=int, help="test images (default all)")
    p.add_argument("--epochs", type=int, help="epochs per run (default 2)")
    p.add_argument("--workers", help="comma-separated N, must include 1 (default 1,2,4)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--repeat", type=int, help="timed runs per cell, median (default 1)")
    p.add_argument("--probe-steps", type=int)
    p.add_argument("--kernel-reps", type=int)
    p.add_argument("--fault-timeout", type=float,
                   help="seconds before a fault probe counts as hung (default 60)")
    p.add_argument("--only", help="comma-separated row keys (sync,dgc,im2col,tucker2,...)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 256 images, N = 1, 2, short probes")
    p.add_argument("--format", default=",".join(FORMATS), help="figure formats")
    p.add_argument("--update-docs", action="store_true",
                   help="rewrite the marked table in docs/strategies.md (and README.md)")
    return p.parse_args(argv)


def config_from(args):
    cfg = Config(**(QUICK if args.quick else {}), quick=args.quick, data=args.data)
    for name in ("limit", "eval_limit", "epochs", "batch_size", "lr", "momentum", "seed",
                 "repeat", "probe_steps", "kernel_reps", "fault_timeout"):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.workers:
        cfg.workers = tuple(sorted({int(n) for n in args.workers.split(",")}))
    if args.only:
        cfg.only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = measure(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    md = markdown(doc)
    (out / "strategies.json").write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")
    (out / "strategies.md").write_text("# Parallel strategies, measured\n\n" + md)
    written = figure(doc, out, tuple(f for f in args.format.split(",") if f))
    print(md)
    print(f"wrote {out / 'strategies.md'}, {out / 'strategies.json'}, "
          + ", ".join(str(w) for w in written))
    if args.update_docs:
        for d in update_docs(md, out):
            print(f"updated {d}")
    return 0


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the checkout
    sys.exit(main())
