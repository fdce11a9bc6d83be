r"""Model parallelism: every worker holds a share of each layer's filters (output channels of
a convolution, output features of a dense layer) and only that share's optimizer state.

Who holds what, for the MNIST CNN on N = 2 workers (filters split as np.array_split does:
the first M mod N workers get one more; uneven splits are fine):

                     worker 0                          worker 1
    input x          the whole batch (N,1,28,28)       the whole batch (same)
    conv1  W 32x1x3x3   filters 0..15  + their momentum   filters 16..31 + their momentum
      y = conv(x, my filters)  (B,16,28,28)            (B,16,28,28)
      pool, relu on my channels only  (B,16,14,14)     (B,16,14,14)
      ======================= allgather along channels ========================  [1]
    conv2  W 64x32x3x3  filters 0..31 (all 32 inputs)  filters 32..63
      pool, relu, flatten my channels  (B,32*49)       (B,32*49)
      ======================= allgather along features ========================  [1]
    fc1 3136->128       rows 0..63                      rows 64..127
      ======================= allgather =======================================  [1]
    fc2 128->64, allgather [1], fc3 64->10 (outputs 0..4 | 5..9), allgather [2]
    loss             the same logits on every worker -> the same loss everywhere

Forward: a split layer computes its share of output channels with any lowering (algo=);
per-channel ops (ReLU, tanh, max/avg pooling, flatten) act on that share where it lies; one
allgather just before the next layer that needs every channel rebuilds its whole input.

Backward, which collective runs where:
  [1] the gradient reaching a gathered input is, on each worker, only its own filters'
      contribution: dX_w = conv_backward_data(dY[:, my channels], my filters). The true dX
      is the sum over workers, and each worker needs only its channels of it (that is where
      its pool/relu/conv lie): a REDUCE-SCATTER, built from point-to-point messages (worker
      w sends channel block q of its partial dX to worker q, and adds the N-1 blocks it
      receives to its own, in rank order). It moves (N-1)/N of dX per worker, half of
      what an allreduce would.
  [2] the logits feed the loss, which every worker computes alike, so the gradient there
      is already whole on every worker: the gather's backward just takes my slice.
  dW, db: computed locally for my filters only: no weight gradient ever crosses the wire,
      and the optimizer steps my share with my share's state (SGD momentum, Adam moments
      are per element, so the split optimizer is exactly the single-worker one).
  The first layer's input is the data: it needs no gradient, so no communication.

Per step and worker: the allgathers send this worker's 1/N share of each gathered
activation, and the reduce-scatters (N-1)/N of its gradient: about one whole gathered
activation per step, whatever N is (`summary["bytes_per_step"]`; with N = 1 nothing). Parameter and
optimizer memory per worker are ~1/N of the model's (`summary["param_bytes_per_worker"]`,
`["optimizer_bytes_per_worker"]`); activations are not split: every worker holds every
layer's whole input (`["activation_bytes_per_worker"]`).

When it pays. A filter split divides the weights, their gradients, their optimizer state
and the GEMM work of every layer by N, while what crosses the wire is activations, which
grow with batch x height x width. So it pays for big layers on small images (wide convs
late in a network, big dense layers: fc1 here holds 1.6 MB of weights and gathers a
12.5 kB activation per image); it loses on early layers of big images, whose activations dwarf
their filters (see tensor slicing, `tensor_slicing.py`, for those). Every worker runs the
whole batch: this is not data parallelism, and with the same seed and data the run matches
single-worker training up to float rounding.

    summary = train_model_parallel(MnistCNN(), (X, y), (X_test, y_test), workers=2,
                                   epochs=2, batch_size=64, lr=0.05, optimizer="sgd",
                                   transform=mnist_normalize)

Checkpoints (`save=`, `resume=`): after each epoch the workers join their filters and
their filters' optimizer state into one file in the single-worker layout (uncounted
allgathers, rank 0 writes atomically: `checkpoint.save_split`); a resumed run, with any
number of workers, cuts its shares from it again.
"""
import time

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor

TAG_REDUCE_SCATTER = 1301  # point-to-point tags of this module (FIFO per pair of ranks)

# Layers that act on each channel (or feature) by itself: they run on a worker's share.
PER_CHANNEL = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d)


# ------------------------------------------------------------------------------- who holds
def split_sizes(total, parts):
    """Sizes of `parts` nearly equal shares of `total` (the first total % parts get one
    more), as np.array_split. Every share must be non-empty."""
    if parts > total:
        raise ValueError(f"cannot split {total} filters/features over {parts} workers: "
                         "every worker needs at least one")
    return [total // parts + (1 if r < total % parts else 0) for r in range(parts)]


def offsets(sizes):
    """[0, s0, s0+s1, ...]: where each share starts (and, last, the total)."""
    return [0, *np.cumsum(sizes).tolist()]


def _take(array, lo, hi, axis):
    index = [slice(None)] * array.ndim
    index[axis] = slice(lo, hi)
    return array[tuple(index)]


# ---------------------------------------------------------------------- the collectives
def allgather_along(comm, array, sizes, axis):
    """Every worker's share of `array` (worker q's has sizes[q] along `axis`), joined in
    rank order along `axis`. Shares travel flat (comm.allgather) and are reshaped here.
    One worker holds everything already: nothing is sent."""
    if comm.size == 1:
        return array
    parts = comm.allgather(np.ascontiguousarray(array))
    shape = list(array.shape)
    blocks = []
    for q, part in enumerate(parts):
        shape[axis] = sizes[q]
        blocks.append(part.reshape(shape))
    return np.concatenate(blocks, axis=axis)


def reduce_scatter(comm, array, sizes, axis, tag=TAG_REDUCE_SCATTER):
    """My block of sum_w array_w, where block q is worker q's sizes[q] slots along `axis`.

    Point to point: send block q of my array to worker q (all sends first: they never
    block), then receive my block from every other worker and add the N-1 blocks to mine
    in rank order, so that every run adds in the same order."""
    if comm.size == 1:
        return array
    lo = offsets(sizes)
    r = comm.rank
    for q in range(comm.size):
        if q != r:
            comm.send(np.ascontiguousarray(_take(array, lo[q], lo[q + 1], axis)), q, tag)
    mine = _take(array, lo[r], lo[r + 1], axis)
    out = None
    for q in range(comm.size):
        block = mine if q == r else comm.recv(source=q, tag=tag, dtype=array.dtype)
        block = block.reshape(mine.shape)
        out = block.copy() if out is None else out + block
    return np.ascontiguousarray(out)


# ------------------------------------------------------------- the two autograd nodes
def gather(x, comm, sizes, axis=1, grad="reduce_scatter"):
    """Autograd node: the whole tensor from every worker's share along `axis`.

    forward   allgather of the shares, joined in rank order
    backward  grad="reduce_scatter": the incoming gradient is this worker's *partial* one
              (it feeds a split layer): sum over workers, keep my block.
              grad="slice": the incoming gradient is already whole and the same on every
              worker (it feeds replicated work such as the loss): keep my block.
    """
    if grad not in ("reduce_scatter", "slice"):
        raise ValueError(f"gather: grad must be 'reduce_scatter' or 'slice', got {grad!r}")
    full = allgather_along(comm, x.data, sizes, axis)
    lo = offsets(sizes)

    def backward(g):
        if grad == "slice":
            return (np.ascontiguousarray(_take(g, lo[comm.rank], lo[comm.rank + 1], axis)),)
        return (reduce_scatter(comm, g, sizes, axis),)

    return Tensor._make(full, (x,), backward, "gather")


def enter_split(x, comm):
    """Autograd node for a *replicated* input about to meet a split layer: the identity
    forward, an allreduce of the workers' partial gradients backward (Megatron's "f").
    Free when x needs no gradient (the data): no node is recorded then."""

    def backward(g):
        return (comm.allreduce(np.ascontiguousarray(g)) if comm.size > 1 else g,)

    return Tensor._make(x.data, (x,), backward, "enter_split")


# --------------------------------------------------------------------------- layers
class SplitConv2d(nn.Module):
    """This worker's filters of a Conv2d: weight[lo:hi] (M_w, C, KH, KW), bias[lo:hi].
    Its output is this worker's M_w channels; the input must hold all C channels."""

    def __init__(self, conv, comm, algo=None):
        super().__init__()
        self.sizes = split_sizes(conv.out_channels, comm.size)
        lo = offsets(self.sizes)
        self.lo, self.hi = lo[comm.rank], lo[comm.rank + 1]
        self.stride, self.padding = conv.stride, conv.padding
        self.algo = algo or conv.algo
        self.weight = nn.Parameter(conv.weight.data[self.lo:self.hi].copy())
        self.bias = (nn.Parameter(conv.bias.data[self.lo:self.hi].copy())
                     if conv.bias is not None else None)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, algo=self.algo)


class SplitLinear(nn.Module):
    """This worker's output features of a Linear: weight[lo:hi] (F_w, in), bias[lo:hi]."""

    def __init__(self, linear, comm):
        super().__init__()
        self.sizes = split_sizes(linear.out_features, comm.size)
        lo = offsets(self.sizes)
        self.lo, self.hi = lo[comm.rank], lo[comm.rank + 1]
        self.weight = nn.Parameter(linear.weight.data[self.lo:self.hi].copy())
        self.bias = (nn.Parameter(linear.bias.data[self.lo:self.hi].copy())
                     if linear.bias is not None else None)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def layer_sequence(model):
    """The layers `model` applies, in order, as a list of modules: what the split networks
    walk. nn.Sequential, and the MNIST models with a plain layer chain (MnistCNN, LeNet5:
    their `forward` written out here; the parity tests check the two agree)."""
    from .. import models

    if isinstance(model, nn.Sequential):
        return [model[i] for i in range(len(model))]
    m = model
    if type(model) is models.MnistCNN:
        return [m.conv1, m.pool, m.conv2, m.pool, nn.Flatten(1),  # m.pool: ReLU fused in
                m.fc1, nn.ReLU(), m.fc2, nn.ReLU(), m.fc3]
    if type(model) is models.LeNet5:
        return [m.conv1, nn.Tanh(), m.pool, m.conv2, nn.Tanh(), m.pool, nn.Flatten(1),
                m.fc1, nn.Tanh(), m.fc2, nn.Tanh(), m.fc3]
    raise ValueError(f"{type(model).__name__}: model and tensor parallelism split a chain "
                     "of layers (nn.Sequential, MnistCNN or LeNet5); residual blocks and "
                     "batch norm are not supported")


class ModelParallel(nn.Module):
    """One worker's share of a network whose Conv2d and Linear layers are split by filter.

    `forward(x)` takes the whole batch and returns the whole logits, the same on every
    worker. `parameters()` are this worker's shares only: give them to the optimizer.
    """

    def __init__(self, model, comm, algo=None):
        super().__init__()
        self.comm = comm
        self.steps = []  # (kind, module): kind "split" or "local"
        for i, layer in enumerate(layer_sequence(model)):
            if isinstance(layer, nn.Conv2d):
                split = SplitConv2d(layer, comm, algo)
            elif isinstance(layer, nn.Linear):
                split = SplitLinear(layer, comm)
            elif isinstance(layer, PER_CHANNEL) or (isinstance(layer, nn.Flatten)
                                                    and layer.start_dim == 1):
                self.steps.append(("local", layer))
                continue
            else:
                raise ValueError(f"model parallel: cannot split {type(layer).__name__} "
                                 "(not a per-channel layer)")
            setattr(self, f"split{i}", split)
            self.steps.append(("split", split))

    def forward(self, x):
        sizes = None  # None: x is whole (replicated); else the shares' sizes along axis 1
        for kind, layer in self.steps:
            if kind == "split":
                x = enter_split(x, self.comm) if sizes is None else gather(
                    x, self.comm, sizes, grad="reduce_scatter")
                x, sizes = layer(x), layer.sizes
            else:
                if sizes is not None and isinstance(layer, nn.Flatten) and x.ndim == 4:
                    sizes = [s * x.shape[2] * x.shape[3] for s in sizes]  # my block of
                x = layer(x)                                          # the flat features
        if sizes is not None:
            x = gather(x, self.comm, sizes, grad="slice")  # the loss is replicated
        return x

    def split_layers(self):
        return [m for kind, m in self.steps if kind == "split"]

    def _whole_layers(self, model):
        return [m for m in layer_sequence(model) if isinstance(m, (nn.Conv2d, nn.Linear))]

    def shards(self, model):
        """(my parameter, the parameter of `model` it is a share of, every worker's rows of
        its axis 0), for each parameter I hold: what a checkpoint joins and re-splits."""
        for mine, whole in zip(self.split_layers(), self._whole_layers(model), strict=True):
            yield mine.weight, whole.weight, mine.sizes
            if mine.bias is not None:
                yield mine.bias, whole.bias, mine.sizes

    def assemble(self, model):
        """Write the whole trained weights into `model` (the same architecture), on every
        worker: one uncounted allgather per parameter (bookkeeping, not training)."""
        with self.comm.uncounted():
            for mine, whole in zip(self.split_layers(), self._whole_layers(model),
                                   strict=True):
                whole.weight.data[...] = allgather_along(self.comm, mine.weight.data,
                                                         mine.sizes, 0)
                if mine.bias is not None:
                    whole.bias.data[...] = allgather_along(self.comm, mine.bias.data,
                                                           mine.sizes, 0)
        return model


# ------------------------------------------------------------------------ measuring
def param_bytes(params):
    return int(sum(p.data.nbytes for p in params))


def optimizer_bytes(optimizer):
    """Bytes of the optimizer's state arrays (momentum buffers, Adam moments)."""
    return int(sum(v.nbytes for st in optimizer.state for v in st.values()
                   if hasattr(v, "nbytes")))


def graph_bytes(root, skip=()):
    """Bytes of the arrays in `root`'s autograd graph, except tensors in `skip` (the
    parameters): the activations a forward pass keeps alive for the backward. A view
    (flatten, a band sliced out of a batch) counts as the array it views, once. (Workspace
    a lowering keeps in its closure, such as im2col's patch matrix, is not counted.)"""
    skip = {id(t) for t in skip}
    seen, owners, stack = set(), {}, [root]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) not in skip:
            owner = t.data
            while isinstance(owner, np.ndarray) and owner.base is not None:
                owner = owner.base
            owners[id(owner)] = int(getattr(owner, "nbytes", t.data.nbytes))
        stack.extend(t._parents)
    return sum(owners.values())


def activation_bytes(model, x):
    """Activation bytes of one single-worker forward of `model` on batch x (a baseline)."""
    logits = model(Tensor(x))
    out = graph_bytes(logits, model.parameters())
    return out if logits.requires_grad else int(x.nbytes + logits.data.nbytes)


# ------------------------------------------------------------------------- training
def train_model_parallel(model, train_data, test_data, *, comm="threads", workers=2,
                         epochs=1, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9,
                         seed=0, transform=None, eval_transform=None, eval_limit=None,
                         log=None, algo=None, cores=None, save=None, resume=None,
                         faults=None, task=None):
    """Train `model` with its filters split over `workers` ranks (threads) or over the
    ranks of `mpiexec` (comm="mpi"). Leaves the trained weights in `model`; returns the
    summary on rank 0 (None on the other MPI ranks). `eval_transform`: the test set's
    (default: `transform`); `algo`: every conv's lowering (default: each layer's own);
    `save`, `resume`, `faults`, `task`: as in `train_split`."""
    return train_split("model-parallel", lambda c, m: ModelParallel(m, c, algo), model,
                       train_data, test_data, comm=comm, workers=workers, epochs=epochs,
                       batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                       seed=seed, transform=transform, eval_transform=eval_transform,
                       eval_limit=eval_limit, log=log, cores=cores, save=save,
                       resume=resume, faults=faults, task=task)


_PER_RANK = ("param_bytes", "optimizer_bytes", "activation_bytes", "bytes_sent",
             "bytes_moved", "halo_bytes", "train_seconds")


def train_split(strategy, build, model, train_data, test_data, *, comm, workers, epochs,
                batch_size, lr, optimizer, momentum, seed, transform, eval_transform=None,
                eval_limit=None, log=None, cores=None, save=None, resume=None, faults=None,
                task=None):
    """The training loop the split strategies share (model parallel, tensor slicing).

    build(comm, model) -> the worker's network: forward(x) gives the whole logits on every
    worker; parameters() the tensors this worker updates; shards(model) which parameter of
    `model` each of them is (a share of: see checkpoint.save_split); optional
    after_backward() (the tensor slicing dW allreduce), assemble(model) (write the whole
    weights into model), and halo_bytes (a counter). Every worker walks the same full
    batches in the single-worker order (`ShardedBatches` with one shard). Threads follow the
    budget of `minigrad.threads` (`cores`: this host's cores to use), as the data-parallel
    ones do.

    Checkpoints. `save`: after every epoch the workers join their shares into one file in
    the single-worker layout (`checkpoint.save_split`: atomic, rank 0 writes). `resume`:
    start after the epoch it holds, with its weights and optimizer state re-split over this
    run's workers, whatever their number was; the seed, batch size, training set, task and
    optimizer must be the checkpoint's. `faults` (`common.Faults`): die / kill / stall at a
    worker's step, counted from 0 in this run. A failed worker stops the run: on threads
    with `DistributedRunFailed`, under MPI with MPI_Abort, each naming the rank, the epoch
    and the checkpoint to resume from (`failures.failure_message`).
    """
    from .. import threads
    from ..train import make_optimizer
    from . import checkpoint
    from .common import (
        Faults,
        ShardedBatches,
        budgeted,
        flat_params,
        load_flat,
        replica,
        sharded_evaluate,
        thread_plan,
        warm_up,
    )
    from .failures import announce_ranks, failure_message, thread_failure

    if comm not in ("threads", "mpi"):
        raise ValueError(f"unknown comm {comm!r}: expected 'threads' or 'mpi'")
    faults = faults or Faults()
    X_test, y_test = test_data
    if eval_limit:
        X_test, y_test = X_test[:eval_limit], y_test[:eval_limit]
    full_param_bytes = param_bytes(model.parameters())
    progress = {"saved_epoch": None}  # rank 0's last checkpoint (for failure messages)
    n_train = len(train_data[0])

    def meta_for(c, epochs_done, batches):
        return {"strategy": strategy, "ranks": c.size, "seed": seed, "batch_size": batch_size,
                "n_train": n_train, "task": task, "epoch": epochs_done,
                "optimizer": optimizer, "data_order": batches.loader.order(epochs_done)}

    def rank_main(c, own_model):
        say = log if (log is not None and c.rank == 0) else None
        with c.uncounted():  # one starting point on every rank (MPI: rank 0's)
            load_flat(own_model.parameters(), c.bcast(flat_params(own_model.parameters())))
        restored = None
        if resume:  # the whole weights into own_model, before the network takes its share
            expect = checkpoint.expected_meta(strategy, None, seed, batch_size, n_train, task,
                                              optimizer)
            restored = checkpoint.restore_split(resume, c, own_model, expect)
        net = build(c, own_model)
        params = net.parameters()
        opt = make_optimizer(optimizer, params, lr, momentum=momentum)
        batches = ShardedBatches(train_data, batch_size, seed, 0, 1, transform)
        start = 0
        if restored is not None:
            meta, whole_state = restored
            checkpoint.load_split_optimizer(resume, c, net, own_model, opt, whole_state)
            checkpoint.check_data_order(resume, meta, batches)
            start = int(meta.get("epoch", 0))
            if say is not None:
                was = int(meta.get("ranks") or c.size)
                say(f"[{strategy}] resumed from {resume} after epoch {start}"
                    + (f" (written by {was} workers, re-split over {c.size})"
                       if was != c.size else ""))
        sent0, moved0 = c.bytes_sent, c.bytes_moved
        t0 = time.perf_counter()
        loss_sum, correct, seen, steps, act = 0.0, 0, 0, 0, 0
        for epoch in range(start, epochs):
            for _, xb, yb, _ in batches.epoch(epoch):
                faults.at_step(c.rank, steps)
                opt.zero_grad()
                logits = net(Tensor(xb))
                loss = F.cross_entropy(logits, yb)
                if steps == 0:
                    act = graph_bytes(logits, params)
                loss.backward()
                if hasattr(net, "after_backward"):
                    net.after_backward()
                opt.step()
                loss_sum += float(loss.data) * len(yb)
                correct += int((logits.data.argmax(axis=1) == yb).sum())
                seen += len(yb)
                steps += 1
            if say is not None:
                say(f"[{strategy} x{c.size}] epoch {epoch + 1}/{epochs}: loss "
                    f"{loss_sum / max(seen, 1):.4f}, {steps} steps")
            if save:
                checkpoint.save_split(save, c, net, own_model, opt,
                                      meta_for(c, epoch + 1, batches))
                if c.rank == 0:
                    progress["saved_epoch"] = epoch + 1
        seconds = time.perf_counter() - t0
        mine = {"param_bytes": param_bytes(params), "optimizer_bytes": optimizer_bytes(opt),
                "activation_bytes": act, "bytes_sent": c.bytes_sent - sent0,
                "bytes_moved": c.bytes_moved - moved0,
                "halo_bytes": getattr(net, "halo_bytes", 0), "train_seconds": seconds}
        net.assemble(own_model)
        accuracy = sharded_evaluate(c, own_model, X_test, y_test,
                                    transform if eval_transform is None else eval_transform)
        with c.uncounted():
            table = c.allgather(np.array([mine[k] for k in _PER_RANK], dtype=np.float64))
        per_rank = {k: [float(row[i]) for row in table] for i, k in enumerate(_PER_RANK)}
        return {"per_rank": per_rank, "test_accuracy": accuracy, "steps": steps,
                "loss_sum": loss_sum, "correct": correct, "seen": seen, "start_epoch": start}

    plan = thread_plan(workers, comm, cores)
    with threads.limits(plan):  # compile the kernels before the clock starts
        warm_up(model, train_data, transform=transform, batch_size=batch_size,
                optimizer=optimizer, lr=lr, momentum=momentum)
    t0 = time.perf_counter()
    with threads.limits(plan):
        if comm == "threads":
            from .comm_threads import launch_threads

            models = [replica(model) for _ in range(workers)]
            try:
                results = launch_threads(
                    workers, budgeted(plan, lambda c: rank_main(c, models[c.rank])))
            except RuntimeError as e:
                if isinstance(e.__cause__, ValueError):  # a model, a split or a checkpoint
                    raise e.__cause__ from None          # that cannot work: every rank
                err = thread_failure(strategy, e, workers, save, progress)  # refused it
                raise err from e.__cause__
            root, size = results[0], workers
            for p, q in zip(models[0].parameters(), model.parameters(), strict=True):
                q.data[...] = p.data
        else:
            import sys

            from .comm_mpi import MPIComm

            c = MPIComm()
            announce_ranks(c)
            try:
                root, size = rank_main(c, model), c.size
            except ValueError:
                raise  # decided from shapes or the checkpoint alone: every rank raises it
            except Exception as e:
                if c.size == 1:
                    raise
                # the others wait in a collective that will never complete: end the job
                how = "the job is aborted (MPI_Abort): every step needs every rank"
                text = failure_message(strategy, c.rank, c.size, e, save, progress, how)
                print(f"minigrad train: {text}", file=sys.stderr, flush=True)
                c.comm.Abort(1)
                raise  # not reached
            c.close()
            if c.rank != 0:
                return None
    wall = time.perf_counter() - t0
    summary = _summary(strategy, root, size, epochs, batch_size, lr, seed, comm, wall,
                       full_param_bytes)
    summary["threads"] = plan.as_dict()
    summary["checkpoint"] = save
    return summary


def _summary(strategy, root, size, epochs, batch_size, lr, seed, comm, wall, full_bytes):
    """The keys every strategy's summary has (launch._summarise), plus memory per worker
    and bytes per step. *_per_worker: the largest worker's (uneven splits); the per-rank
    lists are under "per_rank"."""
    pr, steps = root["per_rank"], max(root["steps"], 1)
    start = int(root.get("start_epoch", 0))
    seconds = max(pr["train_seconds"])
    seen = root["seen"]
    return {
        "workers": size, "ranks": size,
        "bytes_sent": int(sum(pr["bytes_sent"])), "bytes_moved": int(sum(pr["bytes_moved"])),
        "dense_bytes": None, "dense_moved": None, "compression_ratio": None,
        "compression_ratio_overall": None, "traffic_ratio": None,
        "traffic_ratio_overall": None, "staleness_mean": None, "staleness_max": None,
        "steps": root["steps"], "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs - start, 1),
        "train_loss": root["loss_sum"] / seen if seen else None,
        "train_accuracy": root["correct"] / seen if seen else None,
        "test_accuracy": root["test_accuracy"], "resumed_from_epoch": start or None,
        "epochs_run": epochs - start, "wall_seconds": wall,
        "images_per_second": seen / seconds if seconds else 0.0,
        "param_bytes_total": full_bytes,
        "param_bytes_per_worker": int(max(pr["param_bytes"])),
        "optimizer_bytes_per_worker": int(max(pr["optimizer_bytes"])),
        "activation_bytes_per_worker": int(max(pr["activation_bytes"])),
        "bytes_per_step": max(pr["bytes_sent"]) / steps,
        "halo_bytes_per_step": max(pr["halo_bytes"]) / steps,
        "per_rank": pr,
        "strategy": strategy, "comm": comm, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "seed": seed, "checkpoint": None,
    }
