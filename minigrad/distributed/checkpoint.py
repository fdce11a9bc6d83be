"""Checkpoints of distributed runs: rank 0 writes the file, every rank restores from it.

    what                          who holds it                  in the file (one .npz)
    ----                          ------------                  ----------------------
    model parameters              every replica (identical)     rank 0's:   model/<name>
    optimizer state (sync)        every replica (identical)     rank 0's:   optim/<key>
    DGC momentum u, velocity v    each rank its own             gathered:   meta/rank_u (N, P_w)
    DGC biases' momentum          every rank (identical)        rank 0's:   meta/shared_...
    parameter server (async)      rank 0                        meta/ps_version, ps_velocity...
    epoch, data order             seed + epoch define it        meta/epoch, seed, batch_size,
                                                                n_train, data_order (the next
                                                                epoch's permutation)

Writing is collective for sync, DGC and Hogwild: at the end of an epoch every rank calls
`save`, the per-rank arrays are gathered to rank 0 (`allgather`, uncounted), rank 0 writes
through `minigrad.checkpoint.save_checkpoint` (a temporary file, fsync, atomic rename: a
rank killed mid-write leaves the previous checkpoint whole), and a barrier makes sure
nobody starts the next epoch before the file is in place. The parameter server writes on
its own (`write`), since its workers never wait for each other.

Restoring: rank 0 reads the file (`read_checkpoint`, which checks every array), checks that
it belongs to this run (strategy, ranks, seed, batch size, training-set size: the data
order depends on them), and broadcasts it (`bcast_object`); every rank then loads the
model, the optimizer and its own row of the per-rank arrays. Only rank 0's machine needs
the file. The run then starts at `meta["epoch"]` (epochs already done) and, because an
epoch's batches and DGC's samples depend on (seed, epoch) only, continues exactly as an
uninterrupted run would have.
"""
import os

import numpy as np

from ..checkpoint import CheckpointError, check_meta, read_checkpoint, save_checkpoint


def expected_meta(strategy, ranks, seed, batch_size, n_train, task=None, optimizer=None,
                  **extra):
    """The meta that a checkpoint must share with the run that resumes from it."""
    return {"strategy": strategy, "ranks": ranks, "seed": seed, "batch_size": batch_size,
            "n_train": n_train, "task": task, "optimizer": optimizer, **extra}


def write(path, model, optimizer, meta, per_rank=None, shared=None):
    """Rank 0's part: write one checkpoint file atomically. `per_rank` maps a name to an
    (N, ...) array holding every rank's row, `shared` a name to one array."""
    arrays = {f"rank_{k}": np.asarray(v) for k, v in (per_rank or {}).items()}
    arrays.update({f"shared_{k}": np.asarray(v) for k, v in (shared or {}).items()})
    return save_checkpoint(path, model, optimizer, meta={**meta, **arrays})


def save(path, comm, model, optimizer, meta, per_rank=None, shared=None):
    """Collective: gather every rank's `per_rank` arrays, rank 0 writes, all wait for it."""
    with comm.uncounted():
        gathered = {k: np.stack([np.asarray(a).reshape(np.shape(v))
                                 for a in comm.allgather(np.asarray(v).ravel())])
                    for k, v in sorted((per_rank or {}).items())}
        error = None
        if comm.rank == 0:
            try:
                write(path, model, optimizer, meta, gathered, shared)
            except (OSError, CheckpointError) as e:
                error = f"cannot write checkpoint {os.fspath(path)}: {e}"
        error = comm.bcast_object(error, root=0)  # also the barrier: the file is in place
    if error:
        raise CheckpointError(error)


def restore(path, comm, model, optimizer=None, expect=None):
    """Collective: rank 0 reads and checks `path`, every rank loads it.

    Returns (meta, my per-rank arrays, shared arrays), the two last as dicts without their
    "rank_" / "shared_" prefixes. Raises CheckpointError on every rank if rank 0 cannot use
    the file (so no rank is left waiting for the others)."""
    payload = None
    if comm.rank == 0:
        try:
            model_state, optim_state, meta = read_checkpoint(path)
            check_meta(path, meta, expect)
            rows = {len(v) for k, v in meta.items() if k.startswith("rank_")}
            if rows and rows != {comm.size}:
                raise CheckpointError(f"checkpoint {os.fspath(path)} holds the state of "
                                      f"{rows.pop()} ranks; this run has {comm.size}")
            payload = {"model": model_state, "optim": optim_state, "meta": meta}
        except CheckpointError as e:
            payload = {"error": str(e), "mismatch": type(e).__name__}
    with comm.uncounted():
        payload = comm.bcast_object(payload, root=0)
    if "error" in payload:
        from ..checkpoint import CheckpointMismatch

        cls = CheckpointMismatch if payload["mismatch"] == "CheckpointMismatch" \
            else CheckpointError
        raise cls(payload["error"])
    try:
        model.load_state_dict(payload["model"])
        if optimizer is not None and payload["optim"]:
            optimizer.load_state_dict(payload["optim"])
    except (ValueError, KeyError, IndexError) as e:
        from ..checkpoint import CheckpointMismatch

        raise CheckpointMismatch(f"checkpoint {os.fspath(path)} does not fit this model "
                                 f"({e})") from e
    meta = payload["meta"]
    mine = {k[len("rank_"):]: np.asarray(v)[comm.rank] for k, v in meta.items()
            if k.startswith("rank_")}
    shared = {k[len("shared_"):]: v for k, v in meta.items() if k.startswith("shared_")}
    meta = {k: v for k, v in meta.items() if not k.startswith(("rank_", "shared_"))}
    return meta, mine, shared


def check_data_order(path, meta, batches):
    """The stored permutation of the next epoch must be the one this run will use."""
    order = meta.get("data_order")
    epoch = int(meta.get("epoch", 0))
    if order is None:
        return
    if not np.array_equal(np.asarray(order), batches.loader.order(epoch)):
        raise CheckpointError(f"checkpoint {os.fspath(path)}: epoch {epoch + 1}'s data order "
                              "differs from this run's (another data set or loader?)")
