"""One function that runs any strategy on threads or under MPI and summarises the run.

    summary = train_distributed("dgc", model, (X, y), (X_test, y_test), workers=4,
                                comm="threads", epochs=2, batch_size=64, lr=0.05,
                                save="run.npz")            # a checkpoint after every epoch
    summary = train_distributed(..., epochs=4, resume="run.npz")   # epochs 3 and 4

Ranks. sync, dgc and hogwild use `workers` ranks, all of them training. async uses a
parameter server (rank 0) plus workers: with threads, `workers` workers and one server
thread; under MPI, `mpiexec -n N` gives the server and N-1 workers.

With threads, each rank gets a `replica` of `model` (hogwild: a `shared_view`), and the
function returns rank 0's summary. Under MPI every process calls this function with its
own model (built with the same seed, and rank 0's values are broadcast anyway); rank 0
returns the summary, the other ranks return None.

Threads. Each process asks `minigrad.threads` for its budget (`thread_plan`): with threads,
`workers` training threads share this process's cores, each running its Numba kernels on
max(1, cores // workers) threads (every worker thread sets its own count first: `budgeted`),
and BLAS gets one thread; under MPI the host's cores are split between its ranks first.
`cores` (the --threads flag) overrides the cores to share. The summary's "threads" is the
plan (`ThreadPlan.as_dict()`), and "images_per_second" the images trained on per second of
training, all workers together. (async on threads: the server is one more thread, mostly
waiting for messages, and is not counted as a worker.)

Transforms. `transform` is applied to every training slice (a random one, augmentation, with
the slice's own generator: `ShardedBatches`); `eval_transform` to the test set (default:
`transform`; a random `transform` needs one, since a test set is not augmented).

Evaluation. sync and DGC replicas are identical, so each rank scores its share of the test
set and the counts are added (`sharded_evaluate`); async's model lives on the server, which
scores it; Hogwild's one shared model is scored once.

Byte counts in the summary (totals over ranks; see comm.py for the two counters):
    bytes_sent, dense_bytes          handed to the communicator / what dense SGD would hand
    bytes_moved, dense_moved         over the network / a ring allreduce of dense gradients
    compression_ratio                dense_bytes / bytes_sent   over steps at final sparsity
    traffic_ratio                    dense_moved / bytes_moved  over steps at final sparsity
    ..._overall                      the same over all steps (DGC's warm-up included)

Failures.
* threads, sync / DGC / Hogwild / model-parallel / tensor-slicing: a rank that raises
  breaks the barrier, every rank stops, and `DistributedRunFailed` names the rank, the
  epoch, and the checkpoint to resume from.
  The shard is not reassigned: every step needs every rank. The replicas' state since the
  checkpoint is discarded, so a resumed run loses no update and applies none twice.
* threads or MPI, async: a worker that raises tells the server (BYE FAILED) and the others
  carry on; its remaining slices are not reassigned (the server log says so).
* MPI, sync / DGC / the split strategies: a rank that raises prints its error (the same
  message) and calls MPI_Abort, so the job ends at once instead of the other ranks
  waiting forever in a collective. A rank that is
  killed (SIGKILL, a lost host) is noticed by mpiexec, which ends the whole job within
  a second or two and names the process ("BAD TERMINATION ... PID 8259 RUNNING AT node2
  ... EXIT CODE: 9"); rank 0 prints at start which pid on which host is which rank
  ("[mpi] 2 ranks: rank 0 = pid 8258 on node1, rank 1 = pid 8259 on node2"), and
  `mpiexec -print-all-exitcodes` adds every rank's exit code, in rank order per host.
  Either way, resume from the last checkpoint: at most the epoch in progress is lost.
"""
import sys
import time

import numpy as np

from .. import threads
from ..data.transforms import is_random
from ..train import evaluate, make_optimizer
from .common import (
    Faults,
    ShardedBatches,
    budgeted,
    on_root,
    replica,
    sharded_evaluate,
    thread_plan,
    warm_up,
)
from .dgc import CLIP_NORM, WARMUP_EPOCHS
from .failures import DistributedRunFailed, announce_ranks, failure_message, thread_failure

STRATEGIES = ("sync", "hogwild", "async", "dgc", "model-parallel", "tensor-slicing")
SPLIT_STRATEGIES = ("model-parallel", "tensor-slicing")  # every worker runs the whole batch


_STATS_KEYS = ("bytes_sent", "dense_bytes", "bytes_moved", "dense_moved",
               "sent_bytes_final", "dense_bytes_final", "moved_bytes_final",
               "dense_moved_final", "loss_sum", "correct", "seen", "steps", "clipped_steps",
               "threshold_fallbacks", "threshold_selections")


def train_distributed(strategy, model, train_data, test_data, *, transform=None,
                      eval_transform=None, workers=4,
                      comm="threads", epochs=1, batch_size=64, lr=0.05, optimizer="sgd",
                      momentum=0.9, seed=0, staleness_aware=True, staleness_bound=None,
                      timeout=30.0, ack_timeout=10.0, drain_timeout=None,
                      dgc_warmup_epochs=WARMUP_EPOCHS, dgc_sparsity=0.999,
                      dgc_clip_norm=CLIP_NORM, dgc_sample_ratio=0.01, dgc_wire="fp16",
                      dgc_momentum_masking=True, faults=None, eval_limit=None, log=None,
                      details=False, server_momentum=0.0, server_average=100, save=None,
                      resume=None, task=None, cores=None):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {STRATEGIES}")
    if comm not in ("threads", "mpi"):
        raise ValueError(f"unknown comm {comm!r}: expected 'threads' or 'mpi'")
    if strategy == "hogwild" and comm == "mpi":
        raise ValueError("hogwild shares one model's memory between threads: use "
                         "--comm threads (processes under MPI share no memory)")
    faults = faults or Faults()
    if eval_transform is None:
        if is_random(transform):
            raise ValueError("a random (augmenting) transform needs an eval_transform for "
                             "the test set, e.g. mnist_normalize")
        eval_transform = transform  # the test set is transformed like the training set
    if strategy in SPLIT_STRATEGIES:
        if faults.lose_replies:
            raise ValueError(f"--strategy {strategy} has no parameter server whose replies "
                             "could be lost: drop lose_replies")
        if strategy == "model-parallel":
            from .model_parallel import train_model_parallel as train_split_strategy
        else:
            from .tensor_slicing import train_tensor_slicing as train_split_strategy
        return train_split_strategy(
            model, train_data, test_data, comm=comm, workers=workers, epochs=epochs,
            batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum, seed=seed,
            transform=transform, eval_transform=eval_transform, eval_limit=eval_limit,
            log=log, cores=cores, save=save, resume=resume, faults=faults, task=task)
    X_test, y_test = test_data
    if eval_limit:
        X_test, y_test = X_test[:eval_limit], y_test[:eval_limit]
    progress = {"saved_epoch": None}  # rank 0's last checkpoint (for failure messages)

    def make_batches(shard, num_shards):
        return ShardedBatches(train_data, batch_size, seed, shard, num_shards, transform)

    def meta_for(c, epochs_done, batches):
        return {"strategy": strategy, "ranks": c.size, "seed": seed, "batch_size": batch_size,
                "n_train": len(train_data[0]), "task": task, "epoch": epochs_done,
                "optimizer": optimizer if strategy == "sync" else "sgd",
                "data_order": batches.loader.order(epochs_done)}

    def expect(c):
        from .checkpoint import expected_meta

        return expected_meta(strategy, c.size, seed, batch_size, len(train_data[0]), task,
                             optimizer if strategy == "sync" else "sgd")

    def restore(c, own_model, opt, batches):
        """(start epoch, my per-rank arrays, shared arrays) from `resume`, on every rank."""
        from . import checkpoint

        meta, mine, shared = checkpoint.restore(resume, c, own_model, opt, expect(c))
        checkpoint.check_data_order(resume, meta, batches)
        start = int(meta.get("epoch", 0))
        if c.rank == 0 and log is not None:
            log(f"[{strategy}] resumed from {resume} after epoch {start}")
        return start, mine, shared

    def saver(c, own_model, opt, batches, algo=None):
        if not save:
            return None
        from . import checkpoint

        def on_epoch_end(epoch):
            per_rank = algo.per_rank_state() if hasattr(algo, "per_rank_state") else None
            shared = algo.shared_state() if hasattr(algo, "shared_state") else None
            checkpoint.save(save, c, own_model, opt, meta_for(c, epoch + 1, batches),
                            per_rank, shared)
            if c.rank == 0:
                progress["saved_epoch"] = epoch + 1
        return on_epoch_end

    # -- what one rank does ----------------------------------------------------------------
    def rank_main(c, own_model):
        log_ = log if c.rank == 0 else None  # one voice: rank 0's
        if strategy in ("sync", "dgc"):
            batches = make_batches(c.rank, c.size)
            if strategy == "sync":
                from .sync import SyncSGD

                opt = make_optimizer(optimizer, own_model.parameters(), lr, momentum=momentum)
                start, mine, shared = (restore(c, own_model, opt, batches) if resume
                                       else (0, None, None))
                algo = SyncSGD(c, own_model, opt, batches, faults=faults)
            else:
                from .dgc import DGC

                opt = None
                start, mine, shared = (restore(c, own_model, None, batches) if resume
                                       else (0, None, None))
                algo = DGC(c, own_model, batches, lr, momentum,
                           warmup_epochs=dgc_warmup_epochs, final_sparsity=dgc_sparsity,
                           clip_norm=dgc_clip_norm, sample_ratio=dgc_sample_ratio, seed=seed,
                           wire=dgc_wire, momentum_masking=dgc_momentum_masking,
                           faults=faults)
                if resume:
                    algo.load_state(mine, shared)
            stats = algo.train(epochs, log_, start_epoch=start,
                               on_epoch_end=saver(c, own_model, opt, batches, algo))
            stats["start_epoch"] = start
            stats["test_accuracy"] = sharded_evaluate(c, own_model, X_test, y_test,
                                                      eval_transform)
            return stats
        if strategy == "async":
            return _async_rank(c, own_model)
        raise AssertionError(strategy)

    def _async_rank(c, own_model):
        from .async_ps import AsyncWorker, ParameterServer

        if c.size < 2:
            raise ValueError("async needs a server and at least one worker (2+ ranks)")
        n_workers = c.size - 1
        shards = [make_batches(w, n_workers) for w in range(n_workers)]
        start, _, shared = (restore(c, own_model, None, shards[0]) if resume
                            else (0, None, None))
        if c.rank != 0:
            return AsyncWorker(c, own_model, shards[c.rank - 1], ack_timeout=ack_timeout,
                               faults=faults).train(epochs, start_epoch=start)
        checkpoint = None
        if save:
            from . import checkpoint as ckpt

            def checkpoint(server, epochs_done):
                if epochs_done > epochs:
                    return
                shared_now = server.state()
                ckpt.write(save, own_model, None, meta_for(c, epochs_done, shards[0]),
                           shared=shared_now)
                progress["saved_epoch"] = epochs_done
                if log is not None:
                    log(f"[server] checkpoint {save} after epoch {epochs_done}")
        server = ParameterServer(c, own_model, lr, staleness_aware, staleness_bound,
                                 timeout=timeout, drain_timeout=drain_timeout, faults=faults,
                                 log=log, momentum=server_momentum,
                                 average_window=server_average,
                                 pushes_per_epoch=sum(b.nonempty_steps() for b in shards),
                                 checkpoint=checkpoint)
        if resume:
            server.load_state(shared)
        report = server.serve()
        report["start_epoch"] = start
        report["test_accuracy"] = evaluate(own_model, X_test, y_test,
                                           transform=eval_transform)
        return report

    # -- run the ranks ---------------------------------------------------------------------
    plan = thread_plan(workers, comm, cores)  # on every rank (see thread_plan)
    if log is not None and on_root(comm):
        log(f"[{strategy}] threads: {plan.describe()}")
        for note in plan.notes:
            log(f"[{strategy}] threads: note: {note}")
    with threads.limits(plan):  # compile the kernels first (each MPI rank its own process)
        warm_up(model, train_data, transform=transform, batch_size=batch_size,
                optimizer="sgd" if strategy != "sync" else optimizer, lr=lr, momentum=momentum)
    t0 = time.perf_counter()
    with threads.limits(plan):  # BLAS for the process, Numba for this (the main) thread
        if comm == "threads":
            results, size = _run_threads(strategy, workers, model, make_batches, rank_main,
                                         epochs, lr, log, faults, resume, save, saver,
                                         restore, progress, X_test, y_test, eval_transform,
                                         plan)
            is_root = True
        else:
            results, size, is_root = _run_mpi(strategy, rank_main, model, save, progress)
    wall = time.perf_counter() - t0
    if not is_root:
        return None
    summary = _summarise(strategy, results, size, epochs)
    summary["wall_seconds"] = wall
    summary["threads"] = plan.as_dict()
    if details:  # per-rank results (threads: a failed rank's entry is its exception)
        summary["details"] = results
    summary.update(strategy=strategy, comm=comm, epochs=epochs, batch_size=batch_size, lr=lr,
                   seed=seed, checkpoint=save)
    return summary


def _run_threads(strategy, workers, model, make_batches, rank_main, epochs, lr, log, faults,
                 resume, save, saver, restore, progress, X_test, y_test, eval_transform,
                 plan):
    """Ranks as threads, each within its share of `plan`; (per-rank results, ranks)."""
    from .comm_threads import ThreadGroup, launch_threads

    if strategy == "hogwild":
        from .hogwild import Hogwild

        start = 0
        if resume:  # the one shared model: restored once, before the threads start
            start = restore(ThreadGroup(1).comm(0), model, None, make_batches(0, workers))[0]

        def body(c):
            batches = make_batches(c.rank, workers)
            # thread 0 writes the one shared model alone: a one-rank "collective" save
            on_end = saver(ThreadGroup(1).comm(0), model, None, batches) if c.rank == 0 \
                else None

            def at_epoch_end(epoch):  # no thread is mid-update while thread 0 writes
                c.barrier()
                if on_end is not None:
                    on_end(epoch)
                c.barrier()

            stats = Hogwild(c.rank, model, batches, lr, faults=faults).train(
                epochs, log if c.rank == 0 else None, start_epoch=start,
                on_epoch_end=at_epoch_end)
            return {**stats, "start_epoch": start}

        try:
            results = launch_threads(workers, budgeted(plan, body))
        except RuntimeError as e:
            err = thread_failure(strategy, e, workers, save, progress)
            raise err from (None if err is e.__cause__ else e.__cause__)
        results[0]["test_accuracy"] = evaluate(model, X_test, y_test,
                                               transform=eval_transform)
        return results, workers
    if strategy == "async":
        models = [replica(model) for _ in range(workers + 1)]
        results = launch_threads(workers + 1,
                                 budgeted(plan, lambda c: rank_main(c, models[c.rank])),
                                 abort_on_error=False)
        if isinstance(results[0], BaseException):
            raise DistributedRunFailed(f"async: the parameter server failed "
                                       f"({type(results[0]).__name__}: {results[0]})") \
                from results[0]
        _copy_params(models[0], model)
        return results, workers + 1
    models = [replica(model) for _ in range(workers)]
    try:
        results = launch_threads(workers,
                                 budgeted(plan, lambda c: rank_main(c, models[c.rank])))
    except RuntimeError as e:
        err = thread_failure(strategy, e, workers, save, progress)
        raise err from (None if err is e.__cause__ else e.__cause__)
    _copy_params(models[0], model)
    return results, workers


def _copy_params(src, dst):
    """Leave the trained values in the caller's model (threads train replicas)."""
    for (_, p), (_, q) in zip(src.named_parameters(), dst.named_parameters(), strict=True):
        q.data[...] = p.data


def _run_mpi(strategy, rank_main, model, save, progress):
    """Ranks as MPI processes; (results on rank 0, number of ranks, am I rank 0)."""
    from .comm_mpi import MPIComm

    c = MPIComm()
    announce_ranks(c)
    try:
        mine = rank_main(c, model)
    except Exception as e:
        from ..checkpoint import CheckpointError

        if isinstance(e, CheckpointError):
            raise  # every rank raises it (restore and save agree through a broadcast)
        if strategy == "async" and c.rank != 0:
            # A failed async worker has told the server (BYE FAILED); this process ends
            # normally so that mpiexec does not take the whole job down with it.
            print(f"async worker {c.rank} failed: {type(e).__name__}: {e}", file=sys.stderr)
            mine = e
        elif c.size > 1:
            # The other ranks wait in a collective that will never complete: end the job.
            how = "the job is aborted (MPI_Abort): every step needs every rank"
            text = failure_message(strategy, c.rank, c.size, e, save, progress, how)
            print(f"minigrad train: {text}", file=sys.stderr, flush=True)
            c.comm.Abort(1)
            raise  # not reached
        else:
            raise
    if strategy == "async":
        c.flush()
        results = [mine]  # worker statistics reach the server with their BYE
    else:
        # per-rank counters -> sums on rank 0 (uncounted bookkeeping)
        with c.uncounted():
            totals = c.allreduce(np.array([mine.get(k, 0) for k in _STATS_KEYS],
                                          dtype=np.float64))
            seconds = c.allreduce(np.array([mine["train_seconds"]]), op="max")[0]
        results = [{**mine, **dict(zip(_STATS_KEYS, totals.tolist(), strict=True)),
                    "train_seconds": seconds, "_reduced": True}]
    c.close()
    return results, c.size, c.rank == 0


def _ratio(num, den):
    return float(num) / float(den) if den else None


def _summarise(strategy, results, size, epochs):
    """Totals over ranks; the keys every strategy reports, None where not applicable."""
    root = results[0]
    if strategy == "async":
        server = root
        ws = list(server["workers"].values())
        per = {k: sum(w.get(k, 0) for w in ws) for k in ("loss_sum", "correct", "seen",
                                                       "bytes_sent", "steps")}
        bytes_sent = server["server_bytes_sent"] + per["bytes_sent"]
        train_seconds = server["train_seconds"]
        out = {
            "workers": size - 1, "ranks": size,
            "bytes_sent": int(bytes_sent), "dense_bytes": None, "bytes_moved": None,
            "dense_moved": None, "compression_ratio": None, "compression_ratio_overall": None,
            "traffic_ratio": None, "traffic_ratio_overall": None,
            "staleness_mean": server["staleness_mean"], "staleness_max": server["staleness_max"],
            **{k: server[k] for k in ("updates_applied", "updates_dropped", "duplicates",
                                      "dead_workers", "stalled_workers", "lost_workers",
                                      "version")},
            "worker_status": {int(r): w["status"] for r, w in server["workers"].items()},
            "steps": int(per["steps"]),
        }
        seen, correct, loss_sum = per["seen"], per["correct"], per["loss_sum"]
    else:
        if root.get("_reduced"):
            tot = root
        else:
            tot = {k: sum(r.get(k, 0) for r in results) for k in _STATS_KEYS}
            tot["train_seconds"] = max(r["train_seconds"] for r in results)
        train_seconds = tot["train_seconds"]
        collective = strategy != "hogwild"
        out = {"workers": size, "ranks": size, "bytes_sent": int(tot["bytes_sent"]),
               "dense_bytes": int(tot["dense_bytes"]) if collective else None,
               "bytes_moved": int(tot["bytes_moved"]) if collective else None,
               "dense_moved": int(tot["dense_moved"]) if collective else None,
               "compression_ratio": None, "compression_ratio_overall": None,
               "traffic_ratio": None, "traffic_ratio_overall": None,
               "staleness_mean": None, "staleness_max": None,
               # sync/dgc: steps of the whole group; hogwild: updates of all threads
               "steps": int(tot["steps"] // (size if collective else 1))}
        if collective:
            out["compression_ratio"] = _ratio(tot["dense_bytes_final"], tot["sent_bytes_final"])
            out["traffic_ratio"] = _ratio(tot["dense_moved_final"], tot["moved_bytes_final"])
            out["compression_ratio_overall"] = _ratio(tot["dense_bytes"], tot["bytes_sent"])
            out["traffic_ratio_overall"] = _ratio(tot["dense_moved"], tot["bytes_moved"])
        if strategy == "dgc":
            for k in ("clipped_steps", "threshold_fallbacks", "threshold_selections"):
                out[k] = int(tot[k])
            out["threshold_fallback_rate"] = _ratio(tot["threshold_fallbacks"],
                                                    tot["threshold_selections"])
        seen, correct, loss_sum = tot["seen"], tot["correct"], tot["loss_sum"]
    start = int(root.get("start_epoch", 0))
    out.update(train_seconds=train_seconds,
               # images trained on per second, all workers together
               images_per_second=seen / train_seconds if train_seconds else 0.0,
               seconds_per_epoch=train_seconds / max(epochs - start, 1),
               train_loss=loss_sum / seen if seen else None,
               train_accuracy=correct / seen if seen else None,
               test_accuracy=root["test_accuracy"], resumed_from_epoch=start or None,
               epochs_run=epochs - start)
    return out

