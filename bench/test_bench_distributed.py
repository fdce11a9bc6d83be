"""Seconds and bytes per step of each distributed strategy on threads (minigrad.distributed).

    pytest bench/test_bench_distributed.py

Model: an MLP 784 -> 256 -> 10 (203,530 parameters, 814 KB of float32 gradient) on
synthetic MNIST-shaped data; 4 workers, 24 global batches of 64 per round. The baseline in
the same group is one worker (sync x1: plain training, nothing sent), so each strategy's
time reads as a ratio to it. extra_info carries seconds_per_step, bytes_per_step (summed
over ranks), dense_bytes_per_step and the compression ratio. DGC runs without warm-up
(every step at 99.9% sparsity). On a shared 2-core machine these timings are noisy; the
byte counts are exact.
"""
import numpy as np
import pytest

from minigrad import nn
from minigrad.distributed import train_distributed
from minigrad.random import manual_seed

WORKERS, BATCH, BATCHES = 4, 64, 24


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(BATCH * BATCHES + 256, 784)).astype(np.float32)
    y = (X[:, :10] @ rng.normal(size=(10, 10))).argmax(axis=1).astype(np.int64)
    n = BATCH * BATCHES
    return (X[:n], y[:n]), (X[n:], y[n:])


def model():
    manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


CASES = {
    "single": ("sync", 1, {}),
    "sync": ("sync", WORKERS, {}),
    "hogwild": ("hogwild", WORKERS, {}),
    "async": ("async", WORKERS, {"staleness_aware": True}),
    "dgc": ("dgc", WORKERS, {"dgc_warmup_epochs": 0}),
}


@pytest.mark.benchmark(group="distributed-step-threads")
@pytest.mark.parametrize("case", list(CASES))
def test_distributed_step(benchmark, data, case):
    strategy, workers, extra = CASES[case]
    train, test = data

    def run():
        return train_distributed(strategy, model(), train, test, workers=workers, epochs=1,
                                 batch_size=BATCH, lr=0.05, optimizer="sgd", **extra)

    s = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    steps = s["steps"]
    benchmark.extra_info.update(
        strategy=strategy, workers=s["workers"], steps=steps,
        seconds_per_step=s["train_seconds"] / steps,
        bytes_per_step=s["bytes_sent"] / steps,
        dense_bytes_per_step=(s["dense_bytes"] / steps) if s["dense_bytes"] else None,
        compression_ratio=s["compression_ratio"], staleness_mean=s["staleness_mean"])
    assert s["test_accuracy"] > 0.1
