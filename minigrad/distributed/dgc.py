"""Deep Gradient Compression (Lin, Han, Mao, Wang, Dally; ICLR 2018), step by step.

Synchronous data-parallel SGD that sends only the largest ~0.1% of each weight tensor's
update and keeps the rest locally until it grows large enough to be sent.

Per worker and step, for each weight tensor (ndim > 1):

    g    = local gradient                        (mean over my slice of the global batch)
    g    = clip(g, clip_norm / sqrt(N))          local gradient clipping: N workers' clipped
                                                 gradients add up to about clip_norm
    u    = m * u + g                             momentum correction: the momentum is kept
    v    = v + u                                 locally, *before* sparsification, so what
                                                 is eventually sent is momentum-SGD's update
    thr  = threshold for the top (1-sparsity) of |v|,  estimated from a random sample
    sent = { (i, v[i]) : |v[i]| >= thr }         indices + values
    v[sent] = 0 ; u[sent] = 0                    local accumulation (the rest of v stays)
                                                 and momentum factor masking (stale momentum
                                                 must not push an already-sent coordinate)
    all = allgather(sent)                        variable size per worker
    W  -= lr * (sum over workers of all) / N     plain SGD on the aggregated sparse update

1-D tensors (biases) are few and sent dense: allreduce of g, then ordinary momentum SGD.

Warm-up: sparsity rises exponentially 75%, 93.75%, 98.4375%, 99.6% over the first
`warmup_epochs` (one epoch by default; each stage a quarter of it), then stays at the
final 99.9%. Early gradients change fast; sending more of them at first helps.

Threshold selection (the "hierarchical" selection of the paper): top-k of the whole tensor
needs a partial sort of |v| every step, so we sample ~1% of |v|, take the sample's top
2 x (1-sparsity) quantile as a first threshold (aiming at twice the target count), and
then take the exact top-k among those few candidates. If the sample misjudged and fewer
than k pass (rare), we fall back to an exact top-k of the whole tensor.

Bytes per worker and step: 4 (int32 index) + 4 (float32 value) per sent element, plus the
dense tensors; dense SGD would send 4 x (all parameters). `compression_ratio` is the
quotient, reported over the steps at final sparsity and over all steps.
"""
import math
import time

import numpy as np

from .common import compute_gradients

WARMUP_SPARSITIES = (0.75, 0.9375, 0.984375, 0.99609375)  # 1 - 0.25^k, k = 1..4
FINAL_SPARSITY = 0.999


def warmup_sparsity(epoch_progress, warmup_epochs=1.0, final=FINAL_SPARSITY,
                    stages=WARMUP_SPARSITIES):
    """Sparsity at `epoch_progress` (epochs done, fractional): the warm-up stages spread
    evenly over `warmup_epochs`, then `final`."""
    if warmup_epochs <= 0 or epoch_progress >= warmup_epochs:
        return final
    stage = int(epoch_progress / warmup_epochs * len(stages))
    return min(stages[stage], final)


def top_k_indices(v_abs, k, rng, sample_ratio=0.01, min_sample=256):
    """Indices (sorted) of the k largest entries of the 1-D array `v_abs`, found through a
    sampled threshold. Returns (indices, used_fallback)."""
    n = v_abs.size
    if k >= n:
        return np.arange(n), False
    s = min(n, max(min_sample, math.ceil(n * sample_ratio)))
    sample = v_abs[rng.integers(0, n, size=s)] if s < n else v_abs
    ks = min(s, max(1, math.ceil(2 * k * s / n)))         # aim at ~2k candidates
    thr = np.partition(sample, s - ks)[s - ks]             # ks-th largest of the sample
    candidates = np.flatnonzero(v_abs >= thr)
    if len(candidates) >= k:  # the usual case: exact top-k among a few candidates
        best = np.argpartition(v_abs[candidates], len(candidates) - k)[len(candidates) - k:]
        return np.sort(candidates[best]), False
    best = np.argpartition(v_abs, n - k)[n - k:]           # fallback: exact top-k of all
    return np.sort(best), True


class DGCCompressor:
    """The per-worker state of DGC for a list of tensor shapes: momentum u and accumulated
    velocity v, one pair per tensor, and the selection of what to send."""

    def __init__(self, shapes, momentum=0.9, sample_ratio=0.01, seed=0):
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self.momentum, self.sample_ratio = momentum, sample_ratio
        self.u = [np.zeros(n, dtype=np.float32) for n in self.sizes]
        self.v = [np.zeros(n, dtype=np.float32) for n in self.sizes]
        self.rng = np.random.default_rng(seed)
        self.fallbacks = 0

    def accumulate(self, grads):
        """Momentum correction and local accumulation: u = m u + g;  v = v + u."""
        for u, v, g in zip(self.u, self.v, grads):
            u *= self.momentum
            u += g.ravel()
            v += u

    def compress(self, sparsity):
        """Select what to send at this sparsity; zero it in v and u (accumulation keeps the
        rest; momentum factor masking). Returns (int32 indices into the concatenation of
        all tensors, float32 values)."""
        density = 1.0 - sparsity
        all_idx, all_val = [], []
        for t, (u, v) in enumerate(zip(self.u, self.v)):
            k = max(1, math.ceil(density * v.size))
            idx, fell_back = top_k_indices(np.abs(v), k, self.rng, self.sample_ratio)
            self.fallbacks += fell_back
            all_val.append(v[idx].copy())
            all_idx.append((idx + self.offsets[t]).astype(np.int32))
            v[idx] = 0.0  # sent: no longer accumulated here
            u[idx] = 0.0  # momentum factor masking
        return np.concatenate(all_idx), np.concatenate(all_val)

    def decompress(self, gathered_idx, gathered_val):
        """Sum every worker's (indices, values) into one dense vector per tensor."""
        total = np.zeros(self.total, dtype=np.float32)
        for idx, val in zip(gathered_idx, gathered_val):  # rank order: deterministic
            total[idx] += val  # indices are unique within one worker's message
        return [total[a:b].reshape(s) for a, b, s in
                zip(self.offsets[:-1], self.offsets[1:], self.shapes)]


class DGC:
    name = "dgc"

    def __init__(self, comm, model, batches, lr, momentum=0.9, warmup_epochs=1.0,
                 final_sparsity=FINAL_SPARSITY, clip_norm=None, sample_ratio=0.01, seed=0):
        self.comm, self.model, self.batches = comm, model, batches
        self.lr, self.momentum = lr, momentum
        self.warmup_epochs, self.final_sparsity = warmup_epochs, final_sparsity
        self.clip_norm = clip_norm
        params = model.parameters()
        self.sparse = [p for p in params if p.ndim > 1]   # weights: compressed
        self.dense = [p for p in params if p.ndim <= 1]   # biases: sent dense
        self.compressor = DGCCompressor([p.shape for p in self.sparse], momentum,
                                        sample_ratio, seed=(seed, comm.rank))
        self.dense_momentum = [np.zeros_like(p.data) for p in self.dense]
        self.dense_step_bytes = 4 * sum(p.size for p in params)
        # replicas start identical: rank 0's parameters
        for p in params:
            p.data[...] = comm.bcast(p.data, root=0)
        self.steps = 0
        self.clipped = 0
        self.bytes = {"final": [0, 0], "all": [0, 0]}  # [sent, dense] over those steps

    def _local_gradients(self, xb, yb, n_global):
        """My gradients, weighted so that (sum over workers) / N is the global mean."""
        params = self.sparse + self.dense
        if xb is None:
            return 0.0, 0, 0, [np.zeros_like(p.data) for p in params]
        loss, correct = compute_gradients(self.model, xb, yb)
        w = len(yb) * self.comm.size / n_global
        grads = [p.grad * np.float32(w) for p in params]
        if self.clip_norm:  # local clipping, threshold scaled by N^-1/2
            limit = self.clip_norm / math.sqrt(self.comm.size)
            norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
            if norm > limit:
                grads = [g * np.float32(limit / norm) for g in grads]
                self.clipped += 1
        return loss * len(yb), correct, len(yb), grads

    def step(self, xb, yb, n_global, sparsity):
        comm, N = self.comm, self.comm.size
        loss_sum, correct, n, grads = self._local_gradients(xb, yb, n_global)
        g_sparse, g_dense = grads[:len(self.sparse)], grads[len(self.sparse):]
        sent0 = comm.bytes_sent

        # weights: momentum correction, accumulation, top-k, variable-size allgather
        self.compressor.accumulate(g_sparse)
        idx, val = self.compressor.compress(sparsity)
        updates = self.compressor.decompress(comm.allgather(idx), comm.allgather(val))
        for p, upd in zip(self.sparse, updates):
            p.data -= self.lr * (upd / N)

        # biases: dense allreduce, then ordinary momentum SGD (same on every replica)
        if self.dense:
            flat = comm.allreduce(np.concatenate([g.ravel() for g in g_dense])) / N
            offset = 0
            for p, buf in zip(self.dense, self.dense_momentum):
                g = flat[offset:offset + p.size].reshape(p.shape)
                offset += p.size
                buf *= self.momentum
                buf += g
                p.data -= self.lr * buf

        sent = comm.bytes_sent - sent0
        for key in ("all", "final") if sparsity >= self.final_sparsity else ("all",):
            self.bytes[key][0] += sent
            self.bytes[key][1] += self.dense_step_bytes
        self.steps += 1
        return loss_sum, correct, n

    def train(self, epochs, log=None):
        t0, bytes0 = time.perf_counter(), self.comm.bytes_sent
        loss_sum = correct = seen = 0
        steps_per_epoch = len(self.batches)
        for epoch in range(epochs):
            for step, xb, yb, n_global in self.batches.epoch(epoch):
                sparsity = warmup_sparsity(epoch + step / steps_per_epoch, self.warmup_epochs,
                                           self.final_sparsity)
                ls, c, n = self.step(xb, yb, n_global, sparsity)
                loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
            if log is not None:
                log(f"[dgc rank {self.comm.rank}] epoch {epoch + 1}/{epochs} done, sparsity "
                    f"{sparsity:.4%}")
        return {"steps": self.steps, "train_seconds": time.perf_counter() - t0,
                "loss_sum": loss_sum, "correct": correct, "seen": seen,
                "bytes_sent": self.comm.bytes_sent - bytes0,
                "dense_bytes": self.bytes["all"][1],
                "sent_bytes_final": self.bytes["final"][0],
                "dense_bytes_final": self.bytes["final"][1],
                "clipped_steps": self.clipped, "threshold_fallbacks": self.compressor.fallbacks}
