"""One function that runs any strategy on threads or under MPI and summarises the run.

    summary = train_distributed("dgc", model, (X, y), (X_test, y_test), workers=4,
                                comm="threads", epochs=2, batch_size=64, lr=0.05)

Ranks. sync, dgc and hogwild use `workers` ranks, all of them training. async uses a
parameter server (rank 0) plus workers: with threads, `workers` workers and one server
thread; under MPI, `mpiexec -n N` gives the server and N-1 workers.

With threads, each rank gets a `replica` of `model` (hogwild: a `shared_view`), and the
function returns rank 0's summary. Under MPI every process calls this function with its
own model (built with the same seed, and rank 0's values are broadcast anyway); rank 0
returns the summary, the other ranks return None.

`bytes_sent` is the total over ranks of what each rank handed to the communicator;
`dense_bytes` what dense gradient exchange would have sent for the same steps.
`details=True` adds the per-rank results (the server's report, with every applied update,
for async) under "details".
"""
import contextlib
import sys
import time

import numpy as np

from ..train import evaluate, make_optimizer
from .common import ShardedBatches, replica

STRATEGIES = ("sync", "hogwild", "async", "dgc")


def one_blas_thread():
    """Limit BLAS (OpenBLAS/MKL) to one thread while several ranks share the machine.

    The ranks are the parallelism. Left alone, every rank's matmul starts BLAS's own thread
    pool; N ranks x BLAS threads on a few cores then fight (OpenBLAS threads spin-wait),
    measured here as 4 sync workers taking 76 s for what one BLAS thread each does in 2 s.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; without it, leave BLAS as it is
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _stats_keys():
    return ("bytes_sent", "dense_bytes", "sent_bytes_final", "dense_bytes_final",
            "loss_sum", "correct", "seen", "steps", "clipped_steps", "threshold_fallbacks")


def train_distributed(strategy, model, train_data, test_data, *, transform=None, workers=4,
                      comm="threads", epochs=1, batch_size=64, lr=0.05, optimizer="sgd",
                      momentum=0.9, seed=0, staleness_aware=True, staleness_bound=None,
                      timeout=30.0, ack_timeout=10.0, drain_timeout=None,
                      dgc_warmup_epochs=1.0, dgc_sparsity=0.999, dgc_clip_norm=5.0,
                      dgc_sample_ratio=0.01, faults=None, eval_limit=None, log=None, details=False,
                      server_momentum=0.0, server_average=100):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {STRATEGIES}")
    if comm not in ("threads", "mpi"):
        raise ValueError(f"unknown comm {comm!r}: expected 'threads' or 'mpi'")
    if strategy == "hogwild" and comm == "mpi":
        raise ValueError("hogwild shares one model's memory between threads: use "
                         "--comm threads (processes under MPI share no memory)")

    def make_batches(shard, num_shards):
        return ShardedBatches(train_data, batch_size, seed, shard, num_shards, transform)

    # -- what one rank does ----------------------------------------------------------------
    def rank_main(c, own_model):
        log_ = log if c.rank == 0 else None  # one voice: rank 0's
        if strategy == "sync":
            from .sync import SyncSGD

            opt = make_optimizer(optimizer, own_model.parameters(), lr, momentum=momentum)
            return SyncSGD(c, own_model, opt, make_batches(c.rank, c.size)).train(epochs, log_)
        if strategy == "dgc":
            from .dgc import DGC

            return DGC(c, own_model, make_batches(c.rank, c.size), lr, momentum,
                       warmup_epochs=dgc_warmup_epochs, final_sparsity=dgc_sparsity,
                       clip_norm=dgc_clip_norm, sample_ratio=dgc_sample_ratio,
                       seed=seed).train(epochs, log_)
        if strategy == "async":
            from .async_ps import AsyncWorker, ParameterServer

            if c.size < 2:
                raise ValueError("async needs a server and at least one worker (2+ ranks)")
            if c.rank == 0:
                return ParameterServer(c, own_model, lr, staleness_aware, staleness_bound,
                                       timeout=timeout, drain_timeout=drain_timeout,
                                       faults=faults, log=log_,
                                       momentum=server_momentum,
                                       average_window=server_average).serve()
            return AsyncWorker(c, own_model, make_batches(c.rank - 1, c.size - 1),
                               ack_timeout=ack_timeout, faults=faults).train(epochs)
        raise AssertionError(strategy)

    # -- run the ranks ---------------------------------------------------------------------
    t0 = time.perf_counter()
    with one_blas_thread():
        results, size, is_root, eval_model = _run_ranks(
            strategy, comm, workers, model, make_batches, rank_main, epochs, lr, log)
    wall = time.perf_counter() - t0
    if not is_root:
        return None
    return _finish(strategy, results, size, epochs, wall, details, test_data, eval_limit,
                   eval_model, transform, comm, batch_size, lr, seed)


def _run_ranks(strategy, comm, workers, model, make_batches, rank_main, epochs, lr, log):
    """Start the ranks; (per-rank results, number of ranks, am I rank 0, model to test)."""
    if comm == "threads":
        from .comm_threads import launch_threads

        if strategy == "hogwild":
            from .hogwild import Hogwild

            results = launch_threads(workers, lambda c: Hogwild(
                c.rank, model, make_batches(c.rank, workers), lr).train(
                    epochs, log if c.rank == 0 else None))
            eval_model = model
        elif strategy == "async":
            models = [replica(model) for _ in range(workers + 1)]
            results = launch_threads(workers + 1, lambda c: rank_main(c, models[c.rank]),
                                     abort_on_error=False)
            if isinstance(results[0], BaseException):
                raise RuntimeError("the parameter server failed") from results[0]
            eval_model = models[0]
        else:
            models = [replica(model) for _ in range(workers)]
            results = launch_threads(workers, lambda c: rank_main(c, models[c.rank]))
            eval_model = models[0]
        size = len(results)
        is_root = True
    else:
        from .comm_mpi import MPIComm

        c = MPIComm()
        size = c.size
        try:
            mine = rank_main(c, model)
        except Exception as e:
            if strategy != "async" or c.rank == 0:
                raise
            # A failed async worker has told the server (BYE FAILED); this process ends
            # normally so that mpiexec does not take the whole job down with it.
            print(f"async worker {c.rank} failed: {type(e).__name__}: {e}", file=sys.stderr)
            mine = e
        if strategy == "async":
            c.flush()
            results = [mine]  # worker statistics reach the server with their BYE
        else:
            # per-rank counters -> sums on rank 0 (this small allreduce is not counted)
            before = c.bytes_sent
            totals = c.allreduce(np.array([mine.get(k, 0) for k in _stats_keys()],
                                          dtype=np.float64))
            c.bytes_sent = before
            seconds = c.allreduce(np.array([mine["train_seconds"]]), op="max")[0]
            results = [{**mine, **dict(zip(_stats_keys(), totals.tolist())),
                        "train_seconds": seconds, "_reduced": True}]
        c.close()
        is_root = c.rank == 0
        eval_model = model
    return results, size, is_root, eval_model


def _finish(strategy, results, size, epochs, wall, details, test_data, eval_limit, eval_model,
            transform, comm, batch_size, lr, seed):
    summary = _summarise(strategy, results, size, epochs)
    summary["wall_seconds"] = wall
    if details:  # per-rank results (threads: a failed rank's entry is its exception)
        summary["details"] = results
    X_test, y_test = test_data
    if eval_limit:
        X_test, y_test = X_test[:eval_limit], y_test[:eval_limit]
    summary["test_accuracy"] = evaluate(eval_model, X_test, y_test, transform=transform)
    summary.update(strategy=strategy, comm=comm, epochs=epochs, epochs_run=epochs,
                   batch_size=batch_size, lr=lr, seed=seed)
    return summary


def _ratio(dense, sent):
    return dense / sent if sent else None


def _summarise(strategy, results, size, epochs):
    """Totals over ranks; the keys every strategy reports, None where not applicable."""
    if strategy == "async":
        server = results[0]
        ws = list(server["workers"].values())
        per = {k: sum(w.get(k, 0) for w in ws) for k in ("loss_sum", "correct", "seen",
                                                       "bytes_sent", "steps")}
        bytes_sent = server["server_bytes_sent"] + per["bytes_sent"]
        train_seconds = server["train_seconds"]
        out = {
            "workers": size - 1, "ranks": size,
            "bytes_sent": int(bytes_sent), "dense_bytes": None,
            "compression_ratio": None, "compression_ratio_overall": None,
            "staleness_mean": server["staleness_mean"], "staleness_max": server["staleness_max"],
            **{k: server[k] for k in ("updates_applied", "updates_dropped", "duplicates",
                                      "dead_workers", "stalled_workers", "lost_workers",
                                      "version")},
            "worker_status": {int(r): w["status"] for r, w in server["workers"].items()},
            "steps": int(per["steps"]),
        }
        seen, correct, loss_sum = per["seen"], per["correct"], per["loss_sum"]
    else:
        if results and results[0].get("_reduced"):
            tot = results[0]
        else:
            tot = {k: sum(r.get(k, 0) for r in results) for k in _stats_keys()}
            tot["train_seconds"] = max(r["train_seconds"] for r in results)
        train_seconds = tot["train_seconds"]
        bytes_sent, dense = int(tot["bytes_sent"]), int(tot["dense_bytes"])
        out = {"workers": size, "ranks": size, "bytes_sent": bytes_sent,
               "dense_bytes": dense if strategy != "hogwild" else None,
               "compression_ratio": None, "compression_ratio_overall": None,
               "staleness_mean": None, "staleness_max": None,
               # sync/dgc: steps of the whole group; hogwild: updates of all threads
               "steps": int(tot["steps"] // (size if strategy != "hogwild" else 1))}
        if strategy == "sync":
            out["compression_ratio"] = out["compression_ratio_overall"] = _ratio(dense,
                                                                                bytes_sent)
        elif strategy == "dgc":
            out["compression_ratio"] = _ratio(tot["dense_bytes_final"], tot["sent_bytes_final"])
            out["compression_ratio_overall"] = _ratio(dense, bytes_sent)
            for k in ("clipped_steps", "threshold_fallbacks"):
                out[k] = int(tot[k])
        seen, correct, loss_sum = tot["seen"], tot["correct"], tot["loss_sum"]
    out.update(train_seconds=train_seconds, seconds_per_epoch=train_seconds / max(epochs, 1),
               train_loss=loss_sum / seen if seen else None,
               train_accuracy=correct / seen if seen else None)
    return out
