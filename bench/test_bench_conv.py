"""Convolution kernels vs torch.nn.functional.conv2d, same process, same inputs.

    python -m pytest bench/test_bench_conv.py --benchmark-only            # full run
    python -m pytest bench/test_bench_conv.py -k conv2 --benchmark-only   # one layer
    python -m pytest bench/test_bench_conv.py --benchmark-disable         # smoke test

One pytest-benchmark group per layer shape; inside it, forward ("fwd") and forward+backward
("fwdbwd") for every algorithm x backend (cupy only where CuPy and a GPU exist) and for
PyTorch, so the table reads directly as ratios to PyTorch. extra_info carries flops, gflops
(from the mean), workspace_bytes, algo, backend, device and the session's sgemm_gflops.

Rounds adapt to the kernel's speed (about 0.6 s of timing each, 2 to 20 rounds, after one
warm-up call that also triggers Numba compilation). The direct NumPy reference (Python loops
over output pixels) is excluded from the "wide" layer: it takes tens of seconds there.
"""
import time

import numpy as np
import pytest

from minigrad import kernels

torch = pytest.importorskip("torch")

LAYERS = {  # name: (x shape, w shape, stride, padding)
    "mnist-conv1": ((64, 1, 28, 28), (32, 1, 3, 3), 1, 1),
    "mnist-conv2": ((64, 32, 14, 14), (64, 32, 3, 3), 1, 1),
    "wide": ((16, 64, 56, 56), (64, 64, 3, 3), 1, 1),
}
SKIP = {("wide", "direct", "numpy")}
TARGET_S = 0.6


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


BACKENDS = ["numpy", "numba"] + (["cupy"] if _gpu_available() else [])


def conv_flops(x_shape, w_shape, stride, padding):
    n, c, h, w = x_shape
    m, _, kh, kw = w_shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    return 2 * n * m * ho * wo * c * kh * kw


# Every test first calls its function for at least SETTLE_S seconds, untimed. Thread pools
# keep spinning after their last call: OpenBLAS's workers for tens of milliseconds, which on
# 2 cores made the Numba im2col's conv2 forward measure 1.68 ms right after the NumPy im2col
# (whose GEMMs are OpenBLAS's) and 1.15 ms on its own. Settling lets the previous test's
# threads go to sleep, whichever engine it ran.
SETTLE_S = 0.25


def run_timed(benchmark, fn):
    fn()  # warm-up: compiles Numba kernels, spins up BLAS/OpenMP threads
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < SETTLE_S:
        fn()
        calls += 1
    once = (time.perf_counter() - start) / calls
    rounds = int(min(20, max(2, TARGET_S / max(once, 1e-6))))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def record(benchmark, *, layer, pass_, algo, backend, device, flops, ws, sgemm):
    benchmark.extra_info.update(
        layer=layer, pass_=pass_, algo=algo, backend=backend, device=device, flops=flops,
        workspace_bytes=ws, sgemm_gflops=round(sgemm, 1),
    )
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops"] = round(flops / stats.stats.mean / 1e9, 2)


def make_inputs(layer, xp=np):
    x_shape, w_shape, stride, padding = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y_shape = (x_shape[0], w_shape[0]) + tuple(
        (s + 2 * padding - k) // stride + 1 for s, k in zip(x_shape[2:], w_shape[2:])
    )
    dy = rng.standard_normal(y_shape).astype(np.float32)
    return x, w, dy


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_conv(benchmark, sgemm_gflops, layer, algo, backend, pass_):
    if (layer, algo, backend) in SKIP:
        pytest.skip("direct NumPy reference is too slow for this layer (tens of seconds)")
    benchmark.group = layer
    x_shape, w_shape, stride, padding = LAYERS[layer]
    x, w, dy = make_inputs(layer)
    sync = lambda: None  # noqa: E731
    if backend == "cupy":
        import cupy

        x, w, dy = cupy.asarray(x), cupy.asarray(w), cupy.asarray(dy)
        sync = cupy.cuda.Device().synchronize

    def fwd():
        y = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend=backend)
        sync()
        return y

    def fwdbwd():
        kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend=backend)
        g = kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo, backend=backend)
        sync()
        return g

    run_timed(benchmark, fwd if pass_ == "fwd" else fwdbwd)
    flops = conv_flops(x_shape, w_shape, stride, padding) * (1 if pass_ == "fwd" else 3)
    ws = kernels.workspace_bytes(algo, x_shape, w_shape, stride, padding)
    record(benchmark, layer=layer, pass_=pass_, algo=algo, backend=backend,
           device="cuda" if backend == "cupy" else "cpu", flops=flops, ws=ws,
           sgemm=sgemm_gflops)


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_torch(benchmark, sgemm_gflops, layer, pass_):
    benchmark.group = layer
    x_shape, w_shape, stride, padding = LAYERS[layer]
    x, w, dy = (torch.from_numpy(a) for a in make_inputs(layer))
    x.requires_grad_(True)
    w.requires_grad_(True)
    conv = torch.nn.functional.conv2d

    def fwd():
        with torch.no_grad():
            return conv(x, w, stride=stride, padding=padding)

    def fwdbwd():
        y = conv(x, w, stride=stride, padding=padding)
        return torch.autograd.grad(y, (x, w), dy)

    run_timed(benchmark, fwd if pass_ == "fwd" else fwdbwd)
    flops = conv_flops(x_shape, w_shape, stride, padding) * (1 if pass_ == "fwd" else 3)
    record(benchmark, layer=layer, pass_=pass_, algo="torch", backend="torch", device="cpu",
           flops=flops, ws=0, sgemm=sgemm_gflops)
