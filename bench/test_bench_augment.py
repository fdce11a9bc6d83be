"""When do loader threads pay off? Throughput against the number of worker threads, with
the plain normalising transform and with MNIST augmentation, and the share of a training
epoch the loop stalls waiting for batches.

    pytest bench/test_bench_augment.py --benchmark-json=augment.json

Normalising a batch of 64 costs less than handing it to a thread (docs/figures/loader.png:
61k batches/s in the calling thread, 17-26k with 1-8 threads); shifting, rotating and
elastically distorting it (minigrad.data.transforms.mnist_augment, Numba kernels that
release the GIL) costs milliseconds, which threads can take off the training thread.

Groups (every row of a group does the same work, so the relative column compares thread
counts):
  loader-normalize, loader-augment      one pass over N_IMAGES images, batches of 64;
      extra_info: engine, transform, num_workers, batches, batches_per_second, cores
  loader-stall-normalize, loader-stall-augment   one epoch of MNIST CNN training (Adam,
      batch 64) on STALL_IMAGES images fed by the loader; extra_info adds stall_share (the
      loop's time blocked on the loader / the epoch's training time, fit()'s
      loader_wait_share) and images_per_second

Loader threads run 1 Numba thread each, beside the training thread's full budget
(minigrad.threads). Under `--benchmark-disable` every case runs once, on fewer images.
"""
import pytest

from bench.common import rate, record
from minigrad import threads
from minigrad.data.loader import DataLoader
from minigrad.data.mnist import load_mnist
from minigrad.data.transforms import mnist_augment, mnist_normalize

N_IMAGES, STALL_IMAGES, BATCH = 6_400, 3_200, 64
SMOKE_IMAGES = 640  # --benchmark-disable
WORKERS = (0, 1, 2, 4)
TRANSFORMS = {"normalize": mnist_normalize, "augment": mnist_augment()}


@pytest.fixture(scope="module")
def mnist():
    X, y, X_test, y_test = load_mnist()
    return (X[:N_IMAGES], y[:N_IMAGES]), (X_test[:BATCH], y_test[:BATCH])


@pytest.mark.parametrize("num_workers", WORKERS)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_loader_throughput(benchmark, mnist, name, num_workers):
    benchmark.group = f"loader-{name}"
    X, y = mnist[0]
    if benchmark.disabled:
        X, y = X[:SMOKE_IMAGES], y[:SMOKE_IMAGES]
    with DataLoader((X, y), batch_size=BATCH, seed=0, num_workers=num_workers,
                    transform=TRANSFORMS[name]) as loader:
        def epoch():
            n = 0
            for xb, _ in loader:
                n += len(xb)
            return n

        n = benchmark.pedantic(epoch, rounds=5, warmup_rounds=1)
        batches = len(loader)
    assert n == len(X)
    record(benchmark, engine="minigrad", transform=name, num_workers=num_workers,
           batches=batches, batches_per_second=rate(benchmark, batches), device="cpu",
           cores=threads.host_cores())


@pytest.mark.parametrize("num_workers", WORKERS)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_training_stall_share(benchmark, mnist, name, num_workers):
    from minigrad.models import MnistCNN
    from minigrad.optim import Adam
    from minigrad.random import manual_seed
    from minigrad.train import fit

    benchmark.group = f"loader-stall-{name}"
    (X, y), test = mnist
    n = SMOKE_IMAGES if benchmark.disabled else STALL_IMAGES
    manual_seed(0)
    model = MnistCNN()
    opt = Adam(model.parameters(), lr=1e-3)
    with DataLoader((X[:n], y[:n]), batch_size=BATCH, seed=0, num_workers=num_workers,
                    transform=TRANSFORMS[name]) as loader:
        if not benchmark.disabled:  # compile and warm up outside the timed epochs
            fit(model, opt, loader, test, 1, eval_transform=mnist_normalize, log=lambda s: None)
        summaries = []

        def epoch():
            summaries.append(fit(model, opt, loader, test, 1, eval_transform=mnist_normalize,
                                 log=lambda s: None))

        benchmark.pedantic(epoch, rounds=1 if benchmark.disabled else 3, iterations=1)
    stall = sorted(s["loader_wait_share"] for s in summaries)[len(summaries) // 2]
    ips = sorted(s["images_per_second"] for s in summaries)[len(summaries) // 2]
    record(benchmark, engine="minigrad", transform=name, num_workers=num_workers,
           stall_share=stall, images_per_second=ips, n_train=n, batch_size=BATCH,
           device="cpu", cores=threads.host_cores())
    assert 0.0 <= stall <= 1.0
