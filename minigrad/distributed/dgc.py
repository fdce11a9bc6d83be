"""Deep Gradient Compression (Lin, Han, Mao, Wang, Dally; ICLR 2018), step by step.

Synchronous data-parallel SGD that sends only the largest ~0.1% of each weight tensor's
update and keeps the rest locally until it grows large enough to be sent.

    worker k holds                        what moves each step
    --------------                        --------------------
    a full replica of W (same on all)     weights: allgather of (indices, values), variable
    u_k, v_k: momentum and accumulated      size per worker (Allgatherv under MPI)
      velocity, one pair per weight       biases:  allreduce of the dense gradient
      tensor (its own, never sent)
    the dense momentum of the biases
      (the same on every rank)

Per worker and step, for each weight tensor (ndim > 1):

    g    = local gradient, weighted so that the global gradient is (sum over workers) / N
    g    = clip(g, sqrt(N) * clip_norm)          local clipping, the paper's scaling (below)
    u    = m * u + g                             momentum correction: the momentum is kept
    v    = v + u                                 locally, *before* sparsification, so what
                                                 is eventually sent is momentum-SGD's update
    thr  = threshold for the top (1-sparsity) of |v|,  estimated from a random sample
    sent = { (i, v[i]) : |v[i]| >= thr }         indices + values
    v[sent] -= what was sent (0, or fp16's rounding error) ; u[sent] = 0
                                                 local accumulation (the rest of v stays)
                                                 and momentum factor masking (stale momentum
                                                 must not push an already-sent coordinate)
    all = allgather(sent)                        variable size per worker
    W  -= lr * (sum over workers of all) / N     plain SGD on the aggregated sparse update

1-D tensors (biases: 298 of MnistCNN's 429,258 numbers) are sent dense: allreduce of g,
then ordinary momentum SGD.

Local gradient clipping, scaled as in the paper. The paper writes the global gradient as
a *sum* of the N workers' shares, G = sum_k G_k, and clips each share at thr / sqrt(N):
N independent shares of norm thr / sqrt(N) add up to a norm of about thr, the threshold
single-node training would use. Here a worker's g_k is weighted so that the global
gradient is the *mean* sum_k g_k / N, i.e. G_k = g_k / N, so the same rule clips g_k at
sqrt(N) * thr. (Clipping g_k itself at thr / sqrt(N) - N times tighter - clipped 87% of
the steps of a 4-worker MNIST run and cost 12 points of accuracy.) `clip_norm` is thr, the
global norm; sync SGD does not clip, so the default (5.0) is a guard against a blow-up
that an ordinary run never reaches (`clipped_steps` in the summary says how often it did).

Warm-up, as the paper schedules it: sparsity rises exponentially, 75%, 93.75%, 98.4375%,
99.6% (1 - 0.25^k, one stage each), then stays at the final 99.9%. The paper gives each
stage one epoch of a 90-164 epoch run; `warmup_epochs` spreads the four stages over that
many epochs (a quarter of it each), so a short run can warm up over a fraction of an epoch
(the default, 0.25: a sixteenth of an epoch per stage). The momentum is handled the same
way through warm-up and after it (momentum correction + factor masking): u and v carry
over from stage to stage, and a stage change only changes how many coordinates are sent.
Why the warm-up must stay a small share of the run: while a stage sends a quarter of the
coordinates, factor masking resets the momentum of the busiest ones at almost every step,
so they move as plain SGD, ten times slower than momentum SGD at m = 0.9. Measured (MNIST,
12,000 images, 2 epochs, 4 workers, lr 0.05, m 0.9): sync 97.1%; DGC warmed up over 1
epoch 92.5%, over 0.25 epoch 96.8%.

Threshold selection (the paper's sampled, "hierarchical" top-k): an exact top-k of the
whole tensor needs a partial sort of |v| every step, so we sample s entries of |v|, take the
sample's 2k s / n largest as a first threshold (aiming at 2k candidates), and take the exact
top-k among the few candidates that pass. If fewer than k pass (the sample overestimated
the threshold), we fall back to an exact top-k of the whole tensor. How often that happens
depends on how many sampled values lie above the threshold, m = 2k s / n, not on s alone:
the count of candidates has a relative spread of about 1 / sqrt(m), and the fallback needs
a shortfall of half, so m >= 64 makes it a four-sigma event. (Measured on MnistCNN's
tensors: m = 64, no fallback in 600 selections, none in a 4-worker MNIST run; m = 4, 3%;
the former fixed 256 samples gave m = 0.5 on conv2 at 99.9% and a fallback in ~19% of
selections.) So s = max(sample_ratio * n, 64 n / (2k)); when that is n, the top-k is
simply exact (all of MnistCNN's tensors but fc1, which samples 8% of itself).

Wire formats (`wire`), per worker and step:
    "fp32"   the paper's: int32 index + float32 value, 8 bytes per sent element
    "fp16"   (default) float16 value + the index as a uint16 *gap* from the previous sent
             index (indices are sorted; a gap > 65535 is written as zeros meaning "skip
             65535" followed by the rest), 4 bytes per element plus a 4-byte count.
             The rounding error of the float16 value stays in v (error feedback), so
             nothing is lost, only sent a little later; values beyond float16's range are
             sent as +-65504 and the rest stays in v the same way.

Byte counts, reported for the steps at final sparsity (and the whole run, `_overall`):

    compression_ratio = dense gradient bytes / bytes a worker sends, indices included
                      = 4 P / (message + 4 B)             (the paper's measure)
    traffic_ratio     = bytes a rank moves for a ring allreduce of the dense gradient
                        / bytes it moves for the sparse exchange at this N
                      = 2 (N-1)/N * 4 P / ((N-1) * message + 2 (N-1)/N * 4 B)

P parameters, B of them biases; a rank receives the other N-1 workers' messages through
the allgather (the counters in `comm.py` measure both quantities, they are not computed from
these formulas). The traffic ratio falls as N grows, about as 2 / N x compression_ratio: an
allgather's cost grows with N - 1, an allreduce's stays below 2 x the array. At MnistCNN's
sizes the allgather stops paying off (traffic_ratio < 1) at N ~ 2 x compression_ratio.
"""
import math
import time

import numpy as np

from .common import Faults, compute_gradients

WARMUP_SPARSITIES = (0.75, 0.9375, 0.984375, 0.99609375)  # 1 - 0.25^k, k = 1..4
FINAL_SPARSITY = 0.999
WARMUP_EPOCHS = 0.25
CLIP_NORM = 5.0
MIN_SAMPLED_ABOVE = 64
WIRES = ("fp16", "fp32")


def warmup_sparsity(epoch_progress, warmup_epochs=WARMUP_EPOCHS, final=FINAL_SPARSITY,
                    stages=WARMUP_SPARSITIES):
    """Sparsity at `epoch_progress` (epochs done, fractional): the warm-up stages spread
    evenly over `warmup_epochs`, then `final`."""
    if warmup_epochs <= 0 or epoch_progress >= warmup_epochs:
        return final
    stage = int(epoch_progress / warmup_epochs * len(stages))
    return min(stages[stage], final)


def sample_size(n, k, sample_ratio=0.01, min_above=MIN_SAMPLED_ABOVE):
    """How many of n entries to sample when looking for the top k (see the module doc):
    enough that about `min_above` sampled values lie above the threshold."""
    return min(n, max(math.ceil(n * sample_ratio), math.ceil(min_above * n / (2 * k))))


def top_k_indices(v_abs, k, rng, sample_ratio=0.01, min_above=MIN_SAMPLED_ABOVE):
    """Indices (sorted) of the k largest entries of the 1-D array `v_abs`, found through a
    sampled threshold. Returns (indices, used_fallback)."""
    n = v_abs.size
    if k >= n:
        return np.arange(n), False
    s = sample_size(n, k, sample_ratio, min_above)
    if s < n:
        sample = v_abs[rng.integers(0, n, size=s)]
        ks = min(s, max(1, math.ceil(2 * k * s / n)))      # aim at ~2k candidates
        thr = np.partition(sample, s - ks)[s - ks]          # ks-th largest of the sample
        candidates = np.flatnonzero(v_abs >= thr)
        if len(candidates) >= k:  # the usual case: exact top-k among a few candidates
            best = np.argpartition(v_abs[candidates], len(candidates) - k)
            return np.sort(candidates[best[len(candidates) - k:]]), False
        fell_back = True   # the sample misjudged: fewer than k passed
    else:
        fell_back = False  # small tensor: the exact top-k is the plan, not a fallback
    best = np.argpartition(v_abs, n - k)[n - k:]            # exact top-k of all
    return np.sort(best), fell_back


# -------------------------------------------------------------------------- the wire
_SKIP = 65535  # a zero in the gap stream means "advance 65535, no value here"
FP16_MAX = float(np.finfo(np.float16).max)


def encode_gaps(idx):
    """Sorted distinct indices -> uint16 gaps (first gap from -1). A gap d >= 1 is written
    as (d-1) // 65535 zeros ("skip 65535") then (d-1) % 65535 + 1."""
    gaps = np.diff(np.asarray(idx, dtype=np.int64), prepend=-1)
    skips = (gaps - 1) // _SKIP
    last = ((gaps - 1) % _SKIP + 1).astype(np.uint16)
    if not skips.any():
        return last
    out = np.zeros(len(gaps) + int(skips.sum()), dtype=np.uint16)
    out[np.cumsum(skips + 1) - 1] = last
    return out


def decode_gaps(code):
    """The inverse of `encode_gaps`: int64 indices."""
    code = np.asarray(code, dtype=np.uint16)
    step = np.where(code == 0, _SKIP, code).astype(np.int64)
    return (np.cumsum(step) - 1)[code != 0]


def to_wire_values(values, wire):
    """The values as the receivers will see them (float32), after the wire's rounding."""
    if wire == "fp16":
        return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
    return values.astype(np.float32, copy=True)


def pack_message(idx, values, wire):
    """One worker's (sorted global indices, float32 values) as the bytes it sends."""
    if wire == "fp32":
        return np.concatenate([idx.astype(np.int32).view(np.uint8),
                               values.astype(np.float32).view(np.uint8)])
    gaps = encode_gaps(idx)
    return np.concatenate([np.array([len(gaps)], dtype=np.uint32).view(np.uint8),
                           gaps.view(np.uint8), values.astype(np.float16).view(np.uint8)])


def unpack_message(msg, wire):
    """(int64 indices, float32 values) of a `pack_message`d byte array."""
    msg = np.ascontiguousarray(msg, dtype=np.uint8)
    if wire == "fp32":
        k = len(msg) // 8
        return msg[:4 * k].view(np.int32).astype(np.int64), msg[4 * k:].view(np.float32)
    n = int(msg[:4].view(np.uint32)[0])
    idx = decode_gaps(msg[4:4 + 2 * n].view(np.uint16))
    return idx, msg[4 + 2 * n:].view(np.float16).astype(np.float32)


class DGCCompressor:
    """The per-worker state of DGC for a list of tensor shapes: momentum u and accumulated
    velocity v, one pair per tensor, and the selection of what to send."""

    def __init__(self, shapes, momentum=0.9, sample_ratio=0.01, seed=0, wire="fp32",
                 momentum_masking=True):
        if wire not in WIRES:
            raise ValueError(f"DGC wire format {wire!r}: expected one of {WIRES}")
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self.momentum, self.sample_ratio, self.wire = momentum, sample_ratio, wire
        self.momentum_masking = momentum_masking
        self.u = [np.zeros(n, dtype=np.float32) for n in self.sizes]
        self.v = [np.zeros(n, dtype=np.float32) for n in self.sizes]
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.fallbacks = 0
        self.selections = 0

    def reseed(self, *key):
        """A fresh sampling stream for (seed, *key): an epoch's samples then depend on the
        epoch only, so a resumed run draws exactly what an uninterrupted one did."""
        seed = self.seed if isinstance(self.seed, tuple) else (self.seed,)
        self.rng = np.random.default_rng([*seed, *key])

    def accumulate(self, grads):
        """Momentum correction and local accumulation: u = m u + g;  v = v + u."""
        for u, v, g in zip(self.u, self.v, grads, strict=True):
            u *= self.momentum
            u += g.ravel()
            v += u

    def compress(self, sparsity):
        """Select what to send at this sparsity, leave in v what the receivers will not see
        (nothing, or the wire's rounding error), zero u there (momentum factor masking).
        Returns (int64 indices into the concatenation of all tensors, float32 values as the
        receivers will decode them)."""
        density = 1.0 - sparsity
        all_idx, all_val = [], []
        for t, (u, v) in enumerate(zip(self.u, self.v, strict=True)):
            k = max(1, math.ceil(density * v.size))
            idx, fell_back = top_k_indices(np.abs(v), k, self.rng, self.sample_ratio)
            self.fallbacks += fell_back
            self.selections += 1
            sent = to_wire_values(v[idx], self.wire)
            all_val.append(sent)
            all_idx.append(idx + self.offsets[t])
            v[idx] -= sent  # 0 for fp32; fp16: its rounding error waits for a later step
            if self.momentum_masking:
                u[idx] = 0.0
        return np.concatenate(all_idx), np.concatenate(all_val)

    def decompress(self, gathered_idx, gathered_val):
        """Sum every worker's (indices, values) into one dense vector per tensor."""
        total = np.zeros(self.total, dtype=np.float32)
        for idx, val in zip(gathered_idx, gathered_val, strict=True):  # rank order
            total[idx] += val  # indices are unique within one worker's message
        return [total[a:b].reshape(s) for a, b, s in
                zip(self.offsets[:-1], self.offsets[1:], self.shapes, strict=True)]

    # -- checkpoints ---------------------------------------------------------------------
    def state(self):
        return {"u": np.concatenate(self.u), "v": np.concatenate(self.v)}

    def load_state(self, state):
        for name in ("u", "v"):
            flat = np.asarray(state[name], dtype=np.float32)
            if flat.size != self.total:
                raise ValueError(f"DGC state {name}: {flat.size} numbers, the model has "
                                 f"{self.total} in its weight tensors")
            for buf, a, b in zip(getattr(self, name), self.offsets[:-1], self.offsets[1:],
                                 strict=True):
                buf[...] = flat[a:b]


class DGC:
    name = "dgc"

    def __init__(self, comm, model, batches, lr, momentum=0.9, warmup_epochs=WARMUP_EPOCHS,
                 final_sparsity=FINAL_SPARSITY, clip_norm=CLIP_NORM, sample_ratio=0.01,
                 seed=0, wire="fp16", momentum_masking=True, faults=None):
        self.comm, self.model, self.batches = comm, model, batches
        self.lr, self.momentum = lr, momentum
        self.warmup_epochs, self.final_sparsity = warmup_epochs, final_sparsity
        self.clip_norm, self.wire = clip_norm, wire
        self.faults = faults or Faults()
        params = model.parameters()
        self.sparse = [p for p in params if p.ndim > 1]   # weights: compressed
        self.dense = [p for p in params if p.ndim <= 1]   # biases: sent dense
        self.compressor = DGCCompressor([p.shape for p in self.sparse], momentum,
                                        sample_ratio, seed=(seed, comm.rank), wire=wire,
                                        momentum_masking=momentum_masking)
        self.dense_momentum = [np.zeros_like(p.data) for p in self.dense]
        N = comm.size
        self.dense_step_bytes = 4 * sum(p.size for p in params)  # one dense fp32 gradient
        self.dense_step_moved = 2 * (N - 1) / N * self.dense_step_bytes  # its ring allreduce
        with comm.uncounted():  # replicas start identical: rank 0's parameters
            for p in params:
                p.data[...] = comm.bcast(p.data, root=0)
        self.steps = 0
        self.clipped = 0
        # [sent, moved, dense sent, dense moved] over the steps at final sparsity / all steps
        self.bytes = {"final": [0, 0, 0, 0], "all": [0, 0, 0, 0]}

    # -- checkpoints ---------------------------------------------------------------------
    def per_rank_state(self):
        """This rank's own state: u and v (every rank's differ)."""
        return self.compressor.state()

    def shared_state(self):
        """State that is the same on every rank: the biases' momentum."""
        return {"dense_momentum": np.concatenate([b.ravel() for b in self.dense_momentum])
                if self.dense_momentum else np.zeros(0, np.float32)}

    def load_state(self, per_rank, shared):
        self.compressor.load_state(per_rank)
        flat, offset = np.asarray(shared["dense_momentum"], dtype=np.float32), 0
        for buf in self.dense_momentum:
            buf[...] = flat[offset:offset + buf.size].reshape(buf.shape)
            offset += buf.size

    # -- one step ------------------------------------------------------------------------
    def _local_gradients(self, xb, yb, n_global):
        """My gradients, weighted so that (sum over workers) / N is the global mean."""
        params = self.sparse + self.dense
        if xb is None:
            return 0.0, 0, 0, [np.zeros_like(p.data) for p in params]
        loss, correct = compute_gradients(self.model, xb, yb)
        w = len(yb) * self.comm.size / n_global
        grads = [p.grad * np.float32(w) for p in params]
        if self.clip_norm:  # the paper's local clipping: g_k / N at clip_norm / sqrt(N)
            limit = self.clip_norm * math.sqrt(self.comm.size)
            norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
            if norm > limit:
                grads = [g * np.float32(limit / norm) for g in grads]
                self.clipped += 1
        return loss * len(yb), correct, len(yb), grads

    def step(self, xb, yb, n_global, sparsity):
        comm, N = self.comm, self.comm.size
        self.faults.at_step(comm.rank, self.steps)
        loss_sum, correct, n, grads = self._local_gradients(xb, yb, n_global)
        g_sparse, g_dense = grads[:len(self.sparse)], grads[len(self.sparse):]
        sent0, moved0 = comm.bytes_sent, comm.bytes_moved

        # weights: momentum correction, accumulation, top-k, variable-size allgather
        self.compressor.accumulate(g_sparse)
        idx, val = self.compressor.compress(sparsity)
        messages = comm.allgather(pack_message(idx, val, self.wire))
        gathered = [unpack_message(m, self.wire) for m in messages]
        updates = self.compressor.decompress([i for i, _ in gathered], [v for _, v in gathered])
        for p, upd in zip(self.sparse, updates, strict=True):
            p.data -= self.lr * (upd / N)

        # biases: dense allreduce, then ordinary momentum SGD (same on every replica)
        if self.dense:
            flat = comm.allreduce(np.concatenate([g.ravel() for g in g_dense])) / N
            offset = 0
            for p, buf in zip(self.dense, self.dense_momentum, strict=True):
                g = flat[offset:offset + p.size].reshape(p.shape)
                offset += p.size
                buf *= self.momentum
                buf += g
                p.data -= self.lr * buf

        counts = (comm.bytes_sent - sent0, comm.bytes_moved - moved0, self.dense_step_bytes,
                  self.dense_step_moved)
        for key in ("all", "final") if sparsity >= self.final_sparsity else ("all",):
            self.bytes[key] = [a + b for a, b in zip(self.bytes[key], counts, strict=True)]
        self.steps += 1
        return loss_sum, correct, n

    def train(self, epochs, log=None, start_epoch=0, on_epoch_end=None):
        """Epochs start_epoch .. epochs-1; `on_epoch_end(epoch)` after each (checkpoints)."""
        t0 = time.perf_counter()
        bytes0 = self.comm.bytes_sent
        loss_sum = correct = seen = 0
        steps_per_epoch = len(self.batches)
        sparsity = None
        for epoch in range(start_epoch, epochs):
            self.compressor.reseed(epoch)
            for step, xb, yb, n_global in self.batches.epoch(epoch):
                sparsity = warmup_sparsity(epoch + step / steps_per_epoch, self.warmup_epochs,
                                           self.final_sparsity)
                ls, c, n = self.step(xb, yb, n_global, sparsity)
                loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
            if log is not None:
                log(f"[dgc rank {self.comm.rank}] epoch {epoch + 1}/{epochs} done, sparsity "
                    f"{sparsity:.4%}")
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        b_all, b_fin = self.bytes["all"], self.bytes["final"]
        return {"steps": self.steps, "train_seconds": time.perf_counter() - t0,
                "loss_sum": loss_sum, "correct": correct, "seen": seen,
                "bytes_sent": self.comm.bytes_sent - bytes0,
                "bytes_moved": b_all[1], "dense_bytes": b_all[2], "dense_moved": b_all[3],
                "sent_bytes_final": b_fin[0], "moved_bytes_final": b_fin[1],
                "dense_bytes_final": b_fin[2], "dense_moved_final": b_fin[3],
                "clipped_steps": self.clipped, "threshold_fallbacks": self.compressor.fallbacks,
                "threshold_selections": self.compressor.selections}
