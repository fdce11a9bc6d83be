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
    decode_gaps,
    encode_gaps,
    pack_message,
    sample_size,
    top_k_indices,
    unpack_message,
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

    a = np.linspace(0, 1, 1_000_000, dtype=np.float32)[::-1].copy()
    idx, fell_back = top_k_indices(a, 1000, Unlucky())
    assert fell_back and idx.tolist() == list(range(1000))
    idx, fell_back = top_k_indices(a, 1000, np.random.default_rng(0))
    assert not fell_back and idx.tolist() == list(range(1000))


def test_sample_size_keeps_64_sampled_values_above_the_threshold():
    for n, density in [(401_408, 0.001), (18_432, 0.001), (10**7, 0.001), (401_408, 0.25)]:
        k = math.ceil(density * n)
        s = sample_size(n, k)
        assert s == n or 2 * k * s / n >= 64
        assert s >= min(n, math.ceil(0.01 * n))
    assert sample_size(401_408, 402) == 31_953  # MnistCNN's fc1 at 99.9%: 8% of it


# MnistCNN's weight tensors, and what DGC's accumulated velocity looks like: a dense sum of
# momenta, spread unevenly over rows (some units learn faster), sometimes heavy-tailed.
MNIST_SHAPES = [(32, 1, 3, 3), (64, 32, 3, 3), (128, 3136), (64, 128), (10, 64)]


def test_full_top_k_fallback_stays_under_one_percent_of_selections():
    rng = np.random.default_rng(0)
    comp = DGCCompressor(MNIST_SHAPES, momentum=0.9, seed=1)
    scales = [rng.gamma(2.0, size=(s[0],) + (1,) * (len(s) - 1)).astype(np.float32)
              for s in MNIST_SHAPES]
    for step in range(120):
        sparsity = (*WARMUP_SPARSITIES, FINAL_SPARSITY)[min(step // 20, 4)]
        if step % 2:
            grads = [rng.normal(size=s).astype(np.float32) * sc
                     for s, sc in zip(MNIST_SHAPES, scales, strict=True)]
        else:
            grads = [rng.standard_t(3, size=s).astype(np.float32) * sc
                     for s, sc in zip(MNIST_SHAPES, scales, strict=True)]
        comp.accumulate(grads)
        comp.compress(sparsity)
    assert comp.selections == 120 * len(MNIST_SHAPES)
    assert comp.fallbacks / comp.selections < 0.01, (comp.fallbacks, comp.selections)


def test_index_gaps_round_trip_including_gaps_beyond_uint16():
    rng = np.random.default_rng(0)
    for idx in [np.array([0]), np.array([65534, 65535, 65536]), np.array([5, 200_000]),
                np.array([0, 65535 * 3 + 1, 10**7]),
                np.sort(rng.choice(10**6, size=500, replace=False)),
                np.array([], dtype=np.int64)]:
        code = encode_gaps(idx)
        assert code.dtype == np.uint16
        np.testing.assert_array_equal(decode_gaps(code), idx)
    # gaps that fit take one uint16 each: 2 bytes per index instead of 4
    idx = np.arange(0, 10_000, 997)
    assert encode_gaps(idx).nbytes == 2 * len(idx)


@pytest.mark.parametrize("wire,per_element", [("fp32", 8), ("fp16", 4)])
def test_messages_round_trip_and_cost_what_the_docstring_says(wire, per_element):
    idx = np.array([3, 70, 9000, 60_000], dtype=np.int64)
    val = np.array([0.5, -2.0, 1e-3, 3.0], dtype=np.float32)
    msg = pack_message(idx, val, wire)
    assert msg.nbytes == per_element * 4 + (4 if wire == "fp16" else 0)
    got_idx, got_val = unpack_message(msg, wire)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_allclose(got_val, val, rtol=1e-3)


def test_fp16_rounding_error_stays_in_the_residual():
    """What the receivers decode + what stays in v == the accumulated v, exactly."""
    rng = np.random.default_rng(0)
    shapes = [(40, 50)]
    comp = DGCCompressor(shapes, momentum=0.0, seed=0, wire="fp16")
    g = (rng.normal(size=shapes[0]) * 1e3).astype(np.float32)
    g[0, 0] = 1e6  # beyond float16's range: sent as 65504, the rest kept
    comp.accumulate([g])
    before = comp.v[0].copy()
    idx, val = comp.compress(0.9)
    assert 0 in idx.tolist() and val[idx.tolist().index(0)] == 65504.0
    assert val.dtype == np.float32 and np.all(val == val.astype(np.float16))
    sent = comp.decompress([idx], [val])[0].ravel()
    np.testing.assert_array_equal(sent + comp.v[0], before)
    assert comp.v[0][0] == np.float32(1e6) - np.float32(65504)


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
        for s, v_after, v_before in zip(sent, comp.v, before, strict=True):
            # sent + residual == accumulated, bit for bit (a partition, no arithmetic)
            np.testing.assert_array_equal(s.ravel() + v_after, v_before)
            assert not np.any((s.ravel() != 0) & (v_after != 0))
        for s, u_after, ub in zip(sent, comp.u, u_before, strict=True):  # factor masking
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


@pytest.mark.parametrize("wire", ["fp16", "fp32"])
def test_dgc_learns_and_reports_both_byte_ratios(task, wire):
    train, test = task
    model = mlp(hidden=256)  # big enough that 0.1% of a weight tensor is > 1 element
    N = 3
    s = train_distributed("dgc", model, train, test, workers=N, epochs=3, batch_size=32,
                          lr=0.05, dgc_warmup_epochs=1.0, dgc_wire=wire)
    assert s["test_accuracy"] > 0.8
    steps = s["steps"]
    assert steps == 3 * 32
    n = model.num_parameters()
    assert s["dense_bytes"] == steps * N * 4 * n
    assert s["dense_moved"] == pytest.approx(steps * N * 2 * (N - 1) / N * 4 * n)
    # weights: ceil(0.001 * size) elements per rank and step; biases dense (allreduce)
    weights = [p.size for p in model.parameters() if p.ndim > 1]
    biases = sum(p.size for p in model.parameters() if p.ndim == 1)
    k = sum(math.ceil(0.001 * w) for w in weights)
    message = 8 * k if wire == "fp32" else 4 + 4 * k  # no index gap > 65535 in 6144 weights
    assert s["compression_ratio"] == pytest.approx(4 * n / (message + 4 * biases))
    dense_moved = 2 * (N - 1) / N * 4 * n
    moved = (N - 1) * message + 2 * (N - 1) / N * 4 * biases
    assert s["traffic_ratio"] == pytest.approx(dense_moved / moved)
    assert s["traffic_ratio"] < s["compression_ratio"]  # the allgather's N - 1
    assert s["compression_ratio_overall"] < s["compression_ratio"]
    assert s["threshold_fallback_rate"] < 0.01


def test_sync_reports_ratios_of_one(task):
    train, test = task
    s = train_distributed("sync", mlp(), train, test, workers=3, epochs=1, batch_size=100)
    assert s["compression_ratio"] == 1.0 and s["traffic_ratio"] == pytest.approx(1.0)
    assert s["bytes_moved"] == pytest.approx(s["dense_moved"])


def test_local_clipping_is_scaled_as_in_the_paper(task):
    """Each worker clips its g_k at sqrt(N) x clip_norm, i.e. its share g_k / N of the
    global gradient at clip_norm / sqrt(N)."""
    from minigrad.distributed.comm_threads import launch_threads
    from minigrad.distributed.common import ShardedBatches, replica
    from minigrad.distributed.dgc import DGC

    train, _ = task
    base = mlp()
    models = [replica(base) for _ in range(4)]

    def fn(comm):
        b = ShardedBatches(train, 64, 0, comm.rank, comm.size)
        dgc = DGC(comm, models[comm.rank], b, lr=0.05, clip_norm=1e-3)
        _, xb, yb, n = next(iter(b.epoch(0)))
        grads = dgc._local_gradients(xb, yb, n)[3]
        return math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))

    for norm in launch_threads(4, fn):
        assert norm == pytest.approx(1e-3 * math.sqrt(4), rel=1e-5)


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
                           warmup_epochs=0, clip_norm=None, wire="fp32").train(1)
            return SyncSGD(comm, m, SGD(m.parameters(), lr=0.05), b).train(1)

        launch_threads(2, fn)
        return models[0]

    a, b = run("dgc"), run("sync")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6)
