"""Pieces every strategy shares: who reads which samples, gradients, flat vectors.

Data. All strategies walk the *same* global batch order as single-worker training: the
`DataLoader` permutation of epoch e, `default_rng([seed, e]).permutation(n)`, cut into
global batches of `batch_size`. Worker w of W takes the w-th contiguous slice of each global
batch (`np.array_split(batch, W)[w]`), so the W slices together are exactly the batch one
worker would have used. A random transform (augmentation) gets each slice's own generator,
`batch_rng(seed, epoch, step, shard)`, as the DataLoader gives each batch one.

    global batch  [ i0 i1 i2 i3 i4 i5 i6 i7 ]       batch_size 8, W = 3
    worker 0      [ i0 i1 i2 ]
    worker 1               [ i3 i4 i5 ]
    worker 2                        [ i6 i7 ]

Gradients. A worker's loss is the mean over its slice, so its gradient g_w is a mean over
n_w samples; the global mean is  sum_w n_w g_w / n.  `weighted_flat_grad` returns
n_w/n * g_w as one flat vector, and an allreduce-sum of those is the global gradient.
"""
import copy
import functools
import os
import signal
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from .. import threads
from ..data.loader import DataLoader
from ..data.transforms import batch_rng, is_random
from ..tensor import Tensor


class ShardedBatches:
    """This worker's slice of every global batch, in the single-worker order."""

    def __init__(self, train_data, batch_size, seed, shard, num_shards, transform=None):
        self.X, self.y = train_data
        self.batch_size, self.shard, self.num_shards = batch_size, shard, num_shards
        self.transform, self.seed = transform, seed
        # The loader is used for its order only (one definition of "epoch e's order").
        self.loader = DataLoader((self.X, self.y), batch_size=batch_size, shuffle=True,
                                 seed=seed, num_workers=0)

    def __len__(self):
        return len(self.loader)  # global batches per epoch

    def nonempty_steps(self):
        """Global batches per epoch in which my slice holds at least one sample."""
        n, b = len(self.X), self.batch_size
        sizes = [min(b, n - i) for i in range(0, n, b)]
        return sum(1 for size in sizes if size > self.shard)  # array_split: first ones

    def epoch(self, epoch):
        """Yield (step, xb, yb, n_global) for my slice of each global batch of `epoch`;
        xb/yb are empty (None) when my slice of a small last batch is empty."""
        order = self.loader.order(epoch)
        b = self.batch_size
        for step in range(len(self)):
            batch = order[step * b:(step + 1) * b]
            mine = np.array_split(batch, self.num_shards)[self.shard]
            if len(mine) == 0:
                yield step, None, None, len(batch)
                continue
            xb, yb = self.X[mine], self.y[mine]
            if self.transform is not None:
                xb, yb = self._apply(epoch, step, (xb, yb))
            yield step, xb, yb, len(batch)

    def _apply(self, epoch, step, batch):
        """The transform; a random one (augmentation) draws from this slice's own generator,
        `batch_rng(seed, epoch, step, shard)`: a function of where the slice is in the run,
        never of which thread or process computes it or when, so a resumed run sees the
        same augmented images."""
        if is_random(self.transform):
            return self.transform(batch, batch_rng(self.seed, epoch, step, self.shard))
        return self.transform(batch)


def compute_gradients(model, xb, yb):
    """Forward, loss, backward on one batch: leaves each p.grad (mean over the batch).
    Returns (loss value, number correct)."""
    model.zero_grad()
    logits = model(Tensor(xb))
    loss = F.cross_entropy(logits, yb)
    loss.backward()
    return float(loss.data), int((logits.data.argmax(axis=1) == yb).sum())


def zero_grads(params):
    for p in params:
        p.grad = np.zeros_like(p.data)


def flat_grad(params):
    """All gradients as one float32 vector (zeros where a gradient is missing)."""
    return np.concatenate([(p.grad if p.grad is not None else np.zeros_like(p.data)).ravel()
                           for p in params]).astype(np.float32, copy=False)


def flat_params(params):
    return np.concatenate([p.data.ravel() for p in params]).astype(np.float32, copy=False)


def load_flat(params, flat):
    """Copy a flat vector into the parameters' arrays, in place."""
    offset = 0
    for p in params:
        n = p.size
        p.data[...] = flat[offset:offset + n].reshape(p.shape)
        offset += n


def split_flat(params, flat):
    """Views of a flat vector shaped like each parameter."""
    out, offset = [], 0
    for p in params:
        out.append(flat[offset:offset + p.size].reshape(p.shape))
        offset += p.size
    return out


def replica(model):
    """An independent copy of a model (its own parameters, same values)."""
    return copy.deepcopy(model)


def warm_up(model, train_data, *, transform=None, batch_size=64, optimizer="sgd", lr=0.01,
            momentum=0.0):
    """Run one training step on a throwaway copy of `model`, so that Numba compiles every
    kernel a step uses (about 10 s when its on-disk cache is cold) before any worker starts.

    Without it, the first steps of every worker compile at once: the parameter server saw
    its workers silent for longer than its stall timeout and dropped them all, and every
    strategy's train_seconds and images/s counted the compilation.
    """
    from ..train import make_optimizer

    X, y = train_data
    xb, yb = X[:batch_size], y[:batch_size]
    if transform is not None and not is_random(transform):  # random ones compile in the loader
        xb, yb = transform((xb, yb))
    m = replica(model)
    loss = F.cross_entropy(m(Tensor(xb)), yb)
    loss.backward()
    make_optimizer(optimizer, m.parameters(), lr, momentum=momentum).step()


def shared_view(model):
    """A copy of `model` whose Parameters share their arrays with `model`'s.

    Each Hogwild thread gets one: its backward writes `.grad` of its own Parameter objects
    (no thread sees another's gradients), while `p.data -= lr * g` writes the one shared
    array that every thread reads.
    """
    view = copy.deepcopy(model)
    for (_, mine), (_, shared) in zip(view.named_parameters(), model.named_parameters(),
                                      strict=True):
        mine.data = shared.data
    return view


def num_bytes(params, dtype=np.float32):
    return sum(p.size for p in params) * np.dtype(dtype).itemsize


# ------------------------------------------------------------------------ evaluation
def sharded_evaluate(comm, model, X, y, transform=None):
    """Test accuracy of identical replicas, each rank scoring one contiguous share of the
    test set; one small allreduce adds the counts (uncounted: it is not training traffic).
    Every rank returns the same accuracy."""
    from ..train import evaluate

    lo, hi = (len(X) * comm.rank) // comm.size, (len(X) * (comm.rank + 1)) // comm.size
    correct = evaluate(model, X[lo:hi], y[lo:hi], transform=transform) * (hi - lo)
    with comm.uncounted():
        total = comm.allreduce(np.array([round(correct)], dtype=np.float64))
    return float(total[0]) / max(len(X), 1)


# ---------------------------------------------------------------------------- faults
class WorkerFailure(RuntimeError):
    """The exception an injected `die` fault raises."""


@dataclass
class Faults:
    """Injected faults, for tests and demos (ranks are comm ranks; steps count from 0, the
    steps this process has taken, a resumed run counting afresh).

    die    the rank raises WorkerFailure at that step (threads: an exception in one rank)
    kill   the rank's *process* is killed with SIGKILL at that step (MPI: a crashed host)
    stall  the rank sleeps that many seconds at that step (async: a slow worker)
    lose_replies  (worker, seq) whose reply the parameter server "loses" once
    """
    die: dict = field(default_factory=dict)          # rank -> step at which it raises
    kill: dict = field(default_factory=dict)         # rank -> step at which it is SIGKILLed
    stall: dict = field(default_factory=dict)        # rank -> (step, seconds asleep)
    lose_replies: set = field(default_factory=set)   # (worker, seq) whose reply is "lost"

    def at_step(self, rank, step):
        """Raise, die or sleep here if a fault is planned for (rank, step)."""
        if self.kill.get(rank) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.die.get(rank) == step:
            raise WorkerFailure(f"rank {rank}: injected failure at step {step}")
        if rank in self.stall and self.stall[rank][0] == step:
            import time

            time.sleep(self.stall[rank][1])


# --------------------------------------------------------------------------- thread budget

def thread_plan(workers, comm="threads", cores=None):
    """The thread budget of one process of a distributed run (`minigrad.threads.plan`).

    With threads, this process runs `workers` training threads; under MPI it runs one, and
    the host's cores are first split between the ranks on it. Under MPI every rank must
    call this: counting the ranks on a host may be a collective operation (a shared-memory
    split of COMM_WORLD), which needs MPI initialised, so MPI is initialised here first.
    """
    if comm == "mpi":
        from .comm_mpi import MPIComm

        MPIComm()  # imports mpi4py, which initialises MPI (a clear error without mpi4py)
    return threads.plan(workers=workers if comm == "threads" else 1, cores=cores)


def on_root(comm):
    """Rank 0 of an MPI run, or the one process of a threads run."""
    if comm == "threads":
        return True
    from .comm_mpi import MPIComm

    return MPIComm().rank == 0


def budgeted(plan, fn):
    """`fn(comm)` as a thread worker that first takes its share of the budget.

    Numba's thread count belongs to the calling thread, so each worker thread sets its own
    (`threads.apply_in_worker`): W workers x plan.numba_threads_per_worker Numba threads,
    never W x every core. Wrap every function handed to `launch_threads` with it.
    """
    @functools.wraps(fn)
    def worker(c):
        threads.apply_in_worker(plan)
        return fn(c)
    return worker
