"""Synchronous data-parallel SGD: every worker steps with the average gradient.

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

Communication per step and rank: one allreduce of every parameter's gradient, i.e.
4 bytes x (number of parameters) with float32.
"""
import time

from .common import compute_gradients, flat_grad, flat_params, load_flat, split_flat


class SyncSGD:
    name = "sync"

    def __init__(self, comm, model, optimizer, batches):
        self.comm, self.model, self.optimizer, self.batches = comm, model, optimizer, batches
        self.params = model.parameters()
        self.steps = 0
        self.dense_bytes = 0
        load_flat(self.params, comm.bcast(flat_params(self.params), root=0))

    def step(self, xb, yb, n_global):
        """One synchronous step on my slice (xb may be None: an empty slice). Returns
        (loss sum over my samples, correct, samples)."""
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
        for p, gp in zip(self.params, split_flat(self.params, g)):
            p.grad = gp.astype(p.data.dtype, copy=False)
        self.optimizer.step()
        self.steps += 1
        return loss * n_mine, correct, n_mine

    def train(self, epochs, log=None):
        t0, bytes0 = time.perf_counter(), self.comm.bytes_sent
        loss_sum = correct = seen = 0
        for epoch in range(epochs):
            for _, xb, yb, n_global in self.batches.epoch(epoch):
                ls, c, n = self.step(xb, yb, n_global)
                loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
            if log is not None:
                log(f"[sync rank {self.comm.rank}] epoch {epoch + 1}/{epochs} done, "
                    f"{self.steps} steps")
        return {"steps": self.steps, "train_seconds": time.perf_counter() - t0,
                "loss_sum": loss_sum, "correct": correct, "seen": seen,
                "dense_bytes": self.dense_bytes,
                "bytes_sent": self.comm.bytes_sent - bytes0}
