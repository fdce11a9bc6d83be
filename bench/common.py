"""What every bench suite shares: how a kernel is timed, and reading a statistic back.

Two rules keep the suites usable with pytest-benchmark's own tools:

* Every row of a group does the same work, so pytest-benchmark's relative columns (and
  `pytest-benchmark compare --group-by=group`) compare like with like: a conv group is one
  layer and one pass ("mnist-conv2 forward"), never forward mixed with forward+backward.
* Under `--benchmark-disable` (the smoke run CI does) the fixture still calls the function
  once but measures nothing: `benchmark.stats` is None. `statistic()` returns None then, and
  the derived numbers (GFLOP/s, batches/s) are simply not recorded.

The figures use the median and its interquartile range, not the mean: on a shared machine a
few slow rounds (another process woke up) drag the mean, while the median stays put.
"""
import time

import numpy as np

# Every timed test first calls its function for at least SETTLE_S seconds, untimed. Thread
# pools keep spinning after their last call: OpenBLAS's workers for tens of milliseconds,
# which on 2 cores made the Numba im2col's conv2 forward measure 1.68 ms right after the
# NumPy im2col (whose GEMMs are OpenBLAS's) and 1.15 ms on its own. Settling lets the
# previous test's threads go to sleep, whichever engine it ran.
SETTLE_S = 0.25
TARGET_S = 0.6  # about this much timing per benchmark: 2 to 20 rounds


def statistic(benchmark, name="median"):
    """stats.<name> in seconds (median, mean, min, q1, ...), or None when benchmarks are
    disabled (`--benchmark-disable`: the function ran once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return getattr(stats.stats, name)


def run_timed(benchmark, fn):
    """Time fn with an adaptive number of rounds (one call per round).

    Enabled: one warm-up call (Numba compilation, BLAS threads start), SETTLE_S seconds of
    untimed calls, then rounds chosen so that timing takes about TARGET_S. Disabled: the
    fixture calls fn once; nothing else is run, so the smoke test stays quick.
    """
    if benchmark.disabled:
        return benchmark.pedantic(fn, rounds=1, iterations=1)
    fn()
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < SETTLE_S:
        fn()
        calls += 1
    once = (time.perf_counter() - start) / calls
    rounds = int(min(20, max(2, TARGET_S / max(once, 1e-6))))
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def rate(benchmark, amount, scale=1.0):
    """amount / median time * scale (e.g. flops / s / 1e9 = GFLOP/s), or None if disabled."""
    t = statistic(benchmark, "median")
    return None if t is None else amount / t * scale


def record(benchmark, **extra):
    """benchmark.extra_info.update(extra), leaving out the entries that are None (a rate
    that a disabled run could not measure), so a JSON never carries a null number."""
    benchmark.extra_info.update({k: v for k, v in extra.items() if v is not None})


# --------------------------------------------------------------------------- conv layers
# The layers every convolution benchmark times (test_bench_conv.py, numba_vs_numpy.py,
# interleaved_conv.py): the seed MNIST CNN's two, and a wide 64-channel 56x56 one.
LAYERS = {  # name: (x shape, w shape, stride, padding)
    "mnist-conv1": ((64, 1, 28, 28), (32, 1, 3, 3), 1, 1),
    "mnist-conv2": ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1),
    "wide": ((16, 64, 56, 56), (64, 64, 3, 3), 1, 1),
}


def conv_flops(x_shape, w_shape, stride, padding):
    """Multiply-adds of one forward convolution, times 2."""
    n, c, h, w = x_shape
    m, _, kh, kw = w_shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    return 2 * n * m * ho * wo * c * kh * kw


def pass_flops(layer, pass_):
    """Forward: one GEMM's worth; forward+backward: three (y, dx and dw)."""
    return conv_flops(*LAYERS[layer]) * (1 if pass_ == "forward" else 3)


def make_inputs(layer):
    """x, w and an output gradient dy for `layer`: float32, the same numbers every time."""
    x_shape, w_shape, stride, padding = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y_shape = (x_shape[0], w_shape[0]) + tuple(
        (s + 2 * padding - k) // stride + 1
        for s, k in zip(x_shape[2:], w_shape[2:], strict=True)
    )
    dy = rng.standard_normal(y_shape).astype(np.float32)
    return x, w, dy


def step_flops():
    """One MNIST CNN training step at batch 64 (minigrad.models.MnistCNN): forward,
    weight-gradient and data-gradient GEMM flops of conv2 and the dense layers, plus conv1's
    forward and weight gradient (its input needs no gradient)."""
    conv1 = 2 * 64 * 32 * 28 * 28 * 1 * 9
    conv2 = 2 * 64 * 64 * 14 * 14 * 32 * 9
    fc = 2 * 64 * (3136 * 128 + 128 * 64 + 64 * 10)
    return 2 * conv1 + 3 * conv2 + 3 * fc


# --------------------------------------------------------------------------- timing helpers


def median_seconds(fn, repeat, settle):
    """Median of `repeat` timed calls of fn, in seconds, after untimed calls (one at least)
    for `settle` seconds: thread pools wake up, Numba compiles or loads from its cache, and
    the threads of whatever ran before go quiet."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < settle:
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def sgemm_gflops(n=2048):
    """NumPy's float32 sgemm here, n^3, best of 3 (after one untimed call), in GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a  # warm up BLAS threads
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def mnist_train_step(engine, init, x, y):
    """One training step of the MNIST CNN (forward, backward, Adam 1e-3) on the batch (x, y),
    as a no-argument callable returning the loss; the model starts from `init`'s weights.
    engine: "pytorch" (bench/torch_reference.py's copy of the network) or a minigrad
    convolution algorithm."""
    if engine == "pytorch":
        import torch

        from bench import torch_reference as ref

        model = ref.copy_weights(ref.TorchMnistCNN(), init)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            loss = torch.nn.functional.cross_entropy(model(tx), ty)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        return torch_step
    import minigrad as mg
    from minigrad import functional as F
    from minigrad.models import MnistCNN
    from minigrad.optim import Adam

    model = MnistCNN(algo=engine).load_state_dict(init.state_dict())
    opt = Adam(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model(mg.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step
