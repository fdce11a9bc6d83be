"""Hogwild! (Niu, Recht, Re, Wright 2011): threads update shared parameters without locks.

    shared model  W  (one set of arrays)
    thread t:  loop over its slices of the global batches
                   forward/backward with its own graph     ->  g_t  (in its own Parameter.grad)
                   W -= lr * g_t                               in place, no lock

No thread waits for another. Reads and writes race: a thread's forward may see W half
updated by another thread, and two `-=` on the same element may interleave. For sparse or
small, well-spread updates the lost work is rare and SGD still converges; that is the
paper's point, and why a lock (serialising all updates) is not needed.

How the sharing works: each thread gets `shared_view(model)`, a copy of the model whose
Parameter objects are its own (so `backward` writes `.grad` where no other thread looks)
but whose `.data` arrays are the shared ones. `p.data -= lr * g` is an in-place NumPy
operation on that shared array. NumPy's elementwise ops and the matmuls release the GIL,
and so do the Numba kernels, so threads really overlap; the Numba threading layer must be
thread-safe (tbb or omp; `kernels/_numba.py` chooses it, `minigrad info` shows it).

There is no communication: `bytes_sent` is 0. Threads only - processes do not share memory.
Memory per thread: its own gradients and activations; the parameters exist once.

Checkpoints: at the end of an epoch the threads meet at a barrier (so none is halfway
through an update), thread 0 writes the shared parameters, and a second barrier releases
them. A thread that raises stops the run (the others would not reach the barrier).
"""
import time

from .common import Faults, compute_gradients, shared_view


class Hogwild:
    name = "hogwild"

    def __init__(self, thread_id, model, batches, lr, faults=None):
        self.thread_id, self.batches, self.lr = thread_id, batches, lr
        self.faults = faults or Faults()
        self.model = shared_view(model)  # own Parameters (own .grad), shared arrays
        self.params = self.model.parameters()
        self.steps = 0

    def step(self, xb, yb):
        self.faults.at_step(self.thread_id, self.steps)
        loss, correct = compute_gradients(self.model, xb, yb)
        for p in self.params:
            p.data -= self.lr * p.grad  # in place on the shared array: no lock, no copy
        self.steps += 1
        return loss * len(yb), correct, len(yb)

    def train(self, epochs, log=None, start_epoch=0, on_epoch_end=None):
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0
        for epoch in range(start_epoch, epochs):
            for _, xb, yb, _ in self.batches.epoch(epoch):
                if xb is None:
                    continue
                ls, c, n = self.step(xb, yb)
                loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
            if log is not None:
                log(f"[hogwild thread {self.thread_id}] epoch {epoch + 1}/{epochs} done")
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        return {"steps": self.steps, "train_seconds": time.perf_counter() - t0,
                "loss_sum": loss_sum, "correct": correct, "seen": seen,
                "dense_bytes": 0, "bytes_sent": 0}
