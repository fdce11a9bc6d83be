"""Under MPI: run with
    mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/distributed
    mpiexec -n 3 python -m pytest --with-mpi -m mpi tests/distributed
Without --with-mpi, pytest-mpi skips these tests. mpi4py is imported inside the tests only.
"""
from pathlib import Path

import numpy as np
import pytest
from dist_helpers import mlp, split

from minigrad.checkpoint import read_checkpoint
from minigrad.data.loader import DataLoader
from minigrad.distributed import train_distributed
from minigrad.distributed.async_ps import Faults
from minigrad.distributed.common import flat_params
from minigrad.train import fit, make_optimizer

pytestmark = pytest.mark.mpi


@pytest.fixture
def comm():
    from minigrad.distributed.comm_mpi import MPIComm

    return MPIComm()


@pytest.fixture
def shared_dir(comm, tmp_path):
    """Rank 0's temporary directory, the same path on every rank (one machine here)."""
    return Path(comm.comm.bcast(str(tmp_path) if comm.rank == 0 else None, root=0))


def test_allreduce_bcast_and_barrier(comm):
    r, n = comm.rank, comm.size
    a = np.arange(6, dtype=np.float32) * (r + 1)
    np.testing.assert_array_equal(comm.allreduce(a),
                                  np.arange(6, dtype=np.float32) * (n * (n + 1) / 2))
    np.testing.assert_array_equal(comm.allreduce(a, op="max"), np.arange(6) * n)
    got = comm.bcast(np.full(3, float(r)), root=n - 1)
    np.testing.assert_array_equal(got, [n - 1.0] * 3)
    comm.barrier()
    assert comm.bytes_sent == 2 * a.nbytes + (24 if r == n - 1 else 0)


def test_allgather_of_variable_sizes(comm):
    r, n = comm.rank, comm.size
    for dtype in (np.int32, np.float32):
        got = comm.allgather(np.arange(2 * r, dtype=dtype) + r)  # rank 0 sends nothing
        assert [len(g) for g in got] == [2 * k for k in range(n)]
        for k, g in enumerate(got):
            assert g.dtype == dtype
            np.testing.assert_array_equal(g, np.arange(2 * k) + k)


def test_send_recv_ring_and_recv_any(comm):
    r, n = comm.rank, comm.size
    comm.send(np.full(r + 1, r, dtype=np.float32), (r + 1) % n, tag=7)
    got = comm.recv(source=(r - 1) % n, tag=7)
    np.testing.assert_array_equal(got, np.full((r - 1) % n + 1, (r - 1) % n))
    comm.send(np.array([r], dtype=np.int32), 0, tag=8)
    if r == 0:
        sources = sorted(comm.recv_any(tag=8, dtype=np.int32, timeout=10)[0] for _ in range(n))
        assert sources == list(range(n))
    assert comm.recv_any(tag=99, timeout=0.05) is None
    comm.flush()
    comm.barrier()


def test_sync_over_mpi_equals_single_worker_and_replicas_agree(comm):
    train, test = split()
    model = mlp()
    s = train_distributed("sync", model, train, test, comm="mpi", epochs=2, batch_size=64,
                          lr=1e-2, optimizer="adam")
    ref = mlp()
    loader = DataLoader(train, batch_size=64, shuffle=True, seed=0, num_workers=0)
    fit(ref, make_optimizer("adam", ref.parameters(), 1e-2), loader, test, 2,
        log=lambda s: None)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5)
    mine = flat_params(model.parameters())
    for other in comm.allgather(mine):
        np.testing.assert_array_equal(other, mine)
    if comm.rank == 0:
        assert s["workers"] == comm.size and s["test_accuracy"] > 0.8
        assert s["bytes_sent"] == s["dense_bytes"] == s["steps"] * comm.size * mine.nbytes
    else:
        assert s is None


def test_dgc_over_mpi(comm):
    train, test = split()
    model = mlp(hidden=256)
    s = train_distributed("dgc", model, train, test, comm="mpi", epochs=2, batch_size=32,
                          lr=0.05, dgc_warmup_epochs=0.5)
    mine = flat_params(model.parameters())
    for other in comm.allgather(mine):  # replicas stay identical
        np.testing.assert_array_equal(other, mine)
    if comm.rank == 0:
        assert s["test_accuracy"] > 0.7
        assert s["compression_ratio"] > 20 and s["compression_ratio_overall"] > 5  # biases dense


def test_async_over_mpi_with_a_lost_reply_and_a_dead_worker(comm):
    train, test = split()
    n = comm.size
    faults = Faults(lose_replies={(1, 3)}, die={2: 4} if n >= 3 else {})
    s = train_distributed("async", mlp(), train, test, comm="mpi", epochs=2, batch_size=32,
                          lr=0.1, timeout=10.0, ack_timeout=0.5, faults=faults, details=True)
    if comm.rank != 0:
        assert s is None
        return
    server = s["details"][0]
    keys = [(w, q) for w, q, *_ in server["updates"]]
    assert len(keys) == len(set(keys)) == s["updates_applied"] == server["version"]
    assert s["duplicates"] == 1
    assert s["staleness_mean"] is not None
    if n >= 3:
        assert s["dead_workers"] == [2]
        assert sorted(q for w, q in keys if w == 2) == [1, 2, 3, 4]
        assert s["updates_applied"] == 4 + (n - 2) * 2 * 32
    else:
        assert s["updates_applied"] == 2 * 32
    assert all(v in ("done", "dead") for v in s["worker_status"].values())


@pytest.mark.parametrize("strategy", ["sync", "dgc"])
def test_resume_under_mpi_equals_an_uninterrupted_run(comm, shared_dir, strategy):
    train, test = split()
    kw = dict(comm="mpi", batch_size=32, lr=0.05, optimizer="sgd", dgc_warmup_epochs=1.5)
    straight = mlp(hidden=64)
    s_straight = train_distributed(strategy, straight, train, test, epochs=3, **kw)
    ckpt = shared_dir / f"{strategy}.npz"
    train_distributed(strategy, mlp(hidden=64), train, test, epochs=1, save=ckpt, **kw)
    if comm.rank == 0:
        meta = read_checkpoint(ckpt)[2]
        assert meta["epoch"] == 1 and meta["ranks"] == comm.size
        if strategy == "dgc":
            assert meta["rank_v"].shape[0] == comm.size
    resumed = mlp(hidden=64, seed=7)
    s = train_distributed(strategy, resumed, train, test, epochs=3, resume=ckpt, save=ckpt,
                          **kw)
    for p, q in zip(resumed.parameters(), straight.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    if comm.rank == 0:
        assert s["resumed_from_epoch"] == 1
        assert s["test_accuracy"] == s_straight["test_accuracy"]
        assert read_checkpoint(ckpt)[2]["epoch"] == 3


def test_async_resume_under_mpi(comm, shared_dir):
    train, test = split()
    kw = dict(comm="mpi", batch_size=32, lr=0.1, timeout=10.0, ack_timeout=2.0)
    ckpt = shared_dir / "async.npz"
    first = train_distributed("async", mlp(), train, test, epochs=1, save=ckpt, **kw)
    s = train_distributed("async", mlp(seed=3), train, test, epochs=2, resume=ckpt, **kw)
    if comm.rank == 0:
        assert read_checkpoint(ckpt)[2]["epoch"] == 1
        assert s["resumed_from_epoch"] == 1
        assert s["version"] == 2 * first["version"]
        assert s["test_accuracy"] > 0.7
