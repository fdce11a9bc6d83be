"""Checkpoints of distributed runs: rank 0 writes the file, every rank restores from it.

    what                          who holds it                  in the file (one .npz)
    ----                          ------------                  ----------------------
    model parameters              every replica (identical)     rank 0's:   model/<name>
    optimizer state (sync)        every replica (identical)     rank 0's:   optim/<key>
    DGC momentum u, velocity v    each rank its own             gathered:   meta/rank_u (N, P_w)
    DGC biases' momentum          every rank (identical)        rank 0's:   meta/shared_...
    parameter server (async)      rank 0                        meta/ps_version, ps_velocity...
    model parallel: parameters,   each rank its filters (rows   gathered whole: model/<name>,
      optimizer state             of each weight) and state     optim/<i>.<key> (see below)
    tensor slicing: parameters,   every replica (identical)     rank 0's:   model/, optim/
      optimizer state
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

The split strategies (`save_split`, `restore_split`) write the single-worker layout: the
whole model's weights and its optimizer state indexed by `model.parameters()`, as
`minigrad train` without --strategy writes them. Model parallelism gathers each weight's
shares (worker w holds rows sizes[w] of axis 0, filters or output features) and each
share's optimizer state (momentum buffers, Adam moments: per element, shaped like the
share) into whole arrays, in rank order; tensor slicing's weights and state are whole on
every worker already. So a checkpoint does not depend on how many workers wrote it: a run
resumed with another --workers re-splits it (the same optimizer, element for element; only
the order of the float sums in the collectives changes). The meta checks (strategy, seed,
batch size, training-set size, task, optimizer, and the next epoch's data order) are those
of the other strategies; "ranks" is recorded but not required to match.
"""
import os

import numpy as np

from ..checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    check_meta,
    read_checkpoint,
    save_checkpoint,
)


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


def read_collective(path, comm, expect=None, ranks=None):
    """Collective: rank 0 reads and checks `path` (its meta against `expect`; with `ranks`,
    that its per-rank arrays have that many rows), every rank receives it.

    Returns (model_state, optim_state, meta) on every rank. Raises CheckpointError on every
    rank if rank 0 cannot use the file (so no rank is left waiting for the others)."""
    payload = None
    if comm.rank == 0:
        try:
            model_state, optim_state, meta = read_checkpoint(path)
            check_meta(path, meta, expect)
            rows = {len(v) for k, v in meta.items() if k.startswith("rank_")}
            if ranks is not None and rows and rows != {ranks}:
                raise CheckpointError(f"checkpoint {os.fspath(path)} holds the state of "
                                      f"{rows.pop()} ranks; this run has {ranks}")
            payload = {"model": model_state, "optim": optim_state, "meta": meta}
        except CheckpointError as e:
            payload = {"error": str(e), "mismatch": type(e).__name__}
    with comm.uncounted():
        payload = comm.bcast_object(payload, root=0)
    if "error" in payload:
        cls = CheckpointMismatch if payload["mismatch"] == "CheckpointMismatch" \
            else CheckpointError
        raise cls(payload["error"])
    return payload["model"], payload["optim"], payload["meta"]


def _load(path, what, state):
    """what.load_state_dict(state); a state that does not fit is a CheckpointMismatch."""
    try:
        what.load_state_dict(state)
    except (ValueError, KeyError, IndexError) as e:
        raise CheckpointMismatch(f"checkpoint {os.fspath(path)} does not fit this model "
                                 f"({e})") from e


def restore(path, comm, model, optimizer=None, expect=None):
    """Collective: rank 0 reads and checks `path`, every rank loads it.

    Returns (meta, my per-rank arrays, shared arrays), the two last as dicts without their
    "rank_" / "shared_" prefixes. Raises CheckpointError on every rank if rank 0 cannot use
    the file (so no rank is left waiting for the others)."""
    model_state, optim_state, meta = read_collective(path, comm, expect, ranks=comm.size)
    _load(path, model, model_state)
    if optimizer is not None and optim_state:
        _load(path, optimizer, optim_state)
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


# ------------------------------------------------------------ the split strategies
class _GivenState:
    """An optimizer state_dict assembled by hand (from every worker's share), in the form
    `save_checkpoint` takes an optimizer in."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def _whole(comm, array, whole_shape):
    """Every worker's share (rows of axis 0, rank order) of one array, joined whole."""
    parts = comm.allgather(np.ascontiguousarray(array).ravel())
    return np.concatenate(parts).reshape(whole_shape)


def save_split(path, comm, net, model, optimizer, meta):
    """Collective, model parallel and tensor slicing: every worker's share of the weights
    and of the optimizer state, joined whole (uncounted allgathers), written by rank 0 in
    the single-worker layout; all wait for the file.

    `net.shards(model)` yields (my parameter, the parameter of `model` it belongs to, the
    rows of axis 0 every worker holds, or None where mine is the whole parameter);
    `net.assemble(model)` writes the whole weights into `model`. Optimizer state shaped
    like a share is joined along axis 0; any other (Adam's step count, a scalar the same
    on every worker) is rank 0's."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    state_of = {id(p): st for p, st in zip(optimizer.params, optimizer.state, strict=True)}
    state = {"lr": optimizer.lr}
    with comm.uncounted():
        net.assemble(model)
        for mine, whole, sizes in net.shards(model):
            st = state_of[id(mine)]
            for key in sorted(st):  # the same keys, in the same order, on every worker
                v = st[key]
                if sizes is not None and getattr(v, "shape", None) == mine.shape:
                    v = _whole(comm, v, whole.shape)
                state[f"{index[id(whole)]}.{key}"] = v
    save(path, comm, model, _GivenState(state), meta)


def restore_split(path, comm, model, expect=None):
    """Collective, before the worker's network is built from `model`: rank 0 reads and
    checks `path`, every worker loads the whole weights into `model`. Returns (meta, the
    whole optimizer state) for `load_split_optimizer`, once the network and its optimizer
    exist."""
    model_state, optim_state, meta = read_collective(path, comm, expect)
    _load(path, model, model_state)
    return meta, optim_state


def load_split_optimizer(path, comm, net, model, optimizer, whole_state):
    """Give `optimizer` (over this worker's `net.parameters()`) its share of the whole
    model's optimizer state: the rows of axis 0 that are mine where the parameter is split.
    The learning rate stays this run's (as on a single-worker resume)."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    mine_at = {id(p): j for j, p in enumerate(optimizer.params)}
    by_param = {}
    for key, v in whole_state.items():
        if key != "lr":
            i, name = key.split(".", 1)
            by_param.setdefault(int(i), {})[name] = v
    state = {}
    for mine, whole, sizes in net.shards(model):
        lo = sum(sizes[:comm.rank]) if sizes is not None else 0
        for name, v in by_param.get(index[id(whole)], {}).items():
            if sizes is not None and getattr(v, "ndim", 0) > 0:
                v = np.asarray(v)[lo:lo + mine.shape[0]]
            state[f"{mine_at[id(mine)]}.{name}"] = v
    _load(path, optimizer, state)
