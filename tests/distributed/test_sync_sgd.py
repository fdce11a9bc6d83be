"""Synchronous data-parallel SGD equals single-worker training on the same global batches."""
import numpy as np
import pytest
from dist_helpers import blobs, mlp

from minigrad.data.loader import DataLoader
from minigrad.distributed import train_distributed
from minigrad.distributed.common import ShardedBatches
from minigrad.train import fit, make_optimizer


def single_worker(train, test, epochs, batch_size, optimizer, lr):
    model = mlp()
    opt = make_optimizer(optimizer, model.parameters(), lr)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, seed=0, num_workers=0)
    fit(model, opt, loader, test, epochs, log=lambda s: None)
    return model


def test_sync_learns_and_counts_steps(task):
    train, test = task
    s = train_distributed("sync", mlp(), train, test, workers=3, epochs=2, batch_size=64,
                          lr=0.05, optimizer="sgd")
    assert s["steps"] == 2 * 16 and s["workers"] == 3
    assert s["test_accuracy"] > 0.85


def _sync_replicas(train, workers, epochs, batch_size, optimizer, lr):
    """Run sync on threads and return every rank's trained replica."""
    from minigrad.distributed.comm_threads import launch_threads
    from minigrad.distributed.common import replica
    from minigrad.distributed.sync import SyncSGD

    base = mlp()
    models = [replica(base) for _ in range(workers)]

    def fn(comm):
        m = models[comm.rank]
        opt = make_optimizer(optimizer, m.parameters(), lr)
        batches = ShardedBatches(train, batch_size, 0, comm.rank, comm.size)
        return SyncSGD(comm, m, opt, batches).train(epochs)

    launch_threads(workers, fn)
    return models


@pytest.mark.parametrize("workers,optimizer,n,batch_size", [
    (2, "sgd", 1000, 64),
    (3, "adam", 1000, 64),
    (3, "sgd", 1002, 50),
    (4, "adam", 1000, 64),
])
def test_sync_parameters_equal_single_worker_parameters(workers, optimizer, n, batch_size):
    X, y = blobs(n + 200)
    train, test = (X[:n], y[:n]), (X[n:], y[n:])
    lr = 0.05 if optimizer == "sgd" else 1e-2
    ref = single_worker(train, test, 2, batch_size, optimizer, lr)
    models = _sync_replicas(train, workers, 2, batch_size, optimizer, lr)
    for m in models:  # every replica equals the single worker, up to float rounding
        for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters(), strict=True):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5, err_msg=name)
    for m in models[1:]:  # and the replicas are bit-identical to each other
        for p, q in zip(m.parameters(), models[0].parameters(), strict=True):
            np.testing.assert_array_equal(p.data, q.data)


def test_sync_threads_is_reproducible(task):
    train, test = task
    a = _sync_replicas(train, 3, 1, 32, "sgd", 0.05)[0]
    b = _sync_replicas(train, 3, 1, 32, "sgd", 0.05)[0]
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_slices_cover_each_global_batch_in_loader_order():
    X = np.arange(103, dtype=np.float32)[:, None]
    y = np.arange(103)
    loader = DataLoader((X, y), batch_size=10, shuffle=True, seed=3, num_workers=0)
    loader.set_epoch(1)
    expect = [b[1] for b in loader]
    shards = [list(ShardedBatches((X, y), 10, 3, w, 3).epoch(1)) for w in range(3)]
    for step, batch in enumerate(expect):
        parts = [s[step][2] for s in shards if s[step][2] is not None]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
        assert all(s[step][3] == len(batch) for s in shards)


def test_sync_bytes_are_one_gradient_per_rank_and_step(task):
    train, test = task
    model = mlp()
    s = train_distributed("sync", model, train, test, workers=2, epochs=1, batch_size=100,
                          lr=0.05)
    n_params = model.num_parameters()
    assert s["steps"] == 10
    assert s["bytes_sent"] == s["dense_bytes"] == 10 * 2 * 4 * n_params
    assert s["compression_ratio"] == 1.0 and s["staleness_mean"] is None
