"""The thread-pool DataLoader's throughput against num_workers: MNIST batches of 64 with the
normalising transform, one full pass over 12,800 images per round.

    pytest bench/test_bench_loader.py

Every row of the group moves the same 200 batches, so the relative column is a ratio of
worker counts. extra_info batches_per_second is batches / median round time.
"""
import pytest

from bench.common import rate, record
from minigrad.data.loader import DataLoader
from minigrad.data.mnist import load_mnist
from minigrad.data.transforms import mnist_normalize

N_IMAGES, BATCH = 12_800, 64


@pytest.fixture(scope="module")
def mnist_subset():
    X, y, _, _ = load_mnist()
    return X[:N_IMAGES], y[:N_IMAGES]


@pytest.mark.benchmark(group="loader")
@pytest.mark.parametrize("num_workers", [0, 1, 2, 4, 8])
def test_loader_throughput(benchmark, mnist_subset, num_workers):
    with DataLoader(mnist_subset, batch_size=BATCH, seed=0, num_workers=num_workers,
                    transform=mnist_normalize) as loader:
        def epoch():
            n = 0
            for xb, _ in loader:
                n += len(xb)
            return n

        n = benchmark.pedantic(epoch, rounds=5, warmup_rounds=1)
        batches = len(loader)
    assert n == N_IMAGES
    record(benchmark, engine="minigrad", num_workers=num_workers, batches=batches,
           batches_per_second=rate(benchmark, batches), device="cpu")
