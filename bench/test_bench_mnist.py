"""One MNIST CNN training step at batch 64 (forward, backward, Adam), minigrad with each
convolution algorithm vs PyTorch, in one session; and a full iris-sized comparison lives in
test_bench_iris.py.

    pytest bench/test_bench_mnist.py

Both engines start from the same weights and see the same batch. The session's allocator
settings (bench/conftest.py) apply to both. Every row of the group does the same work (one
step of the same network on the same batch), so the relative column is a ratio of engines.
"""
import numpy as np
import pytest

import minigrad as mg
from bench.common import mnist_train_step, rate, record, step_flops
from minigrad import kernels
from minigrad.data.mnist import load_mnist
from minigrad.data.transforms import mnist_normalize
from minigrad.models import MnistCNN

torch = pytest.importorskip("torch")
ref = pytest.importorskip("bench.torch_reference")

ALGOS = [a for a in kernels.ALGORITHMS if a != "direct"]  # direct: the oracle, seconds/step


@pytest.fixture(scope="module")
def batch():
    X, y, _, _ = load_mnist()
    return mnist_normalize((X[:64], y[:64]))


@pytest.mark.benchmark(group="mnist-train-step-b64")
@pytest.mark.parametrize("engine", ["pytorch"] + [f"minigrad-{a}" for a in ALGOS])
def test_mnist_train_step(benchmark, batch, engine, sgemm_gflops):
    x, y = batch
    mg.manual_seed(0)
    step = mnist_train_step(engine.removeprefix("minigrad-"), MnistCNN(), x, y)

    if benchmark.enabled:
        for _ in range(3):
            step()  # warm-up: Numba compilation, BLAS threads
    loss = benchmark.pedantic(step, rounds=30, iterations=1)  # disabled: one call
    flops = step_flops()
    pytorch = engine == "pytorch"
    record(benchmark, engine="pytorch" if pytorch else "minigrad", task="mnist-step",
           algo="-" if pytorch else engine.split("-", 1)[1],
           backend="torch" if pytorch else "numba", device="cpu", batch_size=64,
           flops=flops, gflops=rate(benchmark, flops, 1e-9),
           sgemm_gflops=round(sgemm_gflops, 1))
    assert np.isfinite(loss)
