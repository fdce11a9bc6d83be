"""Deep Gradient Compression: each piece in isolation, then a short run."""
import math

import numpy as np
import pytest
from dist_helpers import mlp

from minigrad.distributed import train_distributed
from minigrad.distributed.dgc import (
    FINAL_SPARSITY,
    WARMUP_SPARSITIES,
    DGCCompressor,
    top_k_indices,
    warmup_sparsity,
)


def test_warmup_schedule_values():
    assert WARMUP_SPARSITIES == (0.75, 0.9375, 0.984375, 0.99609375)
    got = [warmup_sparsity(e, warmup_epochs=1.0) for e in (0, 0.2, 0.25, 0.49, 0.5, 0.75,
                                                            0.99, 1.0, 1.5, 7)]
    assert got == [0.75, 0.75, 0.9375, 0.9375, 0.984375, 0.99609375, 0.99609375,
                   FINAL_SPARSITY, FINAL_SPARSITY, FINAL_SPARSITY]
    # settable: spread over two epochs; none at all
    assert warmup_sparsity(1.0, warmup_epochs=2.0) == 0.984375
    assert warmup_sparsity(0.0, warmup_epochs=0) == FINAL_SPARSITY
    assert warmup_sparsity(0.1, warmup_epochs=1, final=0.9) == 0.75
    assert warmup_sparsity(0.9, warmup_epochs=1, final=0.9) == 0.9  # never above final


@pytest.mark.parametrize("n,density", [(100_000, 0.001), (401_408, 0.001), (8_192, 0.001),
                                       (50_000, 0.01), (30_000, 0.25), (1000, 0.0625)])
@pytest.mark.parametrize("dist", ["normal", "heavy"])
def test_threshold_selection_reaches_target_density(n, density, dist):
    rng = np.random.default_rng(n)
    v = rng.normal(size=n) if dist == "normal" else rng.standard_cauchy(size=n)
    a = np.abs(v).astype(np.float32)
    k = max(1, math.ceil(density * n))
    idx, _ = top_k_indices(a, k, np.random.default_rng(1))
    assert abs(len(idx) - k) <= 0.2 * k
    assert len(np.unique(idx)) == len(idx)
    # the chosen ones are (up to ties) the largest
    assert a[idx].min() >= np.partition(a, n - k)[n - k] - 1e-7


def test_threshold_fallback_when_the_sample_misjudges():
    """A sample that only ever sees the largest entry sets the threshold too high: fewer
    than k pass, and the selection falls back to an exact top-k."""

    class Unlucky:  # "random" indices that always hit entry 0, the maximum
        def integers(self, low, high, size):
            return np.zeros(size, dtype=np.int64)

    a = np.linspace(0, 1, 10_000, dtype=np.float32)[::-1].copy()
    idx, fell_back = top_k_indices(a, 20, Unlucky())
    assert fell_back and idx.tolist() == list(range(20))
    idx, fell_back = top_k_indices(a, 20, np.random.default_rng(0))
    assert not fell_back and idx.tolist() == list(range(20))


def test_accumulation_keeps_every_unsent_gradient_exactly():
    rng = np.random.default_rng(0)
    shapes = [(30, 40), (5, 3, 3, 3), (64, 10)]
    comp = DGCCompressor(shapes, momentum=0.9, seed=0)
    for _ in range(6):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        comp.accumulate(grads)
        before = [v.copy() for v in comp.v]
        u_before = [u.copy() for u in comp.u]
        idx, val = comp.compress(0.99)
        sent = comp.decompress([idx], [val])
        for s, v_after, v_before in zip(sent, comp.v, before):
            # sent + residual == accumulated, bit for bit (a partition, no arithmetic)
            np.testing.assert_array_equal(s.ravel() + v_after, v_before)
            assert not np.any((s.ravel() != 0) & (v_after != 0))
        for s, u_after, ub in zip(sent, comp.u, u_before):  # momentum factor masking
            mask = s.ravel() != 0
            assert np.all(u_after[mask] == 0)
            np.testing.assert_array_equal(u_after[~mask], ub[~mask])


def test_momentum_correction_accumulates_velocity():
    comp = DGCCompressor([(4,)], momentum=0.5)
    g = np.array([1.0, 0, 0, 0], np.float32)
    comp.accumulate([g])                       # u = g, v = g
    comp.accumulate([np.zeros(4, np.float32)])  # u = 0.5 g, v = 1.5 g
    np.testing.assert_allclose(comp.u[0], [0.5, 0, 0, 0])
    np.testing.assert_allclose(comp.v[0], [1.5, 0, 0, 0])
    idx, val = comp.compress(0.75)  # k = 1: the only nonzero
    assert idx.tolist() == [0] and val.tolist() == [1.5]


def test_decompress_sums_workers_in_global_index_space():
    comp = DGCCompressor([(2, 2), (3,)])
    out = comp.decompress([np.array([0, 4], np.int32), np.array([0, 6], np.int32)],
                          [np.array([1.0, 2.0], np.float32), np.array([10.0, 3.0], np.float32)])
    np.testing.assert_array_equal(out[0], [[11, 0], [0, 0]])
    np.testing.assert_array_equal(out[1], [2, 0, 3])


def test_dgc_learns_and_reports_bytes(task):
    train, test = task
    model = mlp(hidden=256)  # big enough that 0.1% of a weight tensor is > 1 element
    s = train_distributed("dgc", model, train, test, workers=3, epochs=3, batch_size=32,
                          lr=0.05, dgc_warmup_epochs=1.0)
    assert s["test_accuracy"] > 0.8
    steps = s["steps"]
    assert steps == 3 * 32
    n = model.num_parameters()
    assert s["dense_bytes"] == steps * 3 * 4 * n
    # weights: ceil(0.001 * size) values + int32 indices per rank and step, biases dense
    weights = [p.size for p in model.parameters() if p.ndim > 1]
    biases = sum(p.size for p in model.parameters() if p.ndim == 1)
    final_step = 8 * (sum(math.ceil(0.001 * w) for w in weights)) + 4 * biases
    assert s["compression_ratio"] == pytest.approx(4 * n / final_step)
    assert s["compression_ratio_overall"] < s["compression_ratio"]


def test_dgc_without_compression_is_plain_sgd_on_the_mean_gradient(task):
    """At sparsity 0 everything is sent every step, masking zeroes u: DGC is then plain SGD
    with the global mean gradient, i.e. sync SGD without momentum."""
    train, test = task
    from minigrad.distributed.comm_threads import launch_threads
    from minigrad.distributed.common import ShardedBatches, replica
    from minigrad.distributed.dgc import DGC
    from minigrad.distributed.sync import SyncSGD
    from minigrad.optim import SGD

    base = mlp()

    def run(kind):
        models = [replica(base) for _ in range(2)]

        def fn(comm):
            m = models[comm.rank]
            b = ShardedBatches(train, 50, 0, comm.rank, comm.size)
            if kind == "dgc":
                return DGC(comm, m, b, lr=0.05, momentum=0.0, final_sparsity=0.0,
                           warmup_epochs=0, clip_norm=None).train(1)
            return SyncSGD(comm, m, SGD(m.parameters(), lr=0.05), b).train(1)

        launch_threads(2, fn)
        return models[0]

    a, b = run("dgc"), run("sync")
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6)
