"""Memory per worker and bytes per step against the number of workers N, for the three ways
minigrad splits training: data parallelism (sync allreduce: the batch), model parallelism
(each layer's filters) and spatial parallelism (tensor slicing: each feature map's rows).

    python bench/split_memory.py --out docs/results/split              # MNIST, N = 1..4
    minigrad plot docs/results/split/split.json --out docs/figures     # split.png, .svg
    python bench/split_memory.py --quick --data synthetic --out /tmp/split   # seconds

writes split.json (pytest-benchmark's layout, group "split-memory", which `minigrad plot`
draws as its "split" figure) and split.md (the table) into --out.

These are counts, not timings: the same on any machine, so one short run per cell will do
(--steps global batches of --batch-size, one epoch, the MNIST CNN, threads as workers).
Each (strategy, N) runs once through bench/strategies.py's `probe_run` (tracemalloc on),
and the numbers come from the run's own summary and communicator counters:

    param_bytes_per_worker       parameters a worker holds: sync a whole replica, model
                                 parallel its share of every layer's filters (~1/N),
                                 tensor slicing the whole weights
    optimizer_bytes_per_worker   its optimizer's state (SGD momentum: one array per
                                 parameter it holds)
    activation_bytes_per_worker  arrays its forward keeps alive for the backward
                                 (`model_parallel.graph_bytes` of the first step): sync on
                                 its slice of the batch (B/N images); model parallel every
                                 split layer's whole (gathered) input but only its own
                                 channels of each output; tensor slicing its band of each
                                 map with the halo rows, and the replicated dense head
    peak_bytes_per_worker        tracemalloc's peak over the run / N: everything NumPy
                                 allocated (data, lowering workspace, messages), the
                                 strategies table's "peak memory per worker"; the one
                                 number that moves a little run to run (a few %: when
                                 the worker threads allocate relative to each other)
    sent_per_step_per_worker     bytes a worker hands to the communicator per step
    moved_per_step_per_worker    bytes a worker receives per step over the network under
                                 the textbook algorithms (ring allreduce, allgather,
                                 point-to-point), which is also what it sends
    halo_bytes_per_step_per_worker  tensor slicing: the halo rows and their gradients, a
                                 part of the above (0 for the others)

Memory is the largest worker's (worker 0 of an uneven split); bytes per step are the mean
over the workers (tensor slicing's two edge bands have one neighbour, the others two). The
split strategies report their memory themselves (`summary["param_bytes_per_worker"]`, ...);
sync's worker is measured the same way here (`sync_worker_state`): a replica, its
optimizer after a step, and the graph of its forward on worker 0's slice of the first batch.
The record's "stats" hold the traced run's seconds per step, as pytest-benchmark's layout
requires a time; tracemalloc slows a run down, so nothing draws them.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the checkout

from bench import strategies as S  # noqa: E402  (after the path: the checkout's bench)

GROUP = "split-memory"
STRATEGIES = (("sync", "data parallel (sync allreduce)"),
              ("model-parallel", "model parallel (filters split)"),
              ("tensor-slicing", "tensor slicing (row bands, halo)"))
WORKERS = (1, 2, 3, 4)
STEPS, BATCH = 4, 64
QUICK = dict(workers=(1, 2), steps=2)
FIELDS = ("param_bytes_per_worker", "optimizer_bytes_per_worker",
          "activation_bytes_per_worker", "peak_bytes_per_worker", "sent_per_step_per_worker",
          "moved_per_step_per_worker", "halo_bytes_per_step_per_worker")


def config(data="mnist", workers=WORKERS, steps=STEPS, batch_size=BATCH, seed=0,
           quick=False):
    """bench/strategies.py's Config for runs of `steps` global batches (one epoch)."""
    return S.Config(data=data, limit=steps * batch_size, eval_limit=batch_size, epochs=1,
                    workers=tuple(workers), batch_size=batch_size, seed=seed,
                    probe_steps=steps, quick=quick)


def sync_worker_state(cfg, data, workers, model):
    """What one sync worker of `workers` holds, measured as the split strategies measure
    theirs (minigrad.distributed.model_parallel): its replica's parameters, its optimizer's
    state after one step, and the activations of its forward on worker 0's slice (the
    largest) of the first global batch."""
    from minigrad import functional as F
    from minigrad.distributed.common import ShardedBatches
    from minigrad.distributed.model_parallel import graph_bytes, optimizer_bytes, param_bytes
    from minigrad.tensor import Tensor
    from minigrad.train import make_optimizer

    (X, y), _, transform = data
    batches = ShardedBatches((X, y), cfg.batch_size, cfg.seed, 0, workers, transform)
    _, xb, yb, _ = next(iter(batches.epoch(0)))
    m = copy.deepcopy(model)
    opt = make_optimizer("sgd", m.parameters(), cfg.lr, momentum=cfg.momentum)
    logits = m(Tensor(xb))
    act = graph_bytes(logits, m.parameters())
    F.cross_entropy(logits, yb).backward()
    opt.step()
    return {"param_bytes_per_worker": param_bytes(m.parameters()),
            "optimizer_bytes_per_worker": optimizer_bytes(opt),
            "activation_bytes_per_worker": act, "images_per_worker": len(yb)}


def measure_one(strategy, cfg, data, workers):
    """One record's extra_info and seconds per step: (extra, seconds)."""
    model = S.make_model(cfg)
    peak, s = S.probe_run(strategy, cfg, data, workers, model)
    steps = max(int(s["steps"]), 1)
    extra = {"strategy": strategy, "workers": workers, "steps": int(s["steps"]),
             "batch_size": cfg.batch_size,
             "param_bytes_total": int(sum(p.data.nbytes for p in model.parameters())),
             "peak_bytes_per_worker": peak / workers,
             "sent_per_step_per_worker": S.sent_per_step_per_worker(strategy, s),
             "moved_per_step_per_worker": S.moved_per_step_per_worker(strategy, s)}
    if strategy == "sync":
        extra.update(sync_worker_state(cfg, data, workers, model))
        extra["halo_bytes_per_step_per_worker"] = 0.0
    else:
        extra.update({k: int(s[k]) for k in ("param_bytes_per_worker",
                                             "optimizer_bytes_per_worker",
                                             "activation_bytes_per_worker")})
        extra["halo_bytes_per_step_per_worker"] = float(
            np.mean(s["per_rank"]["halo_bytes"]) / steps)
        extra["images_per_worker"] = cfg.batch_size  # every worker runs the whole batch
    return extra, s["train_seconds"] / steps


def measure(cfg, log=print):
    """The results document: pytest-benchmark's layout, one record per (strategy, N)."""
    from bench.conftest import minigrad_machine_info

    data = S.load_data(cfg)
    small = S.probe_data(cfg, data, 2)
    log("[split] warm-up: each strategy once on 2 workers, untimed (kernels load first)")
    for key, _ in STRATEGIES:
        S.train(key, S.make_model(cfg), small, cfg, 2, epochs=1, eval_limit=None)
    records = []
    for key, label in STRATEGIES:
        for n in cfg.workers:
            log(f"[split] {key} x{n}: {cfg.probe_steps} steps of {cfg.batch_size} images")
            extra, seconds = measure_one(key, cfg, data, n)
            extra["label"] = label
            records.append({
                "name": f"split[{key}-{n}]", "fullname": f"bench/split_memory.py::{key}-{n}",
                "group": GROUP, "params": {"strategy": key, "workers": n},
                "stats": {"mean": seconds, "median": seconds, "min": seconds,
                          "max": seconds, "stddev": 0.0, "rounds": 1, "iterations": 1},
                "extra_info": extra})
    (X, _), _, _ = data
    return {"machine_info": {"minigrad": minigrad_machine_info()},
            "commit_info": {},
            "datetime": datetime.datetime.now().isoformat(timespec="seconds"),
            "version": "bench/split_memory.py",
            "config": {"data": cfg.data, "n_train": len(X), "steps": cfg.probe_steps,
                       "batch_size": cfg.batch_size, "workers": list(cfg.workers),
                       "optimizer": "sgd", "momentum": cfg.momentum, "seed": cfg.seed,
                       "quick": cfg.quick},
            "benchmarks": records}


def _bytes(b):
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def markdown(doc):
    cfg = doc["config"]
    git = doc["machine_info"]["minigrad"].get("git") or {}
    commit = (f"commit {str(git.get('commit'))[:7]}"
              + (" + uncommitted changes" if git.get("dirty") else "")
              if git.get("commit") else "no git commit")
    head = [
        f"Per worker, against the number of workers N: the MNIST CNN, global batch "
        f"{cfg['batch_size']}, SGD with momentum {cfg['momentum']}, {cfg['steps']} steps on "
        f"{'MNIST' if cfg['data'] == 'mnist' else 'synthetic MNIST-shaped'} images, threads "
        f"as workers; {commit}; {doc['datetime']}. Counts, not timings "
        "(`bench/split_memory.py`, whose docstring defines each column)."
        + (" QUICK SMOKE RUN." if cfg["quick"] else ""),
        "",
        "| strategy | N | parameters | optimizer state | activations | traced peak | "
        "sent / step | moved / step | halo / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for r in doc["benchmarks"]:
        e = r["extra_info"]
        halo = (_bytes(e["halo_bytes_per_step_per_worker"])
                if e["strategy"] == "tensor-slicing" else "—")
        rows.append(f"| {e['label']} | {e['workers']} | {_bytes(e['param_bytes_per_worker'])} "
                    f"| {_bytes(e['optimizer_bytes_per_worker'])} "
                    f"| {_bytes(e['activation_bytes_per_worker'])} "
                    f"| {_bytes(e['peak_bytes_per_worker'])} "
                    f"| {_bytes(e['sent_per_step_per_worker'])} "
                    f"| {_bytes(e['moved_per_step_per_worker'])} | {halo} |")
    notes = [
        "",
        "Memory: the largest worker's. Activations: what the forward keeps for the "
        "backward (sync on its B/N images; model parallel every split layer's whole "
        "gathered input, but only its own channels of each output; tensor slicing its band "
        "of each map with halo rows, and the replicated head). Traced "
        "peak: tracemalloc's peak over the run / N (data, workspace and messages included; "
        "it varies by a few % run to run, as the worker threads interleave). "
        "Bytes per step: the mean over workers; *sent* is what a worker hands to the "
        "communicator, *moved* what it receives over the network (and sends) under ring "
        "allreduce, allgather and point-to-point; *halo* is the part of tensor slicing's "
        "that is halo rows and their gradients. 1 KiB = 1024 bytes, 1 MiB = 1024 KiB.",
    ]
    return "\n".join(head + rows + notes) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python bench/split_memory.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "split"),
                   help="folder for split.json and split.md")
    p.add_argument("--data", choices=("mnist", "synthetic"), default="mnist")
    p.add_argument("--workers", help="comma-separated N (default 1,2,3,4)")
    p.add_argument("--steps", type=int, help=f"global batches per run (default {STEPS})")
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: N = 1, 2, 2 steps")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    workers = QUICK["workers"] if args.quick else WORKERS
    if args.workers:
        workers = tuple(sorted({int(n) for n in args.workers.split(",")}))
    steps = args.steps or (QUICK["steps"] if args.quick else STEPS)
    cfg = config(args.data, workers, steps, args.batch_size, args.seed, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = measure(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    (out / "split.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (out / "split.md").write_text("# Memory and bytes per worker: data, model and spatial "
                                  "parallelism\n\n" + md)
    print(md)
    print(f"wrote {out / 'split.json'}, {out / 'split.md'}; draw the figure with: "
          f"minigrad plot {out / 'split.json'} --out docs/figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
