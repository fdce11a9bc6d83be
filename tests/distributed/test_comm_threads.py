"""The thread communicator: collectives, point to point, byte counts, failure."""
import threading

import numpy as np
import pytest

from minigrad.distributed.comm import CommTimeout, pack, unpack
from minigrad.distributed.comm_threads import launch_threads


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_allreduce_sum_max_min_and_same_bits_everywhere(n):
    def fn(comm):
        a = np.arange(5, dtype=np.float32) * (comm.rank + 1) + 0.1
        return (comm.allreduce(a), comm.allreduce(a, op="max"), comm.allreduce(a, op="min"),
                comm.bytes_sent)

    results = launch_threads(n, fn)
    base = np.arange(5, dtype=np.float32)
    expect = np.zeros(5, np.float32)
    for r in range(n):  # rank order, as the implementation promises
        expect += base * (r + 1) + np.float32(0.1)
    for s, mx, mn, sent in results:
        np.testing.assert_array_equal(s, expect)
        np.testing.assert_array_equal(s, results[0][0])
        np.testing.assert_array_equal(mx, base * n + np.float32(0.1))
        np.testing.assert_array_equal(mn, base + np.float32(0.1))
        assert sent == 3 * 5 * 4


def test_allreduce_is_deterministic_across_runs():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 1000)).astype(np.float32) * 1e3

    def fn(comm):
        return comm.allreduce(data[comm.rank])

    a, b = launch_threads(4, fn)[0], launch_threads(4, fn)[0]
    np.testing.assert_array_equal(a, b)


def test_allgather_variable_sizes_and_dtypes():
    def fn(comm):
        idx = np.arange(comm.rank * 2, dtype=np.int32)  # rank r sends 2r elements
        return comm.allgather(idx), comm.bytes_sent

    for rank, (gathered, sent) in enumerate(launch_threads(3, fn)):
        assert sent == 2 * rank * 4  # this rank's own contribution
        assert [len(g) for g in gathered] == [0, 2, 4]
        assert all(g.dtype == np.int32 for g in gathered)
        np.testing.assert_array_equal(gathered[2], [0, 1, 2, 3])


def test_bcast_and_barrier():
    def fn(comm):
        got = comm.bcast(np.full(3, comm.rank + 7.0), root=1)
        comm.barrier()
        return got

    for got in launch_threads(3, fn):
        np.testing.assert_array_equal(got, [8.0, 8.0, 8.0])


def test_send_recv_by_source_and_tag_and_recv_any():
    def fn(comm):
        if comm.rank == 0:
            a = comm.recv(source=2, tag=5)   # arrives after rank 1's, asked for first
            b = comm.recv(source=1, tag=5)
            src, tag, c = comm.recv_any(tag=9)
            return a, b, (src, tag, c)
        comm.send(np.full(2, comm.rank, np.float32), 0, tag=5)
        if comm.rank == 1:
            comm.send(np.array([42.0], np.float32), 0, tag=9)
        return None

    a, b, (src, tag, c) = launch_threads(3, fn)[0]
    np.testing.assert_array_equal(a, [2, 2])
    np.testing.assert_array_equal(b, [1, 1])
    assert (src, tag) == (1, 9) and c[0] == 42.0


def test_send_copies_the_array():
    def fn(comm):
        if comm.rank == 1:
            a = np.zeros(3, np.float32)
            comm.send(a, 0)
            a += 5  # must not change the message
            comm.barrier()
            return None
        comm.barrier()
        return comm.recv(1)

    np.testing.assert_array_equal(launch_threads(2, fn)[0], [0, 0, 0])


def test_recv_timeout():
    def fn(comm):
        assert comm.recv_any(timeout=0.05) is None
        with pytest.raises(CommTimeout):
            comm.recv(source=0, tag=3, timeout=0.05)
        return True

    assert launch_threads(1, fn) == [True]


def test_a_failing_rank_breaks_the_barrier_and_is_reported():
    def fn(comm):
        if comm.rank == 1:
            raise ValueError("boom")
        comm.allreduce(np.ones(2))  # would wait forever without the abort
        return True

    with pytest.raises(RuntimeError, match="rank 1 of 3 failed: ValueError: boom"):
        launch_threads(3, fn)


def test_without_abort_a_failed_rank_returns_its_exception():
    def fn(comm):
        if comm.rank == 1:
            raise KeyError("x")
        return comm.rank

    res = launch_threads(3, fn, abort_on_error=False)
    assert res[0] == 0 and res[2] == 2 and isinstance(res[1], KeyError)
    assert not any(t.name.startswith("rank-") for t in threading.enumerate())


def test_pack_unpack_keeps_int32_bits_exactly():
    header = [0, -1, 2**31 - 1, -(2**31), 0x7FC00001]  # includes NaN bit patterns
    msg = pack(header, np.arange(3, dtype=np.float32))
    h, payload = unpack(msg.copy(), len(header))
    assert h.tolist() == header
    np.testing.assert_array_equal(payload, [0, 1, 2])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_collectives_own_what_they_return_while_callers_reuse_buffers(n):
    """Each rank refills ONE buffer every step, right after the collective returns, and
    sleeps a little at random so ranks leave at different times. A collective that read
    the other ranks' buffers after its barrier (instead of its own copies) would add a
    refilled buffer into a slower rank's sum."""
    steps = 300

    def fn(comm):
        rng = np.random.default_rng(comm.rank)
        buf = np.empty(64, np.float32)
        bad = 0
        for step in range(steps):
            buf[:] = step * 10 + comm.rank
            total = comm.allreduce(buf)
            gathered = comm.allgather(buf)
            root = comm.bcast(buf, root=step % comm.size)
            buf[:] = -1e6  # reuse at once: must not reach anybody's result
            if rng.random() < 0.3:
                threading.Event().wait(rng.random() * 1e-3)
            expect = sum(step * 10 + r for r in range(comm.size))
            bad += int(not np.all(total == expect))
            bad += int(not all(np.all(g == step * 10 + r) for r, g in enumerate(gathered)))
            bad += int(not np.all(root == step * 10 + step % comm.size))
        return bad

    assert launch_threads(n, fn) == [0] * n


def test_returned_arrays_are_private_to_each_rank():
    def fn(comm):
        got = comm.allgather(np.zeros(3, np.float32))
        b = comm.bcast(np.zeros(2), root=0)
        comm.barrier()
        got[0] += comm.rank + 1  # writes to my copy only
        b += comm.rank + 1
        comm.barrier()
        return got[0].tolist(), b.tolist()

    for rank, (g, b) in enumerate(launch_threads(3, fn)):
        assert g == [rank + 1.0] * 3 and b == [rank + 1.0] * 2


@pytest.mark.parametrize("n", [1, 2, 4])
def test_bytes_moved_follow_the_ring_algorithms(n):
    def fn(comm):
        comm.allreduce(np.zeros(100, np.float32))           # 400 bytes
        after_allreduce = comm.bytes_moved
        comm.allgather(np.zeros(comm.rank + 1, np.int32))   # rank r: 4 (r+1) bytes
        after_allgather = comm.bytes_moved
        with comm.uncounted():
            comm.allreduce(np.zeros(1000, np.float32))
            comm.bcast(np.zeros(10), root=0)
        return after_allreduce, after_allgather, comm.bytes_moved, comm.bytes_sent

    for rank, (ar, ag, total, sent) in enumerate(launch_threads(n, fn)):
        assert ar == 2 * (n - 1) / n * 400
        others = sum(4 * (r + 1) for r in range(n) if r != rank)
        assert ag == ar + others and total == ag
        assert sent == 400 + 4 * (rank + 1)


def test_a_failed_rank_wakes_a_peer_waiting_in_recv():
    """A rank blocked in recv (a halo exchange, a reduce-scatter) must not wait forever for
    a peer that died: the group's abort wakes it with an error, and the run reports the
    rank that failed first."""
    import threading as _threading


    def body(c):
        if c.rank == 1:
            raise RuntimeError("boom")
        c.recv_any(source=1)          # rank 1's message never comes
        return "unreachable"

    done = []
    t = _threading.Thread(target=lambda: done.append(_run_expecting_failure(body)),
                          daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "rank 0 still waits in recv after rank 1 failed"
    assert "rank 1" in done[0] and "boom" in done[0]


def _run_expecting_failure(body):
    from minigrad.distributed.comm_threads import launch_threads

    try:
        launch_threads(2, body)
    except Exception as e:  # the launcher names the failed rank
        return f"{e} {e.__cause__!r}"
    return "no error"
