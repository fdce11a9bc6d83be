r"""Synchronous data-parallel SGD: every worker steps with the average gradient.

    rank 0        rank 1        ...  rank N-1        every rank holds: a full replica of
    replica W     replica W          replica W       the model and of the optimizer state
    slice B_0     slice B_1          slice B_{N-1}   (identical), its slice of the batch
        \____________ allreduce(sum) ___________/     one collective per step, all ranks

    for each global batch B (the single-worker order):
        my slice B_w  ->  forward, backward  ->  g_w (mean over B_w)        local
        flat = (n_w / n) * g_w                                              weight by size
        flat = allreduce_sum(flat)          == mean gradient over all of B  communicate
        p.grad = flat (unflattened);  optimizer.step()                      same on every rank

Every replica starts from the same parameters (rank 0's are broadcast), sees the same
averaged gradient and runs the same optimizer code, so the replicas stay identical, and
the whole run equals single-worker training on the same global batches up to float
rounding (the gradient is summed in a different order). Any optimizer works (SGD, Adam),
since it only ever sees the global gradient.

Communication per step and rank: one allreduce of every parameter's gradient: 4 bytes x
(number of parameters) handed over (`bytes_sent`), 2 (N-1)/N times that moved over the
network by a ring allreduce (`bytes_moved`). Memory per worker: the model, its gradient
and the optimizer state, as single-worker training.

A checkpoint holds rank 0's replica and optimizer (they are every rank's); a rank that
fails stops the run, since every step needs every rank (see `launch.py`).
"""
import time

from .common import (
    Faults,
    compute_gradients,
    flat_grad,
    flat_params,
    load_flat,
    split_flat,
)


class SyncSGD:
    name = "sync"

    def __init__(self, comm, model, optimizer, batches, faults=None):
        self.comm, self.model, self.optimizer, self.batches = comm, model, optimizer, batches
        self.faults = faults or Faults()
        self.params = model.parameters()
        self.steps = 0
        self.dense_bytes = 0
        with comm.uncounted():
            load_flat(self.params, comm.bcast(flat_params(self.params), root=0))

    def step(self, xb, yb, n_global):
        """One synchronous step on my slice (xb may be None: an empty slice). Returns
        (loss sum over my samples, correct, samples)."""
        self.faults.at_step(self.comm.rank, self.steps)
        if xb is None:
            loss, correct, n_mine = 0.0, 0, 0
            for p in self.params:
                p.grad = None  # flat_grad turns a missing gradient into zeros
        else:
            loss, correct = compute_gradients(self.model, xb, yb)
            n_mine = len(yb)
        g = flat_grad(self.params) * (n_mine / n_global)
        self.dense_bytes += g.nbytes
        g = self.comm.allreduce(g)  # sum over ranks of (n_w/n) g_w = the global mean
        for p, gp in zip(self.params, split_flat(self.params, g), strict=True):
            p.grad = gp.astype(p.data.dtype, copy=False)
        self.optimizer.step()
        self.steps += 1
        return loss * n_mine, correct, n_mine

    def train(self, epochs, log=None, start_epoch=0, on_epoch_end=None):
        """Epochs start_epoch .. epochs-1; `on_epoch_end(epoch)` after each (checkpoints)."""
        t0 = time.perf_counter()
        bytes0, moved0 = self.comm.bytes_sent, self.comm.bytes_moved
        loss_sum = correct = seen = 0
        for epoch in range(start_epoch, epochs):
            for _, xb, yb, n_global in self.batches.epoch(epoch):
                ls, c, n = self.step(xb, yb, n_global)
                loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
            if log is not None:
                log(f"[sync rank {self.comm.rank}] epoch {epoch + 1}/{epochs} done, "
                    f"{self.steps} steps")
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        N = self.comm.size
        sent, moved = self.comm.bytes_sent - bytes0, self.comm.bytes_moved - moved0
        return {"steps": self.steps, "train_seconds": time.perf_counter() - t0,
                "loss_sum": loss_sum, "correct": correct, "seen": seen,
                "dense_bytes": self.dense_bytes, "bytes_sent": sent,
                "dense_moved": 2 * (N - 1) / N * self.dense_bytes, "bytes_moved": moved,
                "sent_bytes_final": sent, "dense_bytes_final": self.dense_bytes,
                "moved_bytes_final": moved,
                "dense_moved_final": 2 * (N - 1) / N * self.dense_bytes}
